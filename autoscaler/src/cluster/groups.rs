//! Role groups in the cluster: the Deployments labelled `ebb.dev/group`, sorted into groups as
//! [`ebb_config::groups`] judges them, with what the pass needs of each member (its replicas and its ready
//! pods, from the Deployment's status). A bad group is reported on every member (a Warning Event and the
//! `status.ebb.dev/group` annotation, which `ebb status` shows) and its entry is left alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ebb_config::ServiceId;
use ebb_config::groups::{BadGroup, LABEL_GROUP, MemberMeta, resolve_groups};
use ebb_config::names::STATUS_GROUP;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::Patch;
use serde_json::json;

use super::cache::Cache;
use super::options::patch_params;
use super::state::{Context, Signals};
use super::stores::Stores;
use super::targets::Target;
use super::watched::{DeploymentWire, WatchedDeployment};

/// One member of a valid group other than the entry, as the watch shows it.
#[derive(Debug, Clone)]
pub(crate) struct MemberState {
    /// The Deployment.
    pub deployment: Arc<WatchedDeployment>,
    /// Its pods per instance.
    pub pods: u32,
    /// `spec.replicas`.
    pub replicas: u32,
    /// `status.readyReplicas`: its ready pods, as its ReplicaSets count them.
    pub ready: u32,
}

impl MemberState {
    /// Its name.
    pub fn name(&self) -> String {
        self.deployment.name().to_owned()
    }
}

/// A valid group, keyed by its entry's service.
#[derive(Debug, Clone)]
pub(crate) struct GroupState {
    /// The group's name.
    pub name: String,
    /// The members other than the entry.
    pub others: Vec<MemberState>,
}

impl GroupState {
    /// How many instances every other member has its pods ready for (unbounded without other members).
    pub fn whole_ready(&self) -> u32 {
        self.others.iter().map(|m| m.ready / m.pods).min().unwrap_or(u32::MAX)
    }
}

/// Every group the watch shows.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    /// The valid groups, by their entry's service.
    pub valid: HashMap<ServiceId, GroupState>,
    /// Entries of bad groups: ebb leaves these services alone.
    pub refused: HashSet<ServiceId>,
    /// Each member of a bad group with what is wrong.
    pub problems: Vec<(Arc<WatchedDeployment>, String)>,
    /// Every member of every group, with what its `status.ebb.dev/group` should say, and the key whose
    /// owner writes it ([`group_key`]).
    notes: Vec<(ServiceId, Arc<WatchedDeployment>, Option<String>)>,
}

impl Groups {
    /// Whether ebb leaves `target`'s service alone for its group: the entry of a bad group, or a Deployment
    /// labelled `ebb.dev/group` that the group watch has not shown yet (the two watches are not in step, and
    /// acting on it as a lone service would scale it without its group).
    pub fn leaves_alone(&self, target: &Target) -> bool {
        let id = target.id();
        self.refused.contains(&id)
            || (target.kind.is_deployments()
                && target.labels().contains_key(LABEL_GROUP)
                && !self.valid.contains_key(&id))
    }
}

/// Sorts the Deployments labelled `ebb.dev/group` into groups.
pub(crate) fn observe(stores: &Stores) -> Groups {
    let deployments: Vec<Arc<WatchedDeployment>> = stores.groups.iter().flat_map(Cache::state).collect();
    let maps: Vec<_> = deployments.iter().map(|d| (d.labels().to_map(), d.annotations().to_map())).collect();
    let metas = deployments.iter().zip(&maps).map(|(d, (labels, annotations))| MemberMeta {
        namespace: d.namespace(),
        name: d.name(),
        labels,
        annotations,
    });
    let (good, bad) = resolve_groups(metas);
    let find = |namespace: &str, name: &str| {
        deployments.iter().find(|d| d.namespace() == namespace && d.name() == name).cloned()
    };
    let mut groups = Groups::default();
    for group in good {
        let others = group
            .others
            .iter()
            .filter_map(|member| {
                let deployment = find(&group.namespace, &member.name)?;
                let replicas = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
                let ready =
                    deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0).max(0) as u32;
                Some(MemberState { deployment, pods: member.pods, replicas, ready })
            })
            .collect();
        let members = group.others.iter().map(|m| m.name.as_str()).chain([group.entry.as_str()]);
        let key = group_key(&group.namespace, &group.name);
        groups
            .notes
            .extend(members.filter_map(|name| Some((key.clone(), find(&group.namespace, name)?, None))));
        let id = ServiceId::new(group.namespace.clone(), group.entry.clone());
        groups.valid.insert(id, GroupState { name: group.name, others });
    }
    for group in bad {
        refuse(&mut groups, &group, &find);
    }
    groups
}

fn refuse(
    groups: &mut Groups,
    group: &BadGroup,
    find: &impl Fn(&str, &str) -> Option<Arc<WatchedDeployment>>,
) {
    let message = group.message();
    for entry in &group.entries {
        groups.refused.insert(ServiceId::new(group.namespace.clone(), entry.clone()));
    }
    let key = group_key(&group.namespace, &group.name);
    for deployment in group.members.iter().filter_map(|name| find(&group.namespace, name)) {
        groups.problems.push((deployment.clone(), message.clone()));
        groups.notes.push((key.clone(), deployment, Some(message.clone())));
    }
}

/// A Warning Event (deduplicated) on every member of a bad group.
pub(crate) fn report(context: &Context, groups: &Groups) {
    for (deployment, message) in &groups.problems {
        context.events.warning(deployment.meta.reference::<Deployment>(), "InvalidGroup", message.clone());
    }
}

/// The key that picks which replica writes a group's notes (whoever owns it, as a service name would be
/// owned): a group without an entry has no service to go by.
fn group_key(namespace: &str, group: &str) -> ServiceId {
    ServiceId::new(namespace, format!("{LABEL_GROUP}={group}"))
}

/// `status.ebb.dev/group` on every member says what is wrong with its group, and goes once the group is
/// valid; written by the replica that owns the group's key, only when it differs.
pub(crate) async fn write_notes(context: &Context, signals: &Signals, groups: &Groups) {
    for (key, deployment, note) in &groups.notes {
        if !signals.owns(key) {
            continue;
        }
        let current = deployment.annotations().get(STATUS_GROUP);
        if current == note.as_deref() {
            continue;
        }
        let (namespace, name) = (deployment.namespace(), deployment.name());
        let api: Api<DeploymentWire> = Api::namespaced(context.client.clone(), namespace);
        let patch = json!({"metadata": {"annotations": {STATUS_GROUP: note}}});
        if let Err(err) = api.patch(name, &patch_params(), &Patch::Merge(&patch)).await {
            tracing::warn!(deployment = %name, %namespace, "cannot write {STATUS_GROUP}: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(ready: u32, pods: u32) -> MemberState {
        MemberState { deployment: Arc::new(WatchedDeployment::default()), pods, replicas: 0, ready }
    }

    #[test]
    fn an_instance_is_whole_when_every_member_has_its_share_ready() {
        let group = |others| GroupState { name: "llm".into(), others };
        assert_eq!(group(vec![member(1, 2)]).whole_ready(), 0, "one prefill pod of two is no instance");
        assert_eq!(group(vec![member(3, 2), member(2, 1)]).whole_ready(), 1);
        assert_eq!(group(vec![member(4, 2), member(5, 1)]).whole_ready(), 2);
        assert_eq!(group(Vec::new()).whole_ready(), u32::MAX, "an entry alone is always whole");
    }
}
