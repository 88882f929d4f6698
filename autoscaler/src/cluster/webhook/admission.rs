//! What the webhook decides for one Pod being created: the scale target it belongs to (Pod -> ReplicaSet ->
//! Deployment from the watch caches, never an API call per pod; for the other kinds of `scale-target-kinds`,
//! whose controllers differ (a StatefulSet, a LeaderWorkerSet's StatefulSets, a custom controller), the
//! target its `ebb.dev/service` label names, as the pass last saw it), that target's annotations and the
//! `config-autoscaler` in force, and the queue-proxy the inject core makes of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ebb_config::ServiceId;
use ebb_config::names::LABEL_SERVICE;
use ebb_inject::{Service, add_instance_gate, inject_pod};
use serde_json::Value;

use super::review::{Request, Verdict, controller, has_sidecar, json_patch};
use crate::cluster::cache::{Cache, all_ready};
use crate::cluster::state::{GlobalInForce, OtherTargets};
use crate::cluster::watched::{Cached, WatchedDeployment, WatchedReplicaSet};

/// How long a pod's ReplicaSet or Deployment may take to reach the watch caches: the API server answers the
/// controller that creates them before the watch event reaches ebb.
const CACHE_WAIT: Duration = Duration::from_secs(3);
const CACHE_POLL: Duration = Duration::from_millis(25);

/// The watch caches and settings the webhook decides with.
pub(crate) struct Admission {
    /// Labelled Deployments (one store per watched namespace, or one for all).
    pub deployments: Vec<Cache<WatchedDeployment>>,
    /// Labelled ReplicaSets, by their controllers.
    pub replicasets: Vec<Cache<WatchedReplicaSet>>,
    /// The scale targets of the other kinds, by service.
    pub others: Arc<OtherTargets>,
    /// `config-autoscaler` as the controller applies it.
    pub global: Arc<GlobalInForce>,
    /// The queue-proxy's image.
    pub image: String,
}

impl Admission {
    /// The verdict for `request`.
    pub async fn decide(&self, request: &Request) -> Verdict {
        let allow = Verdict::Allow { warnings: Vec::new() };
        if request.kind != "Pod" || request.operation != "CREATE" {
            return allow;
        }
        let pod = &request.object;
        let namespace = &request.namespace;
        // Idempotent: a pod with a queue-proxy (`ebb inject`'s, or a reinvocation) keeps it as it is, and
        // gets only the instance gate if its target has multi-pod instances and it lacks it.
        if has_sidecar(pod) {
            let service = pod["metadata"]["labels"][LABEL_SERVICE].as_str().unwrap_or_default();
            let mut gated = pod.clone();
            if self.has_instances(namespace, service) && add_instance_gate(&mut gated, &["spec"]) {
                return Verdict::Patch { patch: json_patch(pod, &gated), warnings: Vec::new() };
            }
            return allow;
        }
        let (kind, name, annotations) = match self.target_of(namespace, pod).await {
            Ok(found) => found,
            Err(verdict) => return verdict,
        };
        let global = self.global.get();
        let service = Service { name: &name, annotations: &annotations, global: &global };
        match inject_pod(pod, &service, &self.image) {
            Ok(mut injected) => {
                if self.has_instances(namespace, &name) {
                    add_instance_gate(&mut injected.pod, &["spec"]);
                }
                Verdict::Patch { patch: json_patch(pod, &injected.pod), warnings: injected.warnings }
            }
            Err(errors) => Verdict::Deny {
                message: format!(
                    "ebb cannot add the queue-proxy to this pod of {kind} {namespace}/{name}: {}. Fix the \
                     {kind}; its pods are created once it is valid",
                    errors.join("; ")
                ),
            },
        }
    }

    /// Whether the target `namespace/service` (as the pass last saw it) has instances of several pods, whose
    /// entry pods get the instance readiness gate.
    fn has_instances(&self, namespace: &str, service: &str) -> bool {
        self.others.get(&ServiceId::new(namespace, service)).is_some_and(|t| t.instances)
    }

