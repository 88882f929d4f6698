//! Every configuration key ebb reads, with its default and accepted values: the single list that parsing,
//! unknown-key detection, `ebb check --verbose` and the README's tables are checked against.

/// The default of a key, as documentation shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultDoc {
    /// A literal value: the effective value when nothing is set.
    Value(&'static str),
    /// Computed from other settings (described in words).
    Derived(&'static str),
}

/// One documented key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    /// The full key, e.g. `autoscaling.knative.dev/window` or `stable-window`.
    pub key: &'static str,
    /// Knative's legacy camelCase spelling, where one exists (the kebab-case key wins when both are set).
    pub alias: Option<&'static str>,
    /// The `config-autoscaler` key an annotation falls back to, where it has one.
    pub global: Option<&'static str>,
    /// The default.
    pub default: DefaultDoc,
    /// Accepted values, as a sentence fragment.
    pub accepted: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

macro_rules! keys {
    ($($ident:ident = $key:literal),* $(,)?) => {
        $(#[doc = concat!("`", $key, "`")] pub const $ident: &str = $key;)*
    };
}

/// Annotation keys on a Deployment's `metadata.annotations`.
pub mod annotation {
    keys! {
        CLASS = "autoscaling.knative.dev/class",
        METRIC = "autoscaling.knative.dev/metric",
        TARGET = "autoscaling.knative.dev/target",
        TARGET_UTILIZATION_PERCENTAGE = "autoscaling.knative.dev/target-utilization-percentage",
        TARGET_BURST_CAPACITY = "autoscaling.knative.dev/target-burst-capacity",
        WINDOW = "autoscaling.knative.dev/window",
        PANIC_WINDOW_PERCENTAGE = "autoscaling.knative.dev/panic-window-percentage",
        PANIC_THRESHOLD_PERCENTAGE = "autoscaling.knative.dev/panic-threshold-percentage",
        MIN_SCALE = "autoscaling.knative.dev/min-scale",
        MAX_SCALE = "autoscaling.knative.dev/max-scale",
        INITIAL_SCALE = "autoscaling.knative.dev/initial-scale",
        ACTIVATION_SCALE = "autoscaling.knative.dev/activation-scale",
        SCALE_DOWN_DELAY = "autoscaling.knative.dev/scale-down-delay",
        SCALE_TO_ZERO_POD_RETENTION_PERIOD = "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
        METRIC_AGGREGATION_ALGORITHM = "autoscaling.knative.dev/metric-aggregation-algorithm",
        CONTAINER_CONCURRENCY = "ebb.dev/container-concurrency",
        TIMEOUT = "ebb.dev/timeout",
        RESPONSE_START_TIMEOUT = "ebb.dev/response-start-timeout",
        IDLE_TIMEOUT = "ebb.dev/idle-timeout",
        REQUEST_BODY_TIMEOUT = "ebb.dev/request-body-timeout",
        QUEUE_DEPTH = "ebb.dev/queue-depth",
        ACTIVATION_TIMEOUT = "ebb.dev/activation-timeout",
        MAX_QUEUED = "ebb.dev/max-queued",
        HOSTS = "ebb.dev/hosts",
        PROTOCOL = "ebb.dev/protocol",
        PAUSED = "ebb.dev/paused",
    }
}

/// Keys of the `config-autoscaler` ConfigMap's `data`.
pub mod global {
    keys! {
        POD_AUTOSCALER_CLASS = "pod-autoscaler-class",
        ENABLE_SCALE_TO_ZERO = "enable-scale-to-zero",
        CONTAINER_CONCURRENCY_TARGET_PERCENTAGE = "container-concurrency-target-percentage",
        CONTAINER_CONCURRENCY_TARGET_DEFAULT = "container-concurrency-target-default",
        REQUESTS_PER_SECOND_TARGET_DEFAULT = "requests-per-second-target-default",
        TARGET_BURST_CAPACITY = "target-burst-capacity",
        STABLE_WINDOW = "stable-window",
        PANIC_WINDOW_PERCENTAGE = "panic-window-percentage",
        PANIC_THRESHOLD_PERCENTAGE = "panic-threshold-percentage",
        MAX_SCALE_UP_RATE = "max-scale-up-rate",
        MAX_SCALE_DOWN_RATE = "max-scale-down-rate",
        SCALE_TO_ZERO_GRACE_PERIOD = "scale-to-zero-grace-period",
        SCALE_TO_ZERO_POD_RETENTION_PERIOD = "scale-to-zero-pod-retention-period",
        SCALE_DOWN_DELAY = "scale-down-delay",
        ACTIVATOR_CAPACITY = "activator-capacity",
        INITIAL_SCALE = "initial-scale",
        ALLOW_ZERO_INITIAL_SCALE = "allow-zero-initial-scale",
        MIN_SCALE = "min-scale",
        MAX_SCALE = "max-scale",
        MAX_SCALE_LIMIT = "max-scale-limit",
        SCALE_TARGET_KINDS = "scale-target-kinds",
        SCALE_TARGET_INSTANCES = "scale-target-instances",
    }
}

const fn doc(
    key: &'static str,
    alias: Option<&'static str>,
    global: Option<&'static str>,
    default: DefaultDoc,
    accepted: &'static str,
    meaning: &'static str,
) -> KeyDoc {
    KeyDoc { key, alias, global, default, accepted, meaning }
}

use DefaultDoc::{Derived, Value};
use annotation as a;
use global as g;

/// Every annotation ebb reads from a Deployment's `metadata.annotations`.
#[rustfmt::skip]
pub const ANNOTATION_KEYS: &[KeyDoc] = &[
    doc(a::CLASS, None, Some(g::POD_AUTOSCALER_CLASS), Value("kpa.autoscaling.knative.dev"),
        "`kpa.autoscaling.knative.dev` or `hpa.autoscaling.knative.dev`",
        "Which autoscaler scales the service; with `hpa` ebb only routes and leaves replicas to an HPA."),
    doc(a::METRIC, None, None, Value("concurrency"), "`concurrency` or `rps`",
        "The load measured against the per-pod target."),
    doc(a::TARGET, None, None,
        Derived("`ebb.dev/container-concurrency` if > 0, else `container-concurrency-target-default` (100); `requests-per-second-target-default` (200) for rps"),
        "a number >= 0.01 (capped at the container concurrency when that is > 0)",
        "Per-pod load the autoscaler aims for, before utilisation."),
    doc(a::TARGET_UTILIZATION_PERCENTAGE, Some("autoscaling.knative.dev/targetUtilizationPercentage"),
        Some(g::CONTAINER_CONCURRENCY_TARGET_PERCENTAGE), Value("70"), "a number from 1 to 100",
        "Share of the target to fill before scaling up (rps uses 70 unless this is set)."),
    doc(a::TARGET_BURST_CAPACITY, Some("autoscaling.knative.dev/targetBurstCapacity"),
        Some(g::TARGET_BURST_CAPACITY), Value("211"), "a number >= 0, or -1",
        "Spare capacity kept before the activator leaves the request path; -1 keeps it there, 0 never."),
    doc(a::WINDOW, None, Some(g::STABLE_WINDOW), Value("1m"), "a duration from 6s to 1h, in whole seconds",
        "The stable window over which load is averaged."),
    doc(a::PANIC_WINDOW_PERCENTAGE, Some("autoscaling.knative.dev/panicWindowPercentage"),
        Some(g::PANIC_WINDOW_PERCENTAGE), Value("10"), "a number from 1 to 100",
        "The panic window as a percentage of the stable window."),
    doc(a::PANIC_THRESHOLD_PERCENTAGE, Some("autoscaling.knative.dev/panicThresholdPercentage"),
        Some(g::PANIC_THRESHOLD_PERCENTAGE), Value("200"), "a number from 110 to 1000",
        "Panic when the panic-window load needs this percentage of the ready pods."),
    doc(a::MIN_SCALE, Some("autoscaling.knative.dev/minScale"), Some(g::MIN_SCALE), Value("0"),
        "a whole number >= 0, at most max-scale when that is not 0", "Fewest replicas while the service is reachable."),
    doc(a::MAX_SCALE, Some("autoscaling.knative.dev/maxScale"), Some(g::MAX_SCALE), Value("0"),
        "a whole number >= 0 (0 = unbounded), within max-scale-limit when that is set", "Most replicas."),
    doc(a::INITIAL_SCALE, Some("autoscaling.knative.dev/initialScale"), Some(g::INITIAL_SCALE), Value("1"),
        "a whole number >= 0 (0 only with allow-zero-initial-scale)", "Replicas when the service is created."),
    doc(a::ACTIVATION_SCALE, None, None, Value("1"),
        "a whole number >= 2, at least min-scale, at most max-scale when that is not 0", "A scale-up from zero goes straight to at least this many replicas."),
    doc(a::SCALE_DOWN_DELAY, Some("autoscaling.knative.dev/scaleDownDelay"), Some(g::SCALE_DOWN_DELAY),
        Value("0s"), "a duration from 0s to 1h, in whole seconds",
        "Scale down only to the highest count wanted over this long."),
    doc(a::SCALE_TO_ZERO_POD_RETENTION_PERIOD, Some("autoscaling.knative.dev/scaleToZeroPodRetentionPeriod"),
        Some(g::SCALE_TO_ZERO_POD_RETENTION_PERIOD), Value("0s"), "a duration from 0s to 1h",
        "Keep the last pod at least this long after the service goes idle."),
    doc(a::METRIC_AGGREGATION_ALGORITHM, Some("autoscaling.knative.dev/metricAggregationAlgorithm"), None,
        Value("linear"), "`linear`, `weighted-exponential` or `weightedExponential`",
        "How a window of per-second values is averaged."),
    doc(a::CONTAINER_CONCURRENCY, None, None, Value("0"), "a whole number from 0 to 1000 (0 = unlimited)",
        "Requests one pod serves at once; the queue-proxy enforces it."),
    doc(a::TIMEOUT, None, None, Value("5m"), "a duration from 1s to 24h (or whole seconds)",
        "Longest a request may take, end to end at the pod."),
    doc(a::RESPONSE_START_TIMEOUT, None, None, Derived("`ebb.dev/timeout`"),
        "a duration from 1s up to the timeout (or whole seconds)", "Longest wait for the first response byte."),
    doc(a::IDLE_TIMEOUT, None, None, Value("0s"), "a duration from 0s (off) up to the timeout (or whole seconds)",
        "Longest time the upstream sends nothing, before its first byte or between bytes."),
    doc(a::REQUEST_BODY_TIMEOUT, None, None, Derived("`60s`, or `ebb.dev/timeout` when shorter"),
        "a duration from 0s (off) up to the timeout (or whole seconds)",
        "Longest time the client sends nothing while sending its request body: answered 408, the slot freed."),
    doc(a::QUEUE_DEPTH, None, None, Derived("10 x `ebb.dev/container-concurrency`"),
        "a whole number from 0 to 100000", "Requests a pod queues beyond its concurrency before answering 503."),
    doc(a::ACTIVATION_TIMEOUT, None, None, Value("10m"), "a duration from 1s to 24h (or whole seconds)",
        "Longest the activator holds a request while the service starts."),
    doc(a::MAX_QUEUED, None, None, Value("1000"), "a whole number from 1 to 1000000 (capped by the activator's flag)",
        "Requests the activator holds for this service while it starts."),
    doc(a::HOSTS, None, None, Value(""), "comma-separated lower-case DNS names",
        "Extra Host names that route to this service."),
    doc(a::PROTOCOL, None, None, Derived("the client's protocol"), "`http1` or `h2c`",
        "Protocol spoken to the user container."),
    doc(a::PAUSED, None, None, Value("false"), "`true` or `false`",
        "Stop autoscaling this Deployment; replicas are left as they are."),
];

/// Every key of the `config-autoscaler` ConfigMap (Knative's keys and defaults).
#[rustfmt::skip]
pub const GLOBAL_KEYS: &[KeyDoc] = &[
    doc(g::POD_AUTOSCALER_CLASS, None, None, Value("kpa.autoscaling.knative.dev"),
        "`kpa.autoscaling.knative.dev` or `hpa.autoscaling.knative.dev`", "Default autoscaler class."),
    doc(g::ENABLE_SCALE_TO_ZERO, None, None, Value("true"), "`true` or `false`",
        "Whether services may scale to zero; `false` floors them at 1."),
    doc(g::CONTAINER_CONCURRENCY_TARGET_PERCENTAGE, None, None, Value("70"), "a number > 0 and <= 100",
        "Default target utilisation for the concurrency metric."),
    doc(g::CONTAINER_CONCURRENCY_TARGET_DEFAULT, None, None, Value("100"), "a number >= 0.01",
        "Per-pod concurrency target when the container concurrency is unlimited."),
    doc(g::REQUESTS_PER_SECOND_TARGET_DEFAULT, None, None, Value("200"), "a number >= 0.01",
        "Per-pod target for the rps metric."),
    doc(g::TARGET_BURST_CAPACITY, None, None, Value("211"), "a number >= 0, or -1",
        "Default target burst capacity."),
    doc(g::STABLE_WINDOW, None, None, Value("1m"), "a duration from 6s to 1h, in whole seconds",
        "Default stable window."),
    doc(g::PANIC_WINDOW_PERCENTAGE, None, None, Value("10"), "a number from 1 to 100",
        "Default panic window as a percentage of the stable window."),
    doc(g::PANIC_THRESHOLD_PERCENTAGE, None, None, Value("200"), "a number from 110 to 1000",
        "Default panic threshold."),
    doc(g::MAX_SCALE_UP_RATE, None, None, Value("1000"), "a number > 1",
        "Largest factor by which one decision may grow the ready pods."),
    doc(g::MAX_SCALE_DOWN_RATE, None, None, Value("2"), "a number > 1",
        "Largest factor by which one decision may shrink the ready pods."),
    doc(g::SCALE_TO_ZERO_GRACE_PERIOD, None, None, Value("30s"), "a duration > 0s",
        "How long the activator is in the path before replicas go to zero."),
    doc(g::SCALE_TO_ZERO_POD_RETENTION_PERIOD, None, None, Value("0s"), "a duration >= 0s",
        "Default time the last pod is kept after going idle."),
    doc(g::SCALE_DOWN_DELAY, None, None, Value("0s"), "a duration >= 0s, in whole seconds",
        "Default scale-down delay."),
    doc(g::ACTIVATOR_CAPACITY, None, None, Value("100"), "a number >= 1",
        "Requests one activator is sized to carry for a service."),
    doc(g::INITIAL_SCALE, None, None, Value("1"), "a whole number >= 0 (0 only with allow-zero-initial-scale)",
        "Default replicas on creation."),
    doc(g::ALLOW_ZERO_INITIAL_SCALE, None, None, Value("false"), "`true` or `false`",
        "Whether initial-scale may be 0."),
    doc(g::MIN_SCALE, None, None, Value("0"), "a whole number >= 0", "Default min-scale."),
    doc(g::MAX_SCALE, None, None, Value("0"), "a whole number >= 0 (0 = unbounded)", "Default max-scale."),
    doc(g::MAX_SCALE_LIMIT, None, None, Value("0"), "a whole number >= 0 (0 = no limit)",
        "Highest max-scale a service may ask for."),
    doc(g::SCALE_TARGET_KINDS, None, None, Value("deployments.apps"),
        "comma-separated `RESOURCE.GROUP` of kinds that serve the `scale` subresource",
        "Kinds of object ebb autoscales (each needs RBAC: manifests/scale-targets/)."),
    doc(g::SCALE_TARGET_INSTANCES, None, None, Value(""),
        "`RESOURCE.GROUP: name-label=LABEL, instance-label=LABEL[, size=FIELD.PATH]`, separated by `;` or new lines",
        "How a listed kind whose replica is several pods groups them in instances (built in: LeaderWorkerSets)."),
];

/// Finds the documented key that `key` names, directly or as an alias.
pub fn lookup<'a>(table: &'a [KeyDoc], key: &str) -> Option<&'a KeyDoc> {
    table.iter().find(|doc| doc.key == key || doc.alias == Some(key))
}

