//! Multi-pod instances: a replica of a kind with an [`InstanceShape`] (a LeaderWorkerSet's group, a
//! KubeInfer-style instance of prefill and decode pods) is one instance of several pods, of which only the
//! entry pods (those with the queue-proxy, labelled `ebb.dev/service`) take traffic and report load.
//!
//! An instance is whole when it has its pods per instance and every one of them is ready. The engine counts
//! an entry as ready only when its instance is whole, so ready pods, targets and panic thresholds are per
//! instance; and the entry's readiness gate ([`super::instance_gate`]) follows the same verdict, so the
//! kubelet, the EndpointSlice and the activator see the entry Ready only then. A pod's own readiness here is
//! the kubelet's `ContainersReady`: an entry's `Ready` waits for the gate this module decides.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ebb_config::targets::{INSTANCE_READY_GATE, InstanceShape, SizeField};
use ebb_config::{GlobalConfig, ServiceId};
use kube::api::DynamicObject;

use super::instance_pods::{ByTarget, InstancePods};
use super::pods::has_instance_gate;
use super::state::Context;
use super::target_watches::TargetWatches;
use super::targets::Target;
use super::watched::WatchedPod;
use crate::engine::PodTarget;

/// One service's instances as the pass saw them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InstanceView {
    /// Pods per instance, or why it is not known (then an instance is whole when every pod seen of it is
    /// ready).
    pub size: Result<u32, String>,
    /// For each entry pod, by name: whether its instance is whole.
    pub whole: HashMap<String, bool>,
}

impl InstanceView {
    /// Groups `members` (every pod of the target, entries included, as the instance watch shows them) and
    /// `entries` (the service's pods with the queue-proxy) into instances by `shape`'s instance label.
    /// `synced`: whether the members' watch has listed once; before, no instance is whole.
    pub fn observe(
        shape: &InstanceShape,
        size: Result<u32, String>,
        entries: &[Arc<WatchedPod>],
        members: &[Arc<WatchedPod>],
        synced: bool,
    ) -> Self {
        let mut instances: HashMap<&str, BTreeMap<String, &WatchedPod>> = HashMap::new();
        for pod in members.iter().chain(entries).filter(|p| p.meta.deleting.is_none()) {
            if let Some(instance) = pod.labels().get(&shape.instance_label) {
                instances.entry(instance).or_default().insert(pod.name().to_owned(), pod);
            }
        }
        let whole = entries
            .iter()
            .map(|entry| {
                let pods = entry.labels().get(&shape.instance_label).and_then(|i| instances.get(i));
                let whole = synced
                    && pods.is_some_and(|pods| {
                        let enough = size.as_ref().map_or(true, |&size| pods.len() >= size as usize);
                        enough && pods.values().all(|p| containers_ready(p))
                    });
                (entry.name().to_owned(), whole)
            })
            .collect();
        Self { size, whole }
    }

    /// Whether `pod`'s instance is whole (`false` for a pod this view does not know).
    pub fn is_whole(&self, pod: &str) -> bool {
        self.whole.get(pod).copied().unwrap_or(false)
    }

    /// The engine's view: an entry is ready only while its instance is whole, so that every count and
    /// threshold is per instance even where the readiness gate is missing (pods created before it).
    pub fn restrict(&self, targets: &mut [PodTarget]) {
        for target in targets {
            target.ready = target.ready && self.is_whole(&target.name);
        }
    }
}

/// Entry pods without the instance readiness gate (created before their kind had an instance shape, or
/// without the webhook): the activator and the EndpointSlice would use them before their instance is whole.
/// A Warning Event naming them, deduplicated by the events' own memory.
fn report_ungated(context: &Context, target: &Target, entries: &[Arc<WatchedPod>]) {
    let mut ungated: Vec<String> = entries
        .iter()
        .filter(|p| p.meta.deleting.is_none() && !has_instance_gate(p))
        .map(|p| p.name().to_owned())
        .collect();
    if ungated.is_empty() {
        return;
    }
    ungated.sort();
    let note = format!(
        "pod(s) {} lack the readiness gate {INSTANCE_READY_GATE}, so requests may reach them before every pod of \
         their instance is ready; {}",
        ungated.join(", "),
        target.restart_hint(" for the admission webhook to add it")
    );
    context.events.warning(target.reference(), "InstanceGateMissing", note);
}

/// Pods per instance of `object` (its data, where the shape says) or of its `annotations`.
pub(crate) fn size_of(
    shape: &InstanceShape,
    object: Option<&DynamicObject>,
    annotations: &BTreeMap<String, String>,
) -> Result<u32, String> {
    let field = |path: &[String]| {
        let value = object.and_then(|o| path.iter().try_fold(&o.data, |v, key| v.get(key)));
        match value {
            None | Some(serde_json::Value::Null) => SizeField::Absent,
            Some(v) => v.as_u64().map_or_else(|| SizeField::Other(v.to_string()), SizeField::Number),
        }
    };
    shape.pods_per_instance(field, annotations)
}

