//! How an injected pod stops: the user container's preStop hook waits until the queue-proxy has drained, and
//! the pod's `terminationGracePeriodSeconds` is long enough for that drain.

use std::time::Duration;

use ebb_config::names::{QUEUE_PROXY_ADMIN_PORT, WAIT_FOR_DRAIN_PATH};
use ebb_config::sidecar;
use ebb_config::value::parse_duration;
use serde_json::Value;

use crate::value::map;

/// Time beyond the drain deadline for the preStop hook's round trip and the process's exit.
const GRACE_MARGIN: Duration = Duration::from_secs(5);
/// Kubernetes' default `terminationGracePeriodSeconds`.
const KUBERNETES_DEFAULT_GRACE_SECS: u64 = 30;

/// The preStop hook that waits until the queue-proxy has drained.
pub fn drain_hook() -> Value {
    let http_get = map([("path", WAIT_FOR_DRAIN_PATH.into()), ("port", QUEUE_PROXY_ADMIN_PORT.into())]);
    map([("httpGet", http_get)])
}

/// The `terminationGracePeriodSeconds` a pod needs, given the service's `timeout`, the drain settings the user
/// set on the sidecar (`EBB_DRAIN_QUIET_PERIOD`, `EBB_DRAIN_DEADLINE`, as written) and the pod's current
/// grace period.
///
/// The sidecar's drain: from SIGTERM, which it gets at once (it has no preStop hook), it serves what is in
/// flight and still arriving, and ends once nothing arrived for the quiet period, or at the drain deadline
/// (default timeout + quiet period) at the latest. The user container's preStop hook blocks its SIGTERM until
/// then, and the kubelet counts hook time against terminationGracePeriodSeconds, so the grace period must
/// cover the whole drain:
///   grace >= drain deadline + margin = timeout + quiet period + 5 s (hook round trip, process exit),
/// rounded up to whole seconds. A longer grace period already on the pod is kept.
pub fn termination_grace_period(
    timeout: Duration,
    quiet_period: Option<&str>,
    deadline: Option<&str>,
    current: Option<u64>,
) -> u64 {
    let quiet = quiet_period.and_then(parse_duration).unwrap_or(sidecar::DEFAULT_DRAIN_QUIET_PERIOD);
    let deadline = deadline.and_then(parse_duration).unwrap_or(timeout + quiet);
    let grace = (deadline + GRACE_MARGIN).as_secs_f64().ceil() as u64;
    grace.max(current.unwrap_or(KUBERNETES_DEFAULT_GRACE_SECS))
}
