//! Resolving one service's configuration: a Deployment's annotations merged over the global ConfigMap.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Diagnosed, Invalid};
use crate::fields::{DurationRule, Fields, MAX_INT32, NumberRule, boolean, one_of, spelling, whole_number};
use crate::global::{CLASSES, GlobalConfig, PANIC_THRESHOLD_RULE, PANIC_WINDOW_PERCENTAGE_RULE, WINDOW_RULE};
use crate::groups::ANNOTATION_GROUP_PODS;
use crate::keys::{ANNOTATION_KEYS, annotation as key, global as global_key};
use crate::names::{EBB_PREFIX, KNATIVE_PREFIX};
use crate::spec::{Aggregation, DataPlaneSpec, Metric, Protocol, ScalerClass, ScalingSpec, ServiceConfig};
use crate::targets::ANNOTATION_INSTANCE_PODS;
use crate::value::{format_duration, format_number, is_dns_name};

/// `ebb.dev/timeout` when unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// `ebb.dev/activation-timeout` when unset: GPU model loads take minutes.
pub const DEFAULT_ACTIVATION_TIMEOUT: Duration = Duration::from_secs(600);
/// `ebb.dev/request-body-timeout` when unset (nginx's `client_body_timeout`), or the timeout when shorter.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// `ebb.dev/max-queued` when unset.
pub const DEFAULT_MAX_QUEUED: u32 = 1000;
/// `ebb.dev/queue-depth` when unset is this many times the container concurrency.
pub const QUEUE_DEPTH_PER_SLOT: u32 = 10;
/// Largest `ebb.dev/container-concurrency` (Knative's `container-concurrency-max-limit`).
pub const MAX_CONTAINER_CONCURRENCY: u32 = 1000;
/// Target utilisation Knative fixes for the rps metric when the annotation is absent.
pub const RPS_TARGET_UTILIZATION: f64 = 0.7;

const METRICS: &[(&str, Metric)] = &[("concurrency", Metric::Concurrency), ("rps", Metric::Rps)];
const AGGREGATIONS: &[(&str, Aggregation)] = &[
    ("linear", Aggregation::Linear),
    ("weighted-exponential", Aggregation::WeightedExponential),
    ("weightedExponential", Aggregation::WeightedExponential),
];
const PROTOCOLS: &[(&str, Protocol)] =
    &[(Protocol::Http1.as_str(), Protocol::Http1), (Protocol::H2c.as_str(), Protocol::H2c)];
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Resolves a service's configuration from its Deployment's `metadata.annotations` over `global`.
///
/// Keys under `autoscaling.knative.dev/` and `ebb.dev/` must be known (a typo is an error); other annotations
/// are ignored. On failure the error lists every invalid key, so a user can fix them all at once.
pub fn resolve_service(
    annotations: &BTreeMap<String, String>,
    global: &GlobalConfig,
) -> Result<Diagnosed<ServiceConfig>, Invalid> {
    // A role group's key is read by the group (crate::groups), an instance's size by the autoscaler
    // (crate::targets), not by the service.
    let mut f = Fields::new(annotations, ANNOTATION_KEYS, |k| {
        (k.starts_with(KNATIVE_PREFIX) || k.starts_with(EBB_PREFIX))
            && k != ANNOTATION_GROUP_PODS
            && k != ANNOTATION_INSTANCE_PODS
    });
    let scaling = resolve_scaling(&mut f, global);
    let cc = scaling.1;
    let data_plane = resolve_data_plane(&mut f, cc);
    let paused = f.get(key::PAUSED, boolean).unwrap_or(false);
    f.finish(ServiceConfig { scaling: scaling.0, data_plane, paused })
}