/// The documented key closest to a misspelt one, when it is close enough to be a likely typo.
pub fn suggest(table: &[KeyDoc], key: &str) -> Option<&'static str> {
    let names = table.iter().flat_map(|doc| std::iter::once(doc.key).chain(doc.alias));
    let (distance, best) = names.map(|name| (edit_distance(key, name), name)).min()?;
    (distance <= 3.max(key.len() / 6)).then_some(best)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for doc in ANNOTATION_KEYS {
            assert!(
                doc.key.starts_with(crate::names::KNATIVE_PREFIX)
                    || doc.key.starts_with(crate::names::EBB_PREFIX)
            );
            assert!(seen.insert(doc.key) && doc.alias.is_none_or(|alias| seen.insert(alias)), "{}", doc.key);
            if let Some(global) = doc.global {
                assert!(lookup(GLOBAL_KEYS, global).is_some(), "{} falls back to unknown {global}", doc.key);
            }
        }
        for doc in GLOBAL_KEYS {
            assert!(seen.insert(doc.key), "{}", doc.key);
        }
    }

    #[test]
    fn every_knative_camel_case_alias_is_known() {
        for alias in [
            "initialScale",
            "maxScale",
            "minScale",
            "metricAggregationAlgorithm",
            "panicThresholdPercentage",
            "panicWindowPercentage",
            "scaleDownDelay",
            "scaleToZeroPodRetentionPeriod",
            "targetBurstCapacity",
            "targetUtilizationPercentage",
        ] {
            let key = format!("autoscaling.knative.dev/{alias}");
            assert_eq!(lookup(ANNOTATION_KEYS, &key).and_then(|doc| doc.alias), Some(key.as_str()));
        }
    }

    #[test]
    fn typos_get_a_suggestion_and_nonsense_does_not() {
        assert_eq!(suggest(ANNOTATION_KEYS, "autoscaling.knative.dev/windw"), Some(annotation::WINDOW));
        assert_eq!(
            suggest(ANNOTATION_KEYS, "autoscaling.knative.dev/minscale"),
            // Equally close to the alias and the kebab-case key: the kebab-case key wins.
            Some(annotation::MIN_SCALE)
        );
        assert_eq!(
            suggest(ANNOTATION_KEYS, "ebb.dev/container-concurency"),
            Some(annotation::CONTAINER_CONCURRENCY)
        );
        assert_eq!(suggest(GLOBAL_KEYS, "stable-windows"), Some(global::STABLE_WINDOW));
        assert_eq!(suggest(ANNOTATION_KEYS, "ebb.dev/something-else-entirely"), None);
    }
}
