//! Custom kinds that serve the `scale` subresource, as tests' stand-ins for a workload controller's CRD (a
//! KubeInfer-style inference service, a LeaderWorkerSet): the definition, its API resource, and installing it.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
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

    /// One round of a test's stand-in for this kind's controller on object `name`: its `spec`, and its pods as
    /// `pod_selector` picks them.
    pub async fn round(
        &self,
        admin: &Client,
        ns: &str,
        name: &str,
        pod_selector: &str,
    ) -> Result<Round, String> {
        let objects: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns, &self.resource());
        let object = objects.get(name).await.map_err(|e| e.to_string())?;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
        let existing =
            pods.list(&ListParams::default().labels(pod_selector)).await.map_err(|e| e.to_string())?;
        Ok(Round { name: name.to_owned(), objects, pods, object, existing: existing.items })
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

/// What every stand-in controller does in a round: read the object and its pods, create the missing pods,
/// delete the surplus ones, write the status.
pub struct Round {
    name: String,
    objects: Api<DynamicObject>,
    pods: Api<Pod>,
    /// The object as read at the start of the round.
    pub object: DynamicObject,
    /// Its pods as listed at the start of the round.
    pub existing: Vec<Pod>,
}

impl Round {
    /// `spec.replicas` (0 when unset).
    pub fn replicas(&self) -> i64 {
        self.object.data["spec"]["replicas"].as_i64().unwrap_or(0)
    }

    /// Whether a pod named `name` was listed.
    pub fn has_pod(&self, name: &str) -> bool {
        self.existing.iter().any(|p| p.metadata.name.as_deref() == Some(name))
    }

    /// Creates `pod`; one of its name still being deleted is created on a later round.
    pub async fn create(&self, pod: &Pod) -> Result<(), String> {
        match self.pods.create(&PostParams::default(), pod).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Deletes the listed pods that `keep` refuses and that are not being deleted already.
    pub async fn delete_unless(&self, keep: impl Fn(&Pod) -> bool) -> Result<(), String> {
        for pod in &self.existing {
            if !keep(pod) && pod.metadata.deletion_timestamp.is_none() {
                let name = pod.metadata.name.clone().unwrap_or_default();
                self.pods.delete(&name, &DeleteParams::default()).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Merges `status` into the object's status.
    pub async fn write_status(&self, status: Value) -> Result<(), String> {
        let patch = json!({"status": status});
        self.objects
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
