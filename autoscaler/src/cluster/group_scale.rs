//! Replicas of a role group (leader only): the engine decides in instances on the entry's load; every
//! other member goes to `instances x its pods`, and the entry follows only as far as every other member has
//! its share ready. The entry's pods are the only ones that take traffic (the activator probes them and
//! routes the moment one answers), so an entry pod that exists only for whole instances is how requests held
//! at zero are released only when the whole instance is ready. Going down, the entry goes first (through
//! [`scale::reconcile`], with its holds) and the others follow once it is lower.

use std::sync::Arc;

use ebb_config::ServiceId;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::Patch;
use serde_json::json;

use super::groups::{GroupState, MemberState};
use super::options::patch_params;
use super::scale::{self, ScaleContext};
use super::service_state::ServiceState;
use super::targets::Target;
use super::watched::{DeploymentWire, WatchedPod};
use crate::engine::ServiceStatus;

/// The leader's pass for one service: [`scale::reconcile`] alone, or with its group.
pub(crate) async fn reconcile(
    ctx: &ScaleContext<'_>,
    (id, state): (&ServiceId, &mut ServiceState),
    target: &Target,
    status: &ServiceStatus,
    pods: &[Arc<WatchedPod>],
    group: Option<&GroupState>,
) {
    let Some(group) = group else { return scale::reconcile(ctx, id, state, target, status, pods).await };
    if status.paused {
        return;
    }
    let observed = target.scale.replicas;
    let entry_to = entry_replicas(status.desired, observed, group.whole_ready());
    let entry_status = ServiceStatus { desired: entry_to, ..status.clone() };
    scale::reconcile(ctx, id, state, target, &entry_status, pods).await;
    let entry_now = if state.last_written == Some(entry_to) { entry_to } else { observed };
    let instances = member_instances(status.desired, entry_now);
    for member in &group.others {
        scale_member(ctx, state, group, member, instances).await;
    }
}

/// The entry's replicas: down at once, up only as far as whole instances are ready (never lowered for a
/// member pod that is not ready: a restart is not a scale-down).
fn entry_replicas(desired: u32, observed: u32, whole: u32) -> u32 {
    if desired <= observed { desired } else { desired.min(whole.max(observed)) }
}

/// The instances the other members run: up at once with the decision, down once the entry is down.
fn member_instances(desired: u32, entry_now: u32) -> u32 {
    desired.max(entry_now)
}

/// Sets one member to `instances x its pods` through its scale subresource, when it differs.
async fn scale_member(
    ctx: &ScaleContext<'_>,
    state: &mut ServiceState,
    group: &GroupState,
    member: &MemberState,
    instances: u32,
) {
    let want = instances.saturating_mul(member.pods);
    let name = member.name();
    // Written already and the watch has not caught up: not again (each write is a Normal Event).
    if member.replicas == want || state.group_written.get(&name) == Some(&(member.replicas, want)) {
        return;
    }
    if !state.deployment_writes.ready() {
        return;
    }
    let context = ctx.context;
    let namespace = member.deployment.namespace();
    let api: Api<DeploymentWire> = Api::namespaced(context.client.clone(), namespace);
    let patch = json!({"spec": {"replicas": want}});
    match api.patch_scale(&name, &patch_params(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            state.deployment_writes.succeeded(&context.health);
            state.group_written.insert(name, (member.replicas, want));
            context.events.normal(
                member.deployment.meta.reference::<Deployment>(),
                "Scaled",
                format!(
                    "replicas {} -> {want}: group {:?} at {instances} instance(s), {} pod(s) each",
                    member.replicas, group.name, member.pods
                ),
            );
        }
        Err(err) => {
            state.deployment_writes.failed(&context.health, &err);
            tracing::warn!(member = %name, %namespace, "scale to {want} failed (retrying with backoff): {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_waits_for_whole_instances_going_up_and_leads_going_down() {
        // From zero: the prefill pods start first; the decode pod only once one instance is whole.
        assert_eq!(entry_replicas(1, 0, 0), 0);
        assert_eq!(entry_replicas(1, 0, 1), 1);
        // Up from 1 to 2: the second entry pod waits for the second whole instance.
        assert_eq!(entry_replicas(2, 1, 1), 1);
        assert_eq!(entry_replicas(2, 1, 2), 2);
        assert_eq!(entry_replicas(3, 1, 2), 2);
        // A member pod restarting does not take an entry pod away.
        assert_eq!(entry_replicas(2, 2, 0), 2);
        // Down: at once, whatever is ready.
        assert_eq!(entry_replicas(0, 2, 2), 0);
        assert_eq!(entry_replicas(1, 2, 0), 1);
    }

    #[test]
    fn the_other_members_go_up_with_the_decision_and_down_after_the_entry() {
        assert_eq!(member_instances(1, 0), 1, "prefill starts at once on a wake-up");
        assert_eq!(member_instances(0, 2), 2, "the entry is not down yet (a hold): the others stay");
        assert_eq!(member_instances(0, 0), 0);
        assert_eq!(member_instances(2, 1), 2);
    }
}