    /// The kind, name and annotations of the scale target `pod` belongs to. `Err` is the verdict when there
    /// is none.
    async fn target_of(
        &self,
        namespace: &str,
        pod: &Value,
    ) -> Result<(String, String, BTreeMap<String, String>), Verdict> {
        let owner = controller(pod);
        if let Some((kind, _)) = &owner
            && kind == "ReplicaSet"
        {
            let deployment = self.deployment_of(namespace, pod).await?;
            let name = deployment.name().to_owned();
            let label = deployment.labels().get(LABEL_SERVICE).map(str::to_owned).unwrap_or_default();
            if label != name {
                return Err(warn(format!(
                    "Deployment {namespace}/{name}: label {LABEL_SERVICE}={label:?} must equal its name; ebb leaves \
                     it alone and injects no queue-proxy"
                )));
            }
            return Ok(("Deployment".into(), name, deployment.annotations().to_map()));
        }
        // Another kind's pod: the target its label names, once the pass has seen it.
        let service = pod["metadata"]["labels"][LABEL_SERVICE].as_str().unwrap_or_default();
        let id = ServiceId::new(namespace, service);
        let deadline = tokio::time::Instant::now() + CACHE_WAIT;
        loop {
            if let Some(target) = self.others.get(&id) {
                return Ok((target.kind, service.to_owned(), target.annotations));
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(CACHE_POLL).await;
        }
        Err(warn(match owner {
            None => format!(
                "this pod has no controller and no scale target named {service:?} is autoscaled in {namespace}: \
                 no queue-proxy injected"
            ),
            Some((kind, name)) => format!(
                "this pod belongs to {kind} {name}, and no scale target named {service:?} (its {LABEL_SERVICE} \
                 label) is autoscaled in {namespace}: no queue-proxy injected (is its kind in \
                 scale-target-kinds?)"
            ),
        }))
    }

    /// The labelled Deployment that owns `pod` through a ReplicaSet, waiting briefly for the caches. `Err`
    /// is the verdict when there is none.
    async fn deployment_of(&self, namespace: &str, pod: &Value) -> Result<Arc<WatchedDeployment>, Verdict> {
        // Before the caches have listed once, "not found" means nothing: refuse, and the pod comes again.
        if !self.synced().await {
            return Err(Verdict::Deny {
                message:
                    "ebb's watch caches are not synced yet (the autoscaler is starting); the pod is created \
                          again shortly"
                        .into(),
            });
        }
        let Some((kind, name)) = controller(pod) else {
            return Err(warn(
                "this pod has no controller: ebb injects the queue-proxy only into pods of Deployments"
                    .into(),
            ));
        };
        if kind != "ReplicaSet" {
            return Err(warn(format!(
                "this pod belongs to {kind} {name}: ebb injects the queue-proxy only into pods of Deployments"
            )));
        }
        let Some(replicaset) = cached(&self.replicasets, namespace, &name).await else {
            // Refused, so the ReplicaSet controller tries again, by when the cache has it.
            return Err(Verdict::Deny {
                message: format!(
                    "ReplicaSet {namespace}/{name} is not in ebb's watch cache yet (or not labelled \
                     {LABEL_SERVICE}); the pod is created again shortly"
                ),
            });
        };
        let Some((_, owner)) = replicaset.controller.as_ref().filter(|(kind, _)| kind == "Deployment") else {
            return Err(warn(format!(
                "ReplicaSet {namespace}/{name} has no Deployment: ebb injects the queue-proxy only into pods of \
                 Deployments"
            )));
        };
        cached(&self.deployments, namespace, owner).await.ok_or_else(|| {
            warn(format!(
                "Deployment {namespace}/{owner}: not labelled {LABEL_SERVICE}, or in a namespace this autoscaler \
                 does not watch: no queue-proxy injected"
            ))
        })
    }
}

impl Admission {
    /// Whether every cache the decision reads has listed once, waiting up to [`CACHE_WAIT`].
    async fn synced(&self) -> bool {
        let all = async { all_ready(&self.deployments).await && all_ready(&self.replicasets).await };
        matches!(tokio::time::timeout(CACHE_WAIT, all).await, Ok(true))
    }
}

fn warn(warning: String) -> Verdict {
    Verdict::Allow { warnings: vec![warning] }
}

/// The object `namespace/name` in one of `caches`, waiting up to [`CACHE_WAIT`] for it to arrive.
async fn cached<K: Cached>(caches: &[Cache<K>], namespace: &str, name: &str) -> Option<Arc<K>> {
    let deadline = tokio::time::Instant::now() + CACHE_WAIT;
    loop {
        if let Some(found) = caches.iter().find_map(|c| c.get(namespace, name)) {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(CACHE_POLL).await;
    }
}