/// Reads the autoscaling keys; also returns the container concurrency, which the target depends on.
fn resolve_scaling(f: &mut Fields<'_>, g: &GlobalConfig) -> (ScalingSpec, u32) {
    let whole = |range| move |text: &str| whole_number(text, range);
    let class = f.get(key::CLASS, |t| one_of(t, CLASSES)).unwrap_or(g.pod_autoscaler_class);
    let metric = f.get(key::METRIC, |t| one_of(t, METRICS)).unwrap_or(Metric::Concurrency);
    let cc = f.get(key::CONTAINER_CONCURRENCY, whole(0..=MAX_CONTAINER_CONCURRENCY)).unwrap_or(0);
    let target = f.get(key::TARGET, |t| NumberRule::at_least(crate::spec::MIN_TARGET).check(t));
    let utilization = f.get(key::TARGET_UTILIZATION_PERCENTAGE, |t| NumberRule::between(1.0, 100.0).check(t));

    // Knative's ResolveMetricTarget: the metric's default, else CC, replaced by the annotation; capped at CC.
    let total_target = match metric {
        Metric::Concurrency => {
            let base = if cc > 0 { f64::from(cc) } else { g.container_concurrency_target_default };
            let total = target.unwrap_or(base);
            if cc > 0 { total.min(f64::from(cc)) } else { total }
        }
        Metric::Rps => target.unwrap_or(g.requests_per_second_target_default),
    };
    let target_utilization = match (utilization, metric) {
        (Some(percent), _) => percent / 100.0,
        (None, Metric::Concurrency) => g.container_concurrency_target_percentage / 100.0,
        (None, Metric::Rps) => RPS_TARGET_UTILIZATION,
    };

    let max_scale_limit = g.max_scale_limit;
    let min_scale = f.get(key::MIN_SCALE, whole(0..=MAX_INT32)).unwrap_or(g.min_scale);
    let max_scale = f
        .get(key::MAX_SCALE, |t| match max_scale_limit {
            0 => whole_number(t, 0..=MAX_INT32),
            limit => whole_number(t, 1..=limit).map_err(|p| format!("{p} (max-scale-limit is {limit})")),
        })
        // With a limit, "unbounded" means the limit.
        .unwrap_or(if g.max_scale == 0 { max_scale_limit } else { g.max_scale });
    let initial_scale = f
        .get(key::INITIAL_SCALE, |t| {
            let min = u32::from(!g.allow_zero_initial_scale);
            whole_number(t, min..=MAX_INT32).map_err(|p| match min {
                1 => format!("{p} (0 needs allow-zero-initial-scale: true in config-autoscaler)"),
                _ => p,
            })
        })
        .unwrap_or(g.initial_scale);
    let activation_scale = f.get(key::ACTIVATION_SCALE, whole(2..=MAX_INT32)).unwrap_or(1);
    if max_scale != 0 && min_scale > max_scale && f.has(key::MIN_SCALE) {
        f.conflict(key::MIN_SCALE, format!("must not exceed max-scale ({max_scale})"));
    } else if max_scale != 0 && min_scale > max_scale {
        f.conflict(key::MAX_SCALE, format!("must be at least min-scale ({min_scale})"));
    }
    if max_scale != 0 && activation_scale > max_scale {
        f.conflict(key::ACTIVATION_SCALE, format!("must not exceed max-scale ({max_scale})"));
    }
    // Knative keeps activation-scale within min..max; below min-scale it would never apply. The unset default
    // (1, no lift) is always fine.
    if f.has(key::ACTIVATION_SCALE) && activation_scale < min_scale {
        f.conflict(key::ACTIVATION_SCALE, format!("must be at least min-scale ({min_scale})"));
    }

    let scaling = ScalingSpec {
        class,
        metric,
        total_target,
        target_utilization,
        target_burst_capacity: f
            .get(key::TARGET_BURST_CAPACITY, |t| NumberRule::burst_capacity().check(t))
            .unwrap_or(g.target_burst_capacity),
        stable_window: f.get(key::WINDOW, |t| WINDOW_RULE.check(t)).unwrap_or(g.stable_window),
        panic_window_percentage: f
            .get(key::PANIC_WINDOW_PERCENTAGE, |t| PANIC_WINDOW_PERCENTAGE_RULE.check(t))
            .unwrap_or(g.panic_window_percentage),
        panic_threshold: f
            .get(key::PANIC_THRESHOLD_PERCENTAGE, |t| PANIC_THRESHOLD_RULE.check(t))
            .unwrap_or(g.panic_threshold_percentage)
            / 100.0,
        max_scale_up_rate: g.max_scale_up_rate,
        max_scale_down_rate: g.max_scale_down_rate,
        min_scale,
        max_scale,
        initial_scale,
        activation_scale,
        scale_down_delay: f
            .get(key::SCALE_DOWN_DELAY, |t| DurationRule::knative_whole(Duration::ZERO, Some(HOUR)).check(t))
            .unwrap_or(g.scale_down_delay),
        enable_scale_to_zero: g.enable_scale_to_zero,
        scale_to_zero_grace_period: g.scale_to_zero_grace_period,
        scale_to_zero_pod_retention_period: f
            .get(key::SCALE_TO_ZERO_POD_RETENTION_PERIOD, |t| {
                DurationRule::knative(Duration::ZERO, Some(HOUR)).check(t)
            })
            .unwrap_or(g.scale_to_zero_pod_retention_period),
        aggregation: f
            .get(key::METRIC_AGGREGATION_ALGORITHM, |t| one_of(t, AGGREGATIONS))
            .unwrap_or(Aggregation::Linear),
        activator_capacity: g.activator_capacity,
    };
    (scaling, cc)
}

