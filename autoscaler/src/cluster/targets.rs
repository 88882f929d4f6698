//! A scale target as the pass sees it, whatever its kind: a Deployment from its typed watch, or an object of
//! another kind (`scale-target-kinds`) with what its `scale` subresource reported. Everything the pass does
//! to a service's object (Events, the status annotations, the replicas, the public Service's owner) goes
//! through this view, so no other module knows which kind it is.

use std::collections::BTreeMap;

use ebb_config::ServiceId;
use ebb_config::keys::{self, ANNOTATION_KEYS};
use ebb_config::targets::TargetKind;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ApiResource, DynamicObject};
use kube::{Api, Client};
use serde::Deserialize;

use super::selector::Selector;
use super::watched::{ReplicasWriter, WatchedDeployment, WatchedTemplate, replicas_writers};

/// No labels or annotations.
static NONE: BTreeMap<String, String> = BTreeMap::new();

/// What the pass reads of a target's pod template: read once when the target is made, rather than the
/// template copied with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TemplateView {
    /// The template's annotations (ebb's belong on the target itself).
    pub annotations: Option<BTreeMap<String, String>>,
    /// Whether the template carries the queue-proxy (`ebb inject`'s), rather than the admission webhook
    /// adding it to each pod when it is created.
    pub has_queue_proxy: bool,
}

impl TemplateView {
    fn of(template: &WatchedTemplate) -> Self {
        Self {
            annotations: template.metadata.as_ref().and_then(|m| m.annotations.clone()),
            has_queue_proxy: template.spec.as_ref().is_some_and(|s| s.queue_proxy().is_some()),
        }
    }
}

/// What a `scale` subresource said of an object: its replicas and, when it reports one, the selector of its
/// pods.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScaleView {
    /// `spec.replicas`.
    pub replicas: u32,
    /// `status.selector`, parsed; `None` when the kind reports none (its pods are then found by the
    /// `ebb.dev/service` label alone).
    pub selector: Option<Selector>,
}

/// One object ebb autoscales.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Its kind, as `scale-target-kinds` names it.
    pub kind: TargetKind,
    /// Its API resource (version, kind, plural).
    pub resource: ApiResource,
    /// Its metadata (labels, annotations, managed fields, uid).
    pub meta: ObjectMeta,
    /// Replicas and pod selector, from the scale subresource (a Deployment's own spec says the same).
    pub scale: ScaleView,
    /// The pod template of the role that receives traffic, where the kind is known to have one.
    pub template: Option<TemplateView>,
    /// Who wrote `spec.replicas`, from its managed fields.
    pub replicas_writers: Vec<ReplicasWriter>,
}

impl Target {
    /// A Deployment from the typed watch: its spec says what its scale subresource would.
    pub fn from_deployment(deployment: &WatchedDeployment) -> Self {
        let spec = deployment.spec.as_ref();
        Self {
            kind: TargetKind::deployments(),
            resource: ApiResource::erase::<Deployment>(&()),
            // The pairs kept apart go back into the metadata every reader of a target knows.
            meta: ObjectMeta {
                name: Some(deployment.name().to_owned()),
                namespace: Some(deployment.namespace().to_owned()),
                uid: deployment.meta.uid.as_deref().map(str::to_owned),
                labels: Some(deployment.labels().to_map()),
                annotations: Some(deployment.annotations().to_map()),
                ..ObjectMeta::default()
            },
            scale: ScaleView {
                replicas: spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as u32,
                selector: spec.map(|s| s.selector.clone()),
            },
            template: spec.map(|s| TemplateView::of(&s.template)),
            replicas_writers: deployment.replicas_writers.clone(),
        }
    }

    /// An object of another kind, with what its scale subresource said.
    pub fn from_object(
        kind: TargetKind,
        resource: ApiResource,
        object: &DynamicObject,
        scale: ScaleView,
    ) -> Self {
        let template = kind.entry_templates().and_then(|paths| {
            paths.iter().find_map(|path| {
                let value = path.iter().try_fold(&object.data, |v, key| v.get(key))?;
                let template = WatchedTemplate::deserialize(value).ok()?;
                Some(TemplateView::of(&template))
            })
        });
        let replicas_writers = replicas_writers(&object.metadata);
        Self { kind, resource, meta: object.metadata.clone(), scale, template, replicas_writers }
    }

    /// The service it is: its namespace and name.
    pub fn id(&self) -> ServiceId {
        ServiceId::new(self.meta.namespace.clone().unwrap_or_default(), self.name())
    }

    /// Its name.
    pub fn name(&self) -> String {
        self.meta.name.clone().unwrap_or_default()
    }