/// The kubelet's verdict on the pod's containers, which no readiness gate holds back; a pod that reports
/// none (written by something other than a kubelet) by its `Ready`.
pub(crate) fn containers_ready(pod: &WatchedPod) -> bool {
    let Some(conditions) = pod.status.as_ref().map(|s| &s.conditions) else { return false };
    pod.meta.deleting.is_none() && conditions.containers_ready.or(conditions.ready).unwrap_or(false)
}

/// Services with multi-pod instances, each with its view.
pub(crate) type Views = HashMap<ServiceId, InstanceView>;

/// The instance view of every target whose kind has an [`InstanceShape`] in `global`; a size that cannot be
/// known is reported on the target (`InvalidInstanceSize`).
pub(crate) fn views(
    context: &Context,
    global: &GlobalConfig,
    targets: &[Target],
    (watches, members): (&TargetWatches, &InstancePods),
    entries: &HashMap<ServiceId, Vec<Arc<WatchedPod>>>,
) -> Views {
    let mut indexed: HashMap<String, ByTarget> = HashMap::new();
    let mut views = Views::new();
    for target in targets {
        let Some(shape) = global.instance_shape(&target.kind) else { continue };
        let id = target.id();
        let object = watches.object(&target.kind, &id.namespace, &id.name);
        let size = size_of(&shape, object.as_ref().map(|o| &o.object), target.annotations());
        if let Err(why) = &size {
            let note = format!(
                "ebb cannot tell how many pods make an instance ({why}); it waits for every pod seen"
            );
            context.events.warning(target.reference(), "InvalidInstanceSize", note);
        }
        let by_target =
            indexed.entry(shape.name_label.clone()).or_insert_with(|| members.by_target(&shape.name_label));
        let key = (id.namespace.to_string(), id.name.to_string());
        let of_target = by_target.get(&key).map(Vec::as_slice).unwrap_or_default();
        let service_entries = entries.get(&id).map(Vec::as_slice).unwrap_or_default();
        report_ungated(context, target, service_entries);
        let synced = members.synced(&shape.name_label);
        views.insert(id, InstanceView::observe(&shape, size, service_entries, of_target, synced));
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, instance: &str, entry: bool, containers_ready: bool) -> Arc<WatchedPod> {
        let mut labels = serde_json::json!({"example.com/instance": instance, "example.com/name": "llm"});
        if entry {
            labels["ebb.dev/service"] = "llm".into();
        }
        let flag = if containers_ready { "True" } else { "False" };
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "m", "labels": labels},
                "status": {"conditions": [
                    {"type": "ContainersReady", "status": flag},
                    {"type": "Ready", "status": "False"},
                ]},
            }))
            .unwrap(),
        )
    }

    fn shape() -> InstanceShape {
        InstanceShape {
            name_label: "example.com/name".into(),
            instance_label: "example.com/instance".into(),
            size_path: None,
        }
    }

    #[test]
    fn an_instance_is_whole_only_with_all_its_pods_ready() {
        let entries = vec![pod("a-decode", "0", true, true), pod("b-decode", "1", true, true)];
        let mut members = entries.clone();
        members.extend([pod("a-prefill-0", "0", false, true), pod("a-prefill-1", "0", false, true)]);
        // Instance 1 has one prefill pod not ready and one not created yet.
        members.push(pod("b-prefill-0", "1", false, false));
        let view = InstanceView::observe(&shape(), Ok(3), &entries, &members, true);
        assert!(view.is_whole("a-decode"), "{view:?}");
        assert!(!view.is_whole("b-decode"), "{view:?}");

        members.push(pod("b-prefill-1", "1", false, true));
        let view = InstanceView::observe(&shape(), Ok(3), &entries, &members, true);
        assert!(!view.is_whole("b-decode"), "a pod not ready holds the instance back");
        members.pop();
        let view = InstanceView::observe(&shape(), Ok(3), &entries, &members, false);
        assert!(!view.is_whole("a-decode"), "nothing is whole before the members' watch listed");
        let view = InstanceView::observe(&shape(), Err("unknown".into()), &entries, &members[..3], true);
        assert!(view.is_whole("b-decode"), "an unknown size counts the pods seen");
    }

    #[test]
    fn the_engine_counts_an_entry_ready_only_while_its_instance_is_whole() {
        let entries = vec![pod("a-decode", "0", true, true)];
        let view = InstanceView::observe(&shape(), Ok(2), &entries, &entries, true);
        let target = |name: &str| PodTarget {
            name: name.into(),
            stats: None,
            ready: true,
            terminating: false,
            started: std::time::Instant::now(),
        };
        let mut targets = vec![target("a-decode"), target("stranger")];
        view.restrict(&mut targets);
        assert!(targets.iter().all(|t| !t.ready), "a whole instance needs 2 pods; a stranger is unknown");
    }

    #[test]
    fn the_size_is_read_where_the_shape_says() {
        let lws = ebb_config::targets::InstanceShape::leader_worker_set();
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": "llm"}, "spec": {"leaderWorkerTemplate": {"size": 4}},
        }))
        .unwrap();
        assert_eq!(size_of(&lws, Some(&object), &BTreeMap::new()), Ok(4));
        let annotations = [("ebb.dev/instance-pods".to_owned(), "3".to_owned())].into();
        assert_eq!(size_of(&shape(), Some(&object), &annotations), Ok(3));
    }
}