fn resolve_data_plane(f: &mut Fields<'_>, container_concurrency: u32) -> DataPlaneSpec {
    let timeout = f
        .get(key::TIMEOUT, |t| DurationRule::ebb(Duration::from_secs(1), DAY).check(t))
        .unwrap_or(DEFAULT_TIMEOUT);
    let response_start_timeout = f
        .get(key::RESPONSE_START_TIMEOUT, |t| DurationRule::ebb(Duration::from_secs(1), timeout).check(t))
        .unwrap_or(timeout);
    let idle_timeout = f
        .get(key::IDLE_TIMEOUT, |t| DurationRule::ebb(Duration::ZERO, timeout).check(t))
        .filter(|d| !d.is_zero());
    let request_body_timeout = f
        .get(key::REQUEST_BODY_TIMEOUT, |t| DurationRule::ebb(Duration::ZERO, timeout).check(t))
        .unwrap_or(DEFAULT_REQUEST_BODY_TIMEOUT.min(timeout));
    DataPlaneSpec {
        container_concurrency,
        timeout,
        response_start_timeout,
        idle_timeout,
        request_body_timeout: (!request_body_timeout.is_zero()).then_some(request_body_timeout),
        queue_depth: f
            .get(key::QUEUE_DEPTH, |t| whole_number(t, 0..=100_000))
            .unwrap_or(container_concurrency.saturating_mul(QUEUE_DEPTH_PER_SLOT)),
        activation_timeout: f
            .get(key::ACTIVATION_TIMEOUT, |t| DurationRule::ebb(Duration::from_secs(1), DAY).check(t))
            .unwrap_or(DEFAULT_ACTIVATION_TIMEOUT),
        max_queued: f.get(key::MAX_QUEUED, |t| whole_number(t, 1..=1_000_000)).unwrap_or(DEFAULT_MAX_QUEUED),
        hosts: f.get(key::HOSTS, parse_hosts).unwrap_or_default(),
        protocol: f.get(key::PROTOCOL, |t| one_of(t, PROTOCOLS)),
    }
}

fn parse_hosts(text: &str) -> Result<Vec<String>, String> {
    let mut hosts: Vec<String> = Vec::new();
    for host in text.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        if !is_dns_name(host) {
            return Err(format!("{host:?} is not a lower-case DNS name; must be comma-separated host names"));
        }
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_owned());
        }
    }
    Ok(hosts)
}

impl Default for ServiceConfig {
    /// The configuration of a service with no annotations under the default global config.
    fn default() -> Self {
        resolve_service(&BTreeMap::new(), &GlobalConfig::default()).expect("the defaults are valid").value
    }
}

