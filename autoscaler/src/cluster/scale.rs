//! Replicas: the Kubernetes [`Scaler`] the engine acts through, and the leader's reconciliation of each
//! scale target's replicas (a Deployment's, a StatefulSet's, a custom resource's) with the engine's desired
//! count.
//!
//! The engine calls the scaler only when its decision changes; the reconciliation here is level-triggered
//! (desired vs. what the watch shows) so that a write that failed, was held back or was undone by another
//! writer is retried. Rules:
//! - merge patch of the target's `scale` subresource (`deployments/scale`, `statefulsets/scale`, ...), only
//!   when the value differs;
//! - never lower replicas while the API server is unreachable, or while an activator reported requests
//!   queued (waiting for a pod's slot) for the service in the last [`QUEUED_HOLD`]; load it is merely
//!   proxying to pods with room does not hold a scale-down;
//! - before lowering, mark the least busy pods cheapest to delete;
//! - a Normal Event per change, with the decision's reason;
//! - another writer (kubectl scale, an HPA, a GitOps re-apply) that changes replicas gets a Warning Event
//!   naming it; ebb wins for an autoscaled Deployment and sets its count back (`docs/rbac.md`, "Other
//!   writers"); `ebb.dev/paused: "true"` hands the replicas over.
//! - the status annotations go on the target itself, whatever its kind.

use std::sync::Arc;
use std::time::Duration;

use ebb_config::Mode;
use ebb_config::ServiceId;
use ebb_config::names::{ANNOTATION_POD_DELETION_COST, STATUS_REASON, STATUS_SIDECAR, STATUS_STARTING_SINCE};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::Patch;
use serde_json::json;

use super::deletion_cost;
use super::metrics::KubeMetrics;
use super::options::{CONTROLLER_NAME, patch_params};
use super::pods::is_ready;
use super::service_state::ServiceState;
use super::state::{Activators, Context, Signals};
use super::status;
use super::targets::Target;
use super::watched::{PodWire, ReplicasWriter, WatchedPod};
use crate::engine::{Autoscaler, Scaler, Scraper, ServiceStatus};

/// Replicas are not lowered for this long after an activator reported requests queued for the service.
pub const QUEUED_HOLD: Duration = Duration::from_secs(3);

/// The engine's [`Scaler`] on Kubernetes: calls mark the service for the controller's next pass, which
/// applies the engine's state if this replica leads.
pub struct KubeScaler {
    signals: Arc<Signals>,
    activators: Arc<Activators>,
    manage_request_path: bool,
}

impl KubeScaler {
    pub(crate) fn new(signals: Arc<Signals>, activators: Arc<Activators>, manage_request_path: bool) -> Self {
        Self { signals, activators, manage_request_path }
    }
}

impl Scaler for KubeScaler {
    fn set_replicas(&self, service: &ServiceId, _replicas: u32) {
        self.signals.touch(service.clone());
    }

    fn set_mode(&self, service: &ServiceId, _mode: Mode) {
        self.signals.touch(service.clone());
    }

    fn status_moved(&self, service: &ServiceId) {
        // The phase goes on the public Service and the panic flag on the target.
        self.signals.touch(service.clone());
    }

    fn activator_in_path(&self, service: &ServiceId) -> bool {
        self.activators.in_path(service)
    }

    fn activators_ready(&self) -> bool {
        // Without a managed request path there is no activator to route through: serve mode.
        self.manage_request_path && self.activators.any_ready()
    }
}

/// What the replicas reconciliation reads.
pub(crate) struct ScaleContext<'a> {
    /// The API server and what is reported.
    pub context: &'a Context,
    /// Whether this replica may act.
    pub signals: &'a Signals,
    /// Recent queued requests hold scale-downs.
    pub activators: &'a Activators,
    /// The decisions and the reasons to write.
    pub autoscaler: &'a Autoscaler,
}

/// Records how long after the decision to go to `desired` replicas the scale patch was accepted.
fn observe_patch_latency(context: &Context, autoscaler: &Autoscaler, id: &ServiceId, desired: u32) {
    let decided = autoscaler
        .decisions(id)
        .and_then(|d| d.into_iter().rev().find(|r| r.changed && r.desired == desired).map(|r| r.unix_ms));
    if let Some(decided) = decided {
        let took = Duration::from_millis(crate::engine::controller::unix_ms_now().saturating_sub(decided));
        let labels = KubeMetrics::labels(id);
        context.metrics.scale_patch.get_or_create(&labels).observe(took.as_secs_f64());
    }
}

