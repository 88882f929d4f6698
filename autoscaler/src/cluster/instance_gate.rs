//! The readiness gate `ebb.dev/instance-ready` of the entry pods of multi-pod instances (the admission
//! webhook adds it to their spec; `ebb inject` to a LeaderWorkerSet's leader template): the writer (the
//! leader, or the holder of the service's bucket) sets the condition True on an entry pod's status when its
//! instance is whole and False when it is not, only when it changes. The kubelet counts a pod Ready only
//! when its containers are ready and every gate's condition is True, so the EndpointSlice, the activator and
//! any gateway see an entry only once all pods of its instance are ready; a request held at zero is released
//! only then.

use std::sync::Arc;

use ebb_config::ServiceId;
use ebb_config::targets::INSTANCE_READY_GATE;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::Patch;
use serde_json::{Value, json};

use super::instances::InstanceView;
use super::options::patch_params;
use super::pods::has_instance_gate as has_gate;
use super::state::Context;
use super::watched::{PodWire, WatchedPod};

/// The gate's condition on `pod`'s status: `None` until it is first written.
pub(crate) fn gate_status(pod: &WatchedPod) -> Option<bool> {
    pod.status.as_ref()?.conditions.instance_ready
}

/// The entry pods whose gate must change, with the value it must take.
pub(crate) fn changes(view: &InstanceView, entries: &[Arc<WatchedPod>]) -> Vec<(Arc<WatchedPod>, bool)> {
    entries
        .iter()
        .filter(|p| p.meta.deleting.is_none() && has_gate(p))
        .filter_map(|pod| {
            let whole = view.is_whole(pod.name());
            (gate_status(pod) != Some(whole)).then(|| (pod.clone(), whole))
        })
        .collect()
}

/// The strategic-merge patch of `pod`'s status that sets the gate to `whole` (conditions merge by type, so
/// the kubelet's own are left as they are); the uid makes it apply to this pod only, not a successor of
/// the same name.
fn patch(pod: &WatchedPod, whole: bool, size: &Result<u32, String>) -> Value {
    let (status, reason, message) = if whole {
        ("True", "InstanceReady", "every pod of its instance is ready".to_owned())
    } else {
        let pods = size.as_ref().map_or_else(|_| "its pods".to_owned(), |n| format!("all {n} pods"));
        ("False", "InstanceNotReady", format!("waiting for {pods} of its instance to be ready"))
    };
    json!({
        "metadata": {"uid": pod.meta.uid},
        "status": {"conditions": [{
            "type": INSTANCE_READY_GATE,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": Timestamp::now().to_string(),
        }]},
    })
}

/// Writes the gates of `id`'s entry pods that differ from `view`. Failures are logged and retried on the
/// next pass (the condition read back from the watch still differs).
pub(crate) async fn reconcile(
    context: &Context,
    id: &ServiceId,
    view: &InstanceView,
    entries: &[Arc<WatchedPod>],
) {
    for (pod, whole) in changes(view, entries) {
        let api: Api<PodWire> = Api::namespaced(context.client.clone(), &id.namespace);
        let name = pod.name().to_owned();
        match api
            .patch_status(&name, &patch_params(), &Patch::Strategic(patch(&pod, whole, &view.size)))
            .await
        {
            Ok(_) => {
                tracing::info!(service = %id, pod = %name, whole, "instance gate of {name} set to {whole}")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!(service = %id, pod = %name, "cannot write the instance gate of {name}: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, gate: bool, condition: Option<&str>) -> Arc<WatchedPod> {
        let gates = if gate { json!([{"conditionType": INSTANCE_READY_GATE}]) } else { json!([]) };
        let conditions: Vec<Value> =
            condition.map(|s| json!({"type": INSTANCE_READY_GATE, "status": s})).into_iter().collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "uid": format!("uid-{name}")},
                "spec": {"containers": [], "readinessGates": gates},
                "status": {"conditions": conditions},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn only_gated_entries_whose_condition_differs_are_written() {
        let view = InstanceView {
            size: Ok(3),
            whole: [("new", true), ("held", false), ("done", true), ("ungated", true), ("broke", false)]
                .into_iter()
                .map(|(n, w)| (n.to_owned(), w))
                .collect(),
        };
        let entries = vec![
            entry("new", true, None),
            entry("held", true, None),
            entry("done", true, Some("True")),
            entry("ungated", false, None),
            entry("broke", true, Some("True")),
        ];
        let mut out: Vec<(String, bool)> =
            changes(&view, &entries).into_iter().map(|(p, w)| (p.name().to_owned(), w)).collect();
        out.sort();
        assert_eq!(
            out,
            vec![("broke".to_owned(), false), ("held".to_owned(), false), ("new".to_owned(), true)]
        );
        let body = patch(&entries[1], false, &view.size);
        assert_eq!(body["metadata"]["uid"], "uid-held");
        assert_eq!(body["status"]["conditions"][0]["status"], "False");
        assert!(body["status"]["conditions"][0]["message"].as_str().unwrap().contains("all 3 pods"));
    }
}
