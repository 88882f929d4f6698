//! The global `config-autoscaler` ConfigMap: Knative's keys and defaults, under which annotations are merged.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Diagnosed, Invalid};
use crate::fields::{DurationRule, Fields, MAX_INT32, NumberRule, boolean, one_of, spelling, whole_number};
use crate::keys::{GLOBAL_KEYS, global as key};
use crate::spec::ScalerClass;
use crate::targets::{
    InstanceShape, TargetKind, format_instances, format_kinds, parse_instances, parse_kinds,
};
use crate::value::{format_duration, format_number};

/// The cluster-wide autoscaling defaults. `GlobalConfig::default()` is Knative's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    /// Autoscaler class for services that do not name one.
    pub pod_autoscaler_class: ScalerClass,
    /// Whether services may scale to zero.
    pub enable_scale_to_zero: bool,
    /// Default target utilisation for the concurrency metric, in percent.
    pub container_concurrency_target_percentage: f64,
    /// Per-pod concurrency target when the container concurrency is unlimited.
    pub container_concurrency_target_default: f64,
    /// Per-pod target for the rps metric.
    pub requests_per_second_target_default: f64,
    /// Default target burst capacity (`-1` = activator always in the path).
    pub target_burst_capacity: f64,
    /// Default stable window.
    pub stable_window: Duration,
    /// Default panic window, as a percentage of the stable window.
    pub panic_window_percentage: f64,
    /// Default panic threshold, in percent.
    pub panic_threshold_percentage: f64,
    /// Largest growth factor per decision.
    pub max_scale_up_rate: f64,
    /// Largest shrink factor per decision.
    pub max_scale_down_rate: f64,
    /// How long the activator is in the path before replicas go to zero.
    pub scale_to_zero_grace_period: Duration,
    /// Default time the last pod is kept after going idle.
    pub scale_to_zero_pod_retention_period: Duration,
    /// Default scale-down delay.
    pub scale_down_delay: Duration,
    /// Requests one activator is sized for, per service.
    pub activator_capacity: f64,
    /// Default replicas on creation.
    pub initial_scale: u32,
    /// Whether `initial-scale` may be 0.
    pub allow_zero_initial_scale: bool,
    /// Default min-scale.
    pub min_scale: u32,
    /// Default max-scale (`0` = unbounded).
    pub max_scale: u32,
    /// Highest max-scale a service may ask for (`0` = no limit).
    pub max_scale_limit: u32,
    /// The kinds of object ebb autoscales through their `scale` subresource.
    pub scale_target_kinds: Vec<TargetKind>,
    /// How the kinds whose replica is several pods group them in instances, beyond the built-in ones.
    pub scale_target_instances: Vec<(TargetKind, InstanceShape)>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            pod_autoscaler_class: ScalerClass::Kpa,
            enable_scale_to_zero: true,
            container_concurrency_target_percentage: 70.0,
            container_concurrency_target_default: 100.0,
            requests_per_second_target_default: 200.0,
            target_burst_capacity: 211.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            scale_down_delay: Duration::ZERO,
            activator_capacity: 100.0,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
            scale_target_kinds: vec![TargetKind::deployments()],
            scale_target_instances: Vec::new(),
        }
    }
}

/// Spellings of the autoscaler class.
pub(crate) const CLASSES: &[(&str, ScalerClass)] =
    &[("kpa.autoscaling.knative.dev", ScalerClass::Kpa), ("hpa.autoscaling.knative.dev", ScalerClass::Hpa)];

/// Range of the stable window, annotation and ConfigMap alike.
pub(crate) const WINDOW_RULE: DurationRule =
    DurationRule::knative_whole(Duration::from_secs(6), Some(Duration::from_secs(3600)));
/// Range of the panic window percentage.
pub(crate) const PANIC_WINDOW_PERCENTAGE_RULE: NumberRule = NumberRule::between(1.0, 100.0);
/// Range of the panic threshold percentage.
pub(crate) const PANIC_THRESHOLD_RULE: NumberRule = NumberRule::between(110.0, 1000.0);