/// The writer of `spec.replicas` other than ebb that wrote it after `after`, from `managedFields`, if the
/// server recorded one. Entries have whole seconds, so only one in a later second than `after` counts: an API
/// server before 1.22 does not record writes of the scale subresource at all, and the newest entry with
/// `f:replicas` is then the Deployment's creator, not whoever just scaled it.
pub fn replicas_writer(writers: &[ReplicasWriter], after: Timestamp) -> Option<String> {
    let after_second = after.as_second();
    (writers.iter())
        .filter(|w| w.manager != CONTROLLER_NAME)
        .filter(|w| w.time.is_some_and(|t| t.as_second() > after_second))
        .max_by_key(|w| w.time)
        .map(|w| w.manager.clone())
}

/// Notes `spec.replicas` as the watch shows it; when it changed to a value this replica did not write while
/// it leads, another writer did: a Warning Event says who fights whom.
pub(crate) fn observe_replicas(
    ctx: &ScaleContext<'_>,
    id: &ServiceId,
    state: &mut ServiceState,
    target: &Target,
) {
    let replicas = target.scale.replicas;
    let previous = state.seen_replicas.replace(replicas);
    let Some(previous) = previous else {
        state.seen_replicas_at = Timestamp::now();
        return;
    };
    let previous_seen_at = state.seen_replicas_at;
    if previous != replicas {
        state.seen_replicas_at = Timestamp::now();
    }
    if previous == replicas || state.last_written == Some(replicas) || !ctx.signals.owns(id) || !state.valid {
        return;
    }
    let (context, autoscaler) = (ctx.context, ctx.autoscaler);
    let Some(status) = autoscaler.status_of(id) else { return };
    if status.paused || status.desired == replicas {
        return;
    }
    let writer = replicas_writer(&target.replicas_writers, previous_seen_at).map_or_else(
        || "a writer the API server did not record (kubectl scale, an HPA or a GitOps tool)".to_owned(),
        |m| format!("{m:?}"),
    );
    context.metrics.external_changes.get_or_create(&KubeMetrics::labels(id)).inc();
    let kind = target.kind_name();
    context.events.warning(
        target.reference(),
        "ReplicasOverridden",
        format!(
            "spec.replicas changed from {previous} to {replicas} by {writer}, not by ebb; ebb autoscales this \
             {kind} and sets replicas back to {}. To let another writer own replicas, set \
             ebb.dev/paused: \"true\" on the {kind}.",
            status.desired
        ),
    );
}

/// The leader's pass for one service: replicas, then the status annotations.
pub(crate) async fn reconcile(
    ctx: &ScaleContext<'_>,
    id: &ServiceId,
    state: &mut ServiceState,
    target: &Target,
    status: &ServiceStatus,
    pods: &[Arc<WatchedPod>],
) {
    if status.paused {
        return;
    }
    let (context, autoscaler) = (ctx.context, ctx.autoscaler);
    let api = target.api(&context.client);
    let observed = target.scale.replicas;
    let desired = status.desired;
    let reason = || {
        autoscaler
            .decisions(id)
            .and_then(|d| d.into_iter().rev().find(|r| r.changed).map(|r| r.reason.to_string()))
            .unwrap_or_else(|| status.last_reason.clone())
    };
    if observed != desired && state.deployment_writes.ready() {
        let mut hold = None;
        if desired < observed {
            let queued = ctx.activators.queued_within(id, QUEUED_HOLD);
            if !context.health.reachable() {
                hold = Some(("api_unreachable", "the API server is unreachable"));
            } else if queued {
                hold = Some(("activator_queued", "requests are queued in an activator"));
            }
        }
        if let Some((reason, why)) = hold {
            context.metrics.scale_downs_held.get_or_create(&KubeMetrics::held_labels(id, reason)).inc();
            tracing::info!(service = %id, observed, desired, "scale-down held: {why}");
        } else {
            if desired < observed {
                mark_deletion_costs(context, id, pods).await;
            }
            let patch = json!({"spec": {"replicas": desired}});
            match api.patch_scale(&id.name, &patch_params(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    state.deployment_writes.succeeded(&context.health);
                    state.last_written = Some(desired);
                    observe_patch_latency(context, autoscaler, id, desired);
                    let reason = reason();
                    context.metrics.scale_changes.get_or_create(&KubeMetrics::labels(id)).inc();
                    context.events.normal(
                        target.reference(),
                        "Scaled",
                        format!("replicas {observed} -> {desired}: {reason}"),
                    );
                    state.reason_pending = Some(reason);
                }
                Err(err) => {
                    state.deployment_writes.failed(&context.health, &err);
                    tracing::warn!(service = %id, "scale to {desired} failed (retrying with backoff): {err}");
                    return;
                }
            }
        }
    } else if observed != desired {
        tracing::debug!(service = %id, observed, desired, "scale change waits out the backoff of a failed write");
    }
    let current = target.annotations();
    let reason = state.reason_pending.clone().or_else(|| (!current.contains_key(STATUS_REASON)).then(reason));
    let mut patch = status::annotations_patch(current, desired, status.mode, status.panic, reason.as_deref());
    status::note_patch(&mut patch, current, STATUS_SIDECAR, state.sidecar_note.as_deref());
    status::note_patch(&mut patch, current, STATUS_STARTING_SINCE, state.starting_since.as_deref());
    if let Some(patch) = patch {
        match api.patch(&id.name, &patch_params(), &Patch::Merge(&patch)).await {
            Ok(_) => state.reason_pending = None,
            Err(err) => {
                state.deployment_writes.failed(&context.health, &err);
                tracing::warn!(service = %id, "cannot write the status annotations: {err}");
            }
        }
    }
}