impl ServiceConfig {
    /// Every annotation key with its effective value (for `ebb check --verbose`), in annotation spelling.
    /// The inputs only `config-autoscaler` sets are in [`ServiceConfig::config_map_values`].
    pub fn effective_values(&self) -> Vec<(&'static str, String)> {
        let (s, d) = (&self.scaling, &self.data_plane);
        vec![
            (key::CLASS, spelling(CLASSES, s.class).to_owned()),
            (key::METRIC, spelling(METRICS, s.metric).to_owned()),
            (key::TARGET, format_number(s.total_target)),
            (key::TARGET_UTILIZATION_PERCENTAGE, format_number((s.target_utilization * 1e6).round() / 1e4)),
            (key::TARGET_BURST_CAPACITY, format_number(s.target_burst_capacity)),
            (key::WINDOW, format_duration(s.stable_window)),
            (key::PANIC_WINDOW_PERCENTAGE, format_number(s.panic_window_percentage)),
            (key::PANIC_THRESHOLD_PERCENTAGE, format_number((s.panic_threshold * 1e6).round() / 1e4)),
            (key::MIN_SCALE, s.min_scale.to_string()),
            (key::MAX_SCALE, s.max_scale.to_string()),
            (key::INITIAL_SCALE, s.initial_scale.to_string()),
            (key::ACTIVATION_SCALE, s.activation_scale.to_string()),
            (key::SCALE_DOWN_DELAY, format_duration(s.scale_down_delay)),
            (key::SCALE_TO_ZERO_POD_RETENTION_PERIOD, format_duration(s.scale_to_zero_pod_retention_period)),
            (key::METRIC_AGGREGATION_ALGORITHM, spelling(AGGREGATIONS, s.aggregation).to_owned()),
            (key::CONTAINER_CONCURRENCY, d.container_concurrency.to_string()),
            (key::TIMEOUT, format_duration(d.timeout)),
            (key::RESPONSE_START_TIMEOUT, format_duration(d.response_start_timeout)),
            (key::IDLE_TIMEOUT, format_duration(d.idle_timeout.unwrap_or_default())),
            (key::REQUEST_BODY_TIMEOUT, format_duration(d.request_body_timeout.unwrap_or_default())),
            (key::QUEUE_DEPTH, d.queue_depth.to_string()),
            (key::ACTIVATION_TIMEOUT, format_duration(d.activation_timeout)),
            (key::MAX_QUEUED, d.max_queued.to_string()),
            (key::HOSTS, d.hosts.join(",")),
            (key::PROTOCOL, d.protocol.map_or("client", |p| spelling(PROTOCOLS, p)).to_owned()),
            (key::PAUSED, self.paused.to_string()),
        ]
    }

    /// The decider's and the scale policy's inputs that have no annotation and come from the `config-autoscaler`
    /// ConfigMap alone, with their effective values in the ConfigMap's spelling: with
    /// [`ServiceConfig::effective_values`], the service's whole effective configuration.
    pub fn config_map_values(&self) -> Vec<(&'static str, String)> {
        let s = &self.scaling;
        vec![
            (global_key::MAX_SCALE_UP_RATE, format_number(s.max_scale_up_rate)),
            (global_key::MAX_SCALE_DOWN_RATE, format_number(s.max_scale_down_rate)),
            (global_key::ENABLE_SCALE_TO_ZERO, s.enable_scale_to_zero.to_string()),
            (global_key::SCALE_TO_ZERO_GRACE_PERIOD, format_duration(s.scale_to_zero_grace_period)),
            (global_key::ACTIVATOR_CAPACITY, format_number(s.activator_capacity)),
        ]
    }

    /// Whether the autoscaler should change this service's replicas (not paused, and not left to an HPA).
    pub fn is_autoscaled(&self) -> bool {
        !self.paused && self.scaling.class == ScalerClass::Kpa
    }
}
