//! Pods on their way to ready: created, not ready, not being deleted and not blocked (a model loading for
//! minutes inside its startup probe is one). The leader writes when the oldest of them was created as
//! `status.ebb.dev/starting-since`, so that `ebb status` and `kubectl` show how long a service has been
//! starting, and removes it once none is; a slow start is not reported as a failure.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

use super::blocked::blocked;
use super::pods::is_ready;
use super::watched::WatchedPod;

/// When the oldest starting pod of `pods` was created; `None` when none is starting.
pub(crate) fn since(pods: &[Arc<WatchedPod>]) -> Option<Timestamp> {
    pods.iter()
        .filter(|p| p.meta.deleting.is_none() && !is_ready(p) && blocked(p).is_none())
        .filter_map(|p| p.meta.created.as_ref().map(|t| t.0))
        .min()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(created: &str, status: serde_json::Value) -> Arc<WatchedPod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"creationTimestamp": created}, "status": status}))
                .unwrap(),
        )
    }

    #[test]
    fn the_oldest_pod_still_starting_counts_and_ready_or_stuck_ones_do_not() {
        let ready = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        let loading = json!({"conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "model", "ready": false, "restartCount": 0, "image": "m", "imageID": "",
                                   "started": true, "state": {"running": {}}}]});
        let crashing = json!({"containerStatuses": [{"name": "model", "ready": false, "restartCount": 5,
            "image": "m", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]});
        let pods = [
            pod("2026-12-05T09:00:00Z", ready.clone()),
            pod("2026-12-05T09:30:00Z", crashing),
            pod("2026-12-05T10:00:00Z", loading.clone()),
            pod("2026-12-05T10:05:00Z", json!({})),
        ];
        assert_eq!(since(&pods), Some("2026-12-05T10:00:00Z".parse().unwrap()));
        assert_eq!(since(&pods[..2]), None, "ready and crash-looping pods are not starting");
        let mut going: WatchedPod = (*pod("2026-12-05T08:00:00Z", loading)).clone();
        going.meta.deleting = going.meta.created.clone();
        assert_eq!(since(&[Arc::new(going)]), None, "a pod being deleted is not starting");
    }
}