impl GlobalConfig {
    /// Reads a `config-autoscaler` ConfigMap's `data`. Keys starting with `_` (Knative's `_example`) are
    /// ignored; any other unknown key is an error, so that a typo is never silently dropped.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Diagnosed<Self>, Invalid> {
        let mut f = Fields::new(data, GLOBAL_KEYS, |key| !key.starts_with('_'));
        let d = Self::default();
        let whole = |range| move |text: &str| whole_number(text, range);
        let config = Self {
            pod_autoscaler_class: f
                .get(key::POD_AUTOSCALER_CLASS, |t| one_of(t, CLASSES))
                .unwrap_or(d.pod_autoscaler_class),
            enable_scale_to_zero: f.get(key::ENABLE_SCALE_TO_ZERO, boolean).unwrap_or(d.enable_scale_to_zero),
            container_concurrency_target_percentage: f
                .get(key::CONTAINER_CONCURRENCY_TARGET_PERCENTAGE, |t| {
                    NumberRule::above_up_to(0.0, 100.0).check(t)
                })
                .unwrap_or(d.container_concurrency_target_percentage),
            container_concurrency_target_default: f
                .get(key::CONTAINER_CONCURRENCY_TARGET_DEFAULT, |t| NumberRule::at_least(0.01).check(t))
                .unwrap_or(d.container_concurrency_target_default),
            requests_per_second_target_default: f
                .get(key::REQUESTS_PER_SECOND_TARGET_DEFAULT, |t| NumberRule::at_least(0.01).check(t))
                .unwrap_or(d.requests_per_second_target_default),
            target_burst_capacity: f
                .get(key::TARGET_BURST_CAPACITY, |t| NumberRule::burst_capacity().check(t))
                .unwrap_or(d.target_burst_capacity),
            stable_window: f.get(key::STABLE_WINDOW, |t| WINDOW_RULE.check(t)).unwrap_or(d.stable_window),
            panic_window_percentage: f
                .get(key::PANIC_WINDOW_PERCENTAGE, |t| PANIC_WINDOW_PERCENTAGE_RULE.check(t))
                .unwrap_or(d.panic_window_percentage),
            panic_threshold_percentage: f
                .get(key::PANIC_THRESHOLD_PERCENTAGE, |t| PANIC_THRESHOLD_RULE.check(t))
                .unwrap_or(d.panic_threshold_percentage),
            max_scale_up_rate: f
                .get(key::MAX_SCALE_UP_RATE, |t| NumberRule::above(1.0).check(t))
                .unwrap_or(d.max_scale_up_rate),
            max_scale_down_rate: f
                .get(key::MAX_SCALE_DOWN_RATE, |t| NumberRule::above(1.0).check(t))
                .unwrap_or(d.max_scale_down_rate),
            scale_to_zero_grace_period: f
                .get(key::SCALE_TO_ZERO_GRACE_PERIOD, |t| {
                    DurationRule { min_exclusive: true, ..DurationRule::knative(Duration::ZERO, None) }
                        .check(t)
                })
                .unwrap_or(d.scale_to_zero_grace_period),
            scale_to_zero_pod_retention_period: f
                .get(key::SCALE_TO_ZERO_POD_RETENTION_PERIOD, |t| {
                    DurationRule::knative(Duration::ZERO, None).check(t)
                })
                .unwrap_or(d.scale_to_zero_pod_retention_period),
            scale_down_delay: f
                .get(key::SCALE_DOWN_DELAY, |t| DurationRule::knative_whole(Duration::ZERO, None).check(t))
                .unwrap_or(d.scale_down_delay),
            activator_capacity: f
                .get(key::ACTIVATOR_CAPACITY, |t| NumberRule::at_least(1.0).check(t))
                .unwrap_or(d.activator_capacity),
            initial_scale: f.get(key::INITIAL_SCALE, whole(0..=MAX_INT32)).unwrap_or(d.initial_scale),
            allow_zero_initial_scale: f
                .get(key::ALLOW_ZERO_INITIAL_SCALE, boolean)
                .unwrap_or(d.allow_zero_initial_scale),
            min_scale: f.get(key::MIN_SCALE, whole(0..=MAX_INT32)).unwrap_or(d.min_scale),
            max_scale: f.get(key::MAX_SCALE, whole(0..=MAX_INT32)).unwrap_or(d.max_scale),
            max_scale_limit: f.get(key::MAX_SCALE_LIMIT, whole(0..=MAX_INT32)).unwrap_or(d.max_scale_limit),
            scale_target_kinds: f.get(key::SCALE_TARGET_KINDS, parse_kinds).unwrap_or(d.scale_target_kinds),
            scale_target_instances: f
                .get(key::SCALE_TARGET_INSTANCES, parse_instances)
                .unwrap_or(d.scale_target_instances),
        };
        config.check_relations(&mut f);
        f.finish(config)
    }

    fn check_relations(&self, f: &mut Fields<'_>) {
        if self.initial_scale == 0 && !self.allow_zero_initial_scale && f.has(key::INITIAL_SCALE) {
            f.conflict(key::INITIAL_SCALE, "may be 0 only when allow-zero-initial-scale is true".into());
        }
        if self.max_scale != 0 && self.min_scale > self.max_scale {
            f.conflict(key::MIN_SCALE, format!("must not exceed max-scale ({})", self.max_scale));
        }
        for (kind, _) in &self.scale_target_instances {
            if !self.scale_target_kinds.contains(kind) {
                let listed = format_kinds(&self.scale_target_kinds);
                f.conflict(
                    key::SCALE_TARGET_INSTANCES,
                    format!("{kind} is not in scale-target-kinds ({listed}): add it there too"),
                );
            }
        }
        if self.max_scale_limit != 0 && self.max_scale > self.max_scale_limit {
            f.conflict(key::MAX_SCALE, format!("must not exceed max-scale-limit ({})", self.max_scale_limit));
        }
    }

    /// How `kind`'s pods make instances: `scale-target-instances`, else what ebb knows of the kind; `None`
    /// when a replica is one pod.
    pub fn instance_shape(&self, kind: &TargetKind) -> Option<InstanceShape> {
        match self.scale_target_instances.iter().find(|(k, _)| k == kind) {
            Some((_, shape)) => Some(shape.clone()),
            None => kind.built_in_instances(),
        }
    }

    /// Every key with its effective value, in the ConfigMap's spelling (for `ebb check --verbose`).
    pub fn effective_values(&self) -> Vec<(&'static str, String)> {
        vec![
            (key::POD_AUTOSCALER_CLASS, spelling(CLASSES, self.pod_autoscaler_class).to_owned()),
            (key::ENABLE_SCALE_TO_ZERO, self.enable_scale_to_zero.to_string()),
            (
                key::CONTAINER_CONCURRENCY_TARGET_PERCENTAGE,
                format_number(self.container_concurrency_target_percentage),
            ),
            (
                key::CONTAINER_CONCURRENCY_TARGET_DEFAULT,
                format_number(self.container_concurrency_target_default),
            ),
            (key::REQUESTS_PER_SECOND_TARGET_DEFAULT, format_number(self.requests_per_second_target_default)),
            (key::TARGET_BURST_CAPACITY, format_number(self.target_burst_capacity)),
            (key::STABLE_WINDOW, format_duration(self.stable_window)),
            (key::PANIC_WINDOW_PERCENTAGE, format_number(self.panic_window_percentage)),
            (key::PANIC_THRESHOLD_PERCENTAGE, format_number(self.panic_threshold_percentage)),
            (key::MAX_SCALE_UP_RATE, format_number(self.max_scale_up_rate)),
            (key::MAX_SCALE_DOWN_RATE, format_number(self.max_scale_down_rate)),
            (key::SCALE_TO_ZERO_GRACE_PERIOD, format_duration(self.scale_to_zero_grace_period)),
            (
                key::SCALE_TO_ZERO_POD_RETENTION_PERIOD,
                format_duration(self.scale_to_zero_pod_retention_period),
            ),
            (key::SCALE_DOWN_DELAY, format_duration(self.scale_down_delay)),
            (key::ACTIVATOR_CAPACITY, format_number(self.activator_capacity)),
            (key::INITIAL_SCALE, self.initial_scale.to_string()),
            (key::ALLOW_ZERO_INITIAL_SCALE, self.allow_zero_initial_scale.to_string()),
            (key::MIN_SCALE, self.min_scale.to_string()),
            (key::MAX_SCALE, self.max_scale.to_string()),
            (key::MAX_SCALE_LIMIT, self.max_scale_limit.to_string()),
            (key::SCALE_TARGET_KINDS, format_kinds(&self.scale_target_kinds)),
            (key::SCALE_TARGET_INSTANCES, format_instances(&self.scale_target_instances)),
        ]
    }
}
