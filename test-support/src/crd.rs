//! Custom kinds that serve the `scale` subresource, as tests' stand-ins for a workload controller's CRD (a
//! KubeInfer-style inference service, a LeaderWorkerSet): the definition, its API resource, and installing it.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// A namespaced kind of version `v1` with `spec.replicas`, `status.replicas` and the pods' selector at
/// `selector_path`, served through the `scale` subresource; any other field is kept as written.
#[derive(Debug, Clone, Copy)]
pub struct ScalableKind {
    /// The API group.
    pub group: &'static str,
    /// The kind (`InferenceService`).
    pub kind: &'static str,
    /// The plural resource name (`inferenceservices`).
    pub plural: &'static str,
    /// Where the scale subresource reads the pods' selector (`.status.selector`).
    pub selector_path: &'static str,
}

impl ScalableKind {
    /// Its CustomResourceDefinition.
    pub fn definition(&self) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{}.{}", self.plural, self.group)},
            "spec": {
                "group": self.group,
                "scope": "Namespaced",
                "names": {
                    "plural": self.plural,
                    "singular": self.kind.to_ascii_lowercase(),
                    "kind": self.kind,
                },
                "versions": [{
                    "name": "v1",
                    "served": true,
                    "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": self.selector_path,
                        },
                    },
                }],
            },
        })
    }

    /// Its objects' API resource.
    pub fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(self.group, "v1", self.kind), self.plural)
    }

    /// Creates the definition (one there already, from another test, is fine). Its objects are served a
    /// moment later: create the first with a wait.
    pub async fn install(&self, admin: &Client) {
        let crds: Api<DynamicObject> = Api::all_with(
            admin.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
                "customresourcedefinitions",
            ),
        );
        let definition: DynamicObject = serde_json::from_value(self.definition()).unwrap();
        match crds.create(&PostParams::default(), &definition).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create the CRD {}.{}: {e}", self.plural, self.group),
        }
    }
}