/// Marks the ready pods with their in-flight work as deletion cost (least busy = cheapest), best effort.
async fn mark_deletion_costs(context: &Context, id: &ServiceId, pods: &[Arc<WatchedPod>]) {
    // All pods at once: a scale-down of many pods must not stall the leader's pass for 300 ms per pod.
    let scraper = Scraper::new(Duration::from_millis(300));
    let loads: Vec<(Arc<WatchedPod>, Option<f64>)> =
        futures::future::join_all(pods.iter().filter(|p| is_ready(p)).map(async |pod| {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip);
            let load = match ip {
                Some(ip) => scraper
                    .scrape(std::net::SocketAddr::new(ip, context.options.pod_stats_port))
                    .await
                    .ok()
                    .map(|s| s.average_concurrency),
                None => None,
            };
            (pod.clone(), load)
        }))
        .await;
    let changes = deletion_cost::changes(loads.iter().map(|(p, load)| {
        let current = p.annotations().get(ANNOTATION_POD_DELETION_COST);
        (p.name(), current, *load)
    }));
    let api: Api<PodWire> = Api::namespaced(context.client.clone(), &id.namespace);
    for (name, cost) in changes {
        let patch = json!({"metadata": {"annotations": {ANNOTATION_POD_DELETION_COST: cost.to_string()}}});
        if let Err(err) = api.patch(&name, &patch_params(), &Patch::Merge(&patch)).await {
            // Best effort: without it the ReplicaSet picks the pods to delete by its own rules.
            tracing::warn!(service = %id, pod = %name, "cannot mark the deletion cost: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::watched::replicas_writers;

    fn deployment(entries: &[(&str, &str, bool)]) -> k8s_openapi::api::apps::v1::Deployment {
        let managed: Vec<serde_json::Value> = entries
            .iter()
            .map(|(manager, time, replicas)| {
                let fields =
                    if *replicas { json!({"f:spec": {"f:replicas": {}}}) } else { json!({"f:metadata": {}}) };
                json!({"manager": manager, "operation": "Update", "time": time, "fieldsType": "FieldsV1",
                       "fieldsV1": fields})
            })
            .collect();
        serde_json::from_value(json!({"metadata": {"name": "d", "managedFields": managed}})).unwrap()
    }

    #[test]
    fn only_a_replicas_writer_after_the_previous_value_was_seen_is_named() {
        let seen: Timestamp = "2026-12-03T12:00:05.700Z".parse().unwrap();
        let d = deployment(&[
            ("creator", "2026-12-03T12:00:05Z", true),
            ("kubectl", "2026-12-03T12:00:09Z", true),
            ("labeller", "2026-12-03T12:00:10Z", false),
            (CONTROLLER_NAME, "2026-12-03T12:00:11Z", true),
        ]);
        assert_eq!(replicas_writer(&replicas_writers(&d.metadata), seen).as_deref(), Some("kubectl"));
        // A server that did not record the scale write: the creator's entry is older, so nobody is named,
        // also when it falls in the same second as the previous value was seen.
        let d = deployment(&[("creator", "2026-12-03T12:00:05Z", true)]);
        assert_eq!(replicas_writer(&replicas_writers(&d.metadata), seen), None);
    }
}
