//! What the reflectors keep of each object: only what the controller reads, so that a cache of thousands of
//! Deployments, pods and Services does not hold their full copies (the managed fields alone are often half
//! of an object). Nothing the controller writes is built from these copies: every write is a merge patch of
//! ebb's own fields, or a new object made from scratch.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, Pod, PodSpec, PodStatus, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use kube::api::DynamicObject;
use serde_json::json;

use super::env_check;

/// kubectl's copy of the whole applied object, in an annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The prefix of every variable the queue-proxy reads (and of the one that marks its container).
const SIDECAR_ENV_PREFIX: &str = "EBB_";

/// Metadata without kubectl's copy of the object and with only the managed-field entries that name a writer of
/// `spec.replicas` (each reduced to that field): who fought ebb over replicas is all they are read for.
fn meta(meta: &mut ObjectMeta) {
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
    let Some(entries) = meta.managed_fields.take() else { return };
    let kept: Vec<ManagedFieldsEntry> = entries
        .into_iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:spec").is_some_and(|s| s.get("f:replicas").is_some()))
        })
        .map(|m| ManagedFieldsEntry {
            fields_v1: Some(FieldsV1(json!({"f:spec": {"f:replicas": {}}}))),
            subresource: None,
            ..m
        })
        .collect();
    meta.managed_fields = (!kept.is_empty()).then_some(kept);
}

/// A container as far as the sidecar checks read it: its name and its `EBB_*` variables.
fn container(c: Container) -> Container {
    let env = c.env.map(|env| env.into_iter().filter(|e| e.name.starts_with(SIDECAR_ENV_PREFIX)).collect());
    Container { name: c.name, env, ..Default::default() }
}

/// A pod spec as far as the sidecar checks read it: the queue-proxy's container alone (a `Container` is 2 KiB
/// even when empty, and a model's pods carry one for each other container), with its readiness gates (small,
/// and what tells a pod that waits for more than its own containers).
fn pod_spec(spec: PodSpec) -> PodSpec {
    let mut kept = PodSpec {
        containers: spec.containers.into_iter().map(container).collect(),
        init_containers: spec.init_containers.map(|c| c.into_iter().map(container).collect()),
        readiness_gates: spec.readiness_gates,
        ..Default::default()
    };
    env_check::keep_only_queue_proxy(&mut kept);
    kept
}

/// A container's status as far as a stuck pod is recognised: its name and why it waits.
fn container_status(c: ContainerStatus) -> ContainerStatus {
    let waiting = c.state.and_then(|s| s.waiting);
    ContainerStatus {
        name: c.name,
        ready: c.ready,
        state: waiting.map(|w| ContainerState { waiting: Some(w), ..Default::default() }),
        ..Default::default()
    }
}

/// A pod: its metadata, its containers' names and sidecar variables, and the status fields that say whether
/// it is ready, stuck, where it is and since when.
pub(crate) fn pod(pod: &mut Pod) {
    meta(&mut pod.metadata);
    pod.metadata.managed_fields = None;
    pod.spec = pod.spec.take().map(pod_spec);
    pod.status = pod.status.take().map(|s| PodStatus {
        conditions: s.conditions,
        pod_ip: s.pod_ip,
        start_time: s.start_time,
        container_statuses: s.container_statuses.map(|c| c.into_iter().map(container_status).collect()),
        init_container_statuses: s
            .init_container_statuses
            .map(|c| c.into_iter().map(container_status).collect()),
        ..Default::default()
    });
}

/// A Deployment: its metadata, replicas, selector and status, and its pod template's metadata and
/// queue-proxy as [`pod`] keeps them.
pub(crate) fn deployment(deployment: &mut Deployment) {
    meta(&mut deployment.metadata);
    if let Some(spec) = &mut deployment.spec {
        spec.template.spec = spec.template.spec.take().map(pod_spec);
    }
}

/// A Service: its metadata only (ebb reads the labels and annotations of the Service it owns).
pub(crate) fn service(service: &mut Service) {
    meta(&mut service.metadata);
    service.metadata.managed_fields = None;
    service.spec = None;
    service.status = None;
}