    /// Its labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.meta.labels.as_ref().unwrap_or(&NONE)
    }

    /// Its annotations.
    pub fn annotations(&self) -> &BTreeMap<String, String> {
        self.meta.annotations.as_ref().unwrap_or(&NONE)
    }

    /// Its kind's name (`StatefulSet`), for messages.
    pub fn kind_name(&self) -> &str {
        &self.resource.kind
    }

    /// How to have its pods created again (their sidecar is made at creation), `purpose` after the verb:
    /// `kubectl rollout restart` for the kinds that have it, else deleting the pods so that the kind's
    /// controller makes new ones.
    pub fn restart_hint(&self, purpose: &str) -> String {
        let (ns, name, kind) =
            (self.meta.namespace.as_deref().unwrap_or_default(), self.name(), &self.resource.kind);
        if self.resource.group == "apps" {
            let lower = kind.to_ascii_lowercase();
            format!("restart the {kind}{purpose}: kubectl -n {ns} rollout restart {lower}/{name}")
        } else {
            format!(
                "delete the pods of {kind} {ns}/{name}{purpose}, so that its controller creates them again"
            )
        }
    }

    /// The labels and annotations its public Service carries for the activator: none for a Deployment
    /// (the activator watches Deployments itself); for another kind, its kind (the Service's
    /// `ebb.dev/target-kind` label) and a copy of
    /// the target's ebb annotations (the documented keys, aliases included).
    pub fn published_settings(&self) -> Option<(String, BTreeMap<String, String>)> {
        if self.kind.is_deployments() {
            return None;
        }
        let annotations = self
            .annotations()
            .iter()
            .filter(|(k, _)| keys::lookup(ANNOTATION_KEYS, k).is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some((self.resource.kind.clone(), annotations))
    }

    /// The reference Events are about.
    pub fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.resource.api_version.clone()),
            kind: Some(self.resource.kind.clone()),
            name: self.meta.name.clone(),
            namespace: self.meta.namespace.clone(),
            uid: self.meta.uid.clone(),
            resource_version: self.meta.resource_version.clone(),
            ..Default::default()
        }
    }

    /// The owner reference of what ebb creates for it (the public Service), so it goes when the target goes.
    pub fn owner_reference(&self) -> Option<OwnerReference> {
        Some(OwnerReference {
            api_version: self.resource.api_version.clone(),
            kind: self.resource.kind.clone(),
            name: self.meta.name.clone()?,
            uid: self.meta.uid.clone()?,
            controller: Some(true),
            ..Default::default()
        })
    }

    /// Its API, for the scale subresource and the status annotations.
    pub fn api(&self, client: &Client) -> Api<DynamicObject> {
        Api::namespaced_with(
            client.clone(),
            self.meta.namespace.as_deref().unwrap_or_default(),
            &self.resource,
        )
    }
}

/// Two targets of different kinds with one name in one namespace would be one service (one public
/// Service, one set of decisions): the first kind in `scale-target-kinds` order keeps it; the others are
/// returned to be reported.
pub(crate) fn one_per_name(
    mut targets: Vec<Target>,
    order: &[TargetKind],
) -> (Vec<Target>, Vec<(Target, String)>) {
    let rank = |k: &TargetKind| order.iter().position(|o| o == k).unwrap_or(usize::MAX);
    targets.sort_by_key(|t| rank(&t.kind));
    let mut seen: BTreeMap<ServiceId, String> = BTreeMap::new();
    let (mut kept, mut clashes) = (Vec::new(), Vec::new());
    for target in targets {
        match seen.get(&target.id()) {
            Some(winner) => {
                let why = format!(
                    "{} {} has the name of {winner} {}, which ebb autoscales as service {}; ebb leaves this one \
                     alone: rename one of them",
                    target.kind_name(),
                    target.name(),
                    target.name(),
                    target.id()
                );
                clashes.push((target, why));
            }
            None => {
                seen.insert(target.id(), target.kind_name().to_owned());
                kept.push(target);
            }
        }
    }
    (kept, clashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_is_a_target_with_its_own_selector_and_replicas() {
        let d: WatchedDeployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat", "namespace": "m", "uid": "u1", "labels": {"ebb.dev/service": "chat"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "chat"}},
                     "template": {"metadata": {"labels": {"app": "chat"}}}},
        }))
        .unwrap();
        let t = Target::from_deployment(&d);
        assert_eq!(t.scale.replicas, 2);
        let app = BTreeMap::from([("app".to_owned(), "chat".to_owned())]);
        assert!(t.scale.selector.as_ref().unwrap().matches(|k| app.get(k).map(String::as_str)));
        assert_eq!(t.labels().get("ebb.dev/service").map(String::as_str), Some("chat"), "labels kept apart");
        assert_eq!(t.reference().kind.as_deref(), Some("Deployment"));
        assert_eq!(t.owner_reference().unwrap().api_version, "apps/v1");
        assert_eq!(t.id(), ServiceId::new("m", "chat"));
    }

    #[test]
    fn a_name_taken_by_two_kinds_is_kept_by_the_first_listed() {
        let object = |name: &str| DynamicObject {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("m".into()),
                ..Default::default()
            },
            data: serde_json::json!({}),
        };
        let gvk = kube::api::GroupVersionKind::gvk("apps", "v1", "StatefulSet");
        let sts = ApiResource::from_gvk_with_plural(&gvk, "statefulsets");
        let kind = TargetKind::parse("statefulsets.apps").unwrap();
        let scale = ScaleView { replicas: 0, selector: None };
        let d: WatchedDeployment = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "chat", "namespace": "m"}, "spec": {"selector": {}, "template": {}}}),
        )
        .unwrap();
        let targets = vec![
            Target::from_object(kind.clone(), sts.clone(), &object("chat"), scale.clone()),
            Target::from_deployment(&d),
            Target::from_object(kind.clone(), sts, &object("other"), scale),
        ];
        let (kept, clashes) = one_per_name(targets, &[TargetKind::deployments(), kind]);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].kind_name(), "Deployment");
        assert_eq!(clashes.len(), 1);
        assert!(
            clashes[0].1.contains("StatefulSet chat has the name of Deployment chat"),
            "{}",
            clashes[0].1
        );
    }
}
