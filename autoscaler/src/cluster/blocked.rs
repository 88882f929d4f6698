//! Pods that will not become ready on their own: unschedulable, unable to pull their image, or crash-looping.
//! A pure function of the pod's status, so that the activator's Kubernetes source (which has its own copy
//! today, in `activator/src/kube_source.rs`) could share it from a common place.

use super::watched::WatchedPod;

/// Why a pod is stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// `unschedulable`, `image_pull` or `crash_loop` (a metric label).
    pub kind: &'static str,
    /// The reason and message Kubernetes gave.
    pub message: String,
}

/// Waiting reasons of a container that is not going to start without help.
const IMAGE_PULL: [&str; 4] = ["ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"];
const CRASH_LOOP: [&str; 2] = ["CrashLoopBackOff", "CreateContainerConfigError"];

/// Every kind [`blocked`] returns.
pub const KINDS: [&str; 3] = ["unschedulable", "image_pull", "crash_loop"];

/// Whether `pod` is stuck, and why. A pod being deleted is not reported.
pub fn blocked(pod: &WatchedPod) -> Option<Blocked> {
    if pod.meta.deleting.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if let Some(why) = &status.conditions.unschedulable {
        let why = if why.is_empty() { "no node fits" } else { why };
        return Some(Blocked { kind: "unschedulable", message: format!("Unschedulable: {why}") });
    }
    for c in status.waiting_init_containers.iter().chain(&status.waiting_containers) {
        let reason = c.reason.as_deref().unwrap_or_default();
        let kind = if IMAGE_PULL.contains(&reason) {
            "image_pull"
        } else if CRASH_LOOP.contains(&reason) {
            "crash_loop"
        } else {
            continue;
        };
        let message = format!("container {}: {reason}: {}", c.name, c.message.as_deref().unwrap_or_default());
        return Some(Blocked { kind, message });
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(status: serde_json::Value) -> WatchedPod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn stuck_pods_say_why() {
        let unschedulable = pod(json!({"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes have a GPU"}]}));
        assert_eq!(blocked(&unschedulable).unwrap().kind, "unschedulable");
        let pull = pod(json!({"containerStatuses": [{"name": "app", "ready": false, "restartCount": 0,
            "image": "x", "imageID": "", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]}));
        let b = blocked(&pull).unwrap();
        assert_eq!(b.kind, "image_pull");
        assert!(b.message.contains("no such image"), "{b:?}");
        let crash = pod(json!({"containerStatuses": [{"name": "app", "ready": false, "restartCount": 5,
            "image": "x", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}));
        assert_eq!(blocked(&crash).unwrap().kind, "crash_loop");
        let starting = pod(json!({"containerStatuses": [{"name": "app", "ready": false, "restartCount": 0,
            "image": "x", "imageID": "", "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        assert_eq!(blocked(&starting), None);
    }
}