/// An object of another kind or an EndpointSlice: its managed fields as [`meta`] keeps them.
pub(crate) fn dynamic(object: &mut DynamicObject) {
    meta(&mut object.metadata);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_pod_keeps_what_the_pass_reads() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "m", "labels": {"ebb.dev/service": "chat"},
                "annotations": {LAST_APPLIED: "{...}", "controller.kubernetes.io/pod-deletion-cost": "3"},
                "deletionTimestamp": "2026-12-03T12:00:00Z",
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
            "spec": {"volumes": [{"name": "v"}], "nodeName": "n",
                "readinessGates": [{"conditionType": "example.dev/ready"}],
                "containers": [
                    {"name": "model", "image": "m:1", "env": [{"name": "HF_TOKEN", "value": "x"}]},
                    {"name": "queue-proxy", "image": "ebb", "env": [
                        {"name": "EBB_UPSTREAM", "value": "127.0.0.1:8080"},
                        {"name": "EBB_CONTAINER_CONCURRENCY", "value": "4"}]}]},
            "status": {"podIP": "10.0.0.1", "startTime": "2026-12-03T11:00:00Z", "hostIP": "1.2.3.4",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "model", "image": "m:1", "imageID": "sha", "ready": false,
                    "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1}}}]},
        }))
        .unwrap();
        pod(&mut p);
        let kept = serde_json::to_value(&p).unwrap();
        assert_eq!(kept["metadata"]["labels"]["ebb.dev/service"], "chat");
        assert_eq!(
            kept["metadata"]["annotations"],
            json!({"controller.kubernetes.io/pod-deletion-cost": "3"})
        );
        assert!(kept["metadata"].get("managedFields").is_none());
        assert!(p.metadata.deletion_timestamp.is_some());
        assert_eq!(
            kept["spec"],
            json!({"containers": [
                {"name": "queue-proxy", "env": [
                    {"name": "EBB_UPSTREAM", "value": "127.0.0.1:8080"},
                    {"name": "EBB_CONTAINER_CONCURRENCY", "value": "4"}]}],
                "readinessGates": [{"conditionType": "example.dev/ready"}]})
        );
        assert!(env_check::has_queue_proxy(&p));
        assert_eq!(kept["status"]["podIP"], "10.0.0.1");
        assert_eq!(kept["status"]["conditions"][0]["type"], "Ready");
        assert!(kept["status"].get("hostIP").is_none());
        assert_eq!(kept["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert!(kept["status"]["containerStatuses"][0].get("lastState").is_none());
        assert!(crate::cluster::blocked::blocked(&Pod { metadata: ObjectMeta::default(), ..p }).is_some());
    }

    #[test]
    fn a_native_sidecar_queue_proxy_is_kept_where_it_lives_and_the_other_containers_are_not() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [
                    {"name": "fetch-weights", "image": "w:1"},
                    {"name": "qp", "image": "ebb", "restartPolicy": "Always",
                     "env": [{"name": "EBB_UPSTREAM", "value": "127.0.0.1:8000"}]}],
                "containers": [{"name": "model", "image": "m:1"}, {"name": "metrics", "image": "x:1"}]},
        }))
        .unwrap();
        pod(&mut p);
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty());
        let init: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(init, ["qp"]);
        assert!(env_check::has_queue_proxy(&p));
    }

    #[test]
    fn a_deployment_keeps_only_the_replicas_writers_of_its_managed_fields() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "chat", "annotations": {"ebb.dev/target": "5", LAST_APPLIED: "{...}"},
                "managedFields": [
                    {"manager": "kubectl", "operation": "Update", "time": "2026-12-03T12:00:09Z",
                     "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}}},
                    {"manager": "labeller", "operation": "Update", "fieldsV1": {"f:metadata": {}}}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "chat"}},
                "template": {"metadata": {"annotations": {"ebb.dev/target": "3"}},
                    "spec": {"volumes": [{"name": "v"}], "containers": [{"name": "model", "image": "m:1"}]}}},
            "status": {"readyReplicas": 2},
        }))
        .unwrap();
        deployment(&mut d);
        let kept = serde_json::to_value(&d).unwrap();
        assert_eq!(kept["metadata"]["annotations"], json!({"ebb.dev/target": "5"}));
        let managed = d.metadata.managed_fields.as_ref().unwrap();
        assert_eq!(managed.len(), 1);
        assert_eq!(managed[0].manager.as_deref(), Some("kubectl"));
        assert_eq!(managed[0].fields_v1.as_ref().unwrap().0, json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(kept["spec"]["replicas"], 2);
        assert_eq!(kept["spec"]["selector"]["matchLabels"]["app"], "chat");
        assert_eq!(kept["spec"]["template"]["metadata"]["annotations"]["ebb.dev/target"], "3");
        assert_eq!(kept["spec"]["template"]["spec"], json!({"containers": []}), "no queue-proxy to keep");
        assert_eq!(kept["status"]["readyReplicas"], 2, "a group member's ready pods");
    }
}
