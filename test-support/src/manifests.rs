//! A tiny kustomize for the tests: renders a kustomization of `manifests/` into its objects, and grants a
//! ServiceAccount of a test namespace the RBAC that `manifests/` gives an ebb component, so that the
//! manifests' RBAC is what the end-to-end tests exercise.
//!
//! Supported: `resources` (YAML files of one or more documents, and directories holding a
//! `kustomization.yaml`, recursively), `namespace`, and `configMapGenerator` entries made of `files` with
//! `generatorOptions` that turn the name hash off (and add labels and annotations). Any other kustomization
//! field is refused with an
//! error, so the manifests never mean more than these tests see. The `namespace` override does what
//! kustomize's does for the kinds ebb uses: it sets `metadata.namespace` on namespaced objects, renames the
//! `Namespace` objects, and moves the ServiceAccount subjects of (Cluster)RoleBindings that name a
//! ServiceAccount of the rendered set.

use std::path::Path;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};

use super::paths::in_repo;

/// Kinds without a namespace (those a kustomization of ebb might hold).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "GatewayClass",
    "IngressClass",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
];

/// The kustomization fields this renderer implements.
const SUPPORTED_FIELDS: &[&str] =
    &["apiVersion", "kind", "resources", "namespace", "configMapGenerator", "generatorOptions"];

/// Whether objects of `kind` live in a namespace.
pub fn is_namespaced(kind: &str) -> bool {
    !CLUSTER_SCOPED.contains(&kind)
}

/// The objects of the kustomization in `dir`, in the order of its `resources`.
pub fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let kustomization: Value =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: not valid YAML: {e}", path.display()))?;
    let fields = kustomization.as_object().ok_or_else(|| format!("{}: not a mapping", path.display()))?;
    if let Some(field) = fields.keys().find(|k| !SUPPORTED_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "{}: `{field}` is not supported by the tests' renderer (test-support/src/manifests.rs); implement it \
             there or do without it",
            path.display()
        ));
    }
    let mut objects = Vec::new();
    for resource in fields.get("resources").and_then(Value::as_array).into_iter().flatten() {
        let name =
            resource.as_str().ok_or_else(|| format!("{}: a resource is not a string", path.display()))?;
        let target = dir.join(name);
        if target.is_dir() {
            objects.extend(render(&target)?);
        } else {
            objects.extend(read_documents(&target)?);
        }
    }
    for generator in fields.get("configMapGenerator").and_then(Value::as_array).into_iter().flatten() {
        objects.push(generate_config_map(dir, generator, fields.get("generatorOptions"))?);
    }
    if let Some(namespace) = fields.get("namespace") {
        let namespace =
            namespace.as_str().ok_or_else(|| format!("{}: `namespace` is not a string", path.display()))?;
        set_namespace(&mut objects, namespace);
    }
    Ok(objects)
}

/// A `configMapGenerator` entry: a ConfigMap holding each of its `files` under the file's name.
fn generate_config_map(dir: &Path, generator: &Value, options: Option<&Value>) -> Result<Value, String> {
    let at = dir.join("kustomization.yaml").display().to_string();
    let name = generator["name"].as_str().ok_or_else(|| format!("{at}: a configMapGenerator has no name"))?;
    if let Some(field) =
        generator.as_object().into_iter().flatten().map(|(k, _)| k).find(|k| *k != "name" && *k != "files")
    {
        return Err(format!("{at}: configMapGenerator `{field}` is not supported by the tests' renderer"));
    }
    let options = options.cloned().unwrap_or(Value::Null);
    if options["disableNameSuffixHash"] != true {
        return Err(format!(
            "{at}: name hashes are not supported by the tests' renderer; set disableNameSuffixHash"
        ));
    }
    let mut data = serde_json::Map::new();
    for file in generator["files"].as_array().into_iter().flatten() {
        let file = file.as_str().ok_or_else(|| format!("{at}: a file is not a string"))?;
        let text = std::fs::read_to_string(dir.join(file)).map_err(|e| format!("{at}: {file}: {e}"))?;
        data.insert(file.to_owned(), json!(text));
    }
    let mut metadata = json!({"name": name});
    for field in ["labels", "annotations"] {
        if options[field].is_object() {
            metadata[field] = options[field].clone();
        }
    }
    Ok(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}))
}

/// [`render`], then the `namespace` override `namespace` on top (as an overlay would).
pub fn render_in(dir: &Path, namespace: &str) -> Result<Vec<Value>, String> {
    let mut objects = render(dir)?;
    set_namespace(&mut objects, namespace);
    Ok(objects)
}

/// Every non-empty YAML document of a file, as JSON values.
fn read_documents(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut objects = Vec::new();
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: not valid YAML: {e}", path.display()))?;
    for value in documents {
        if value.get("kind").and_then(Value::as_str).is_none() {
            return Err(format!("{}: a document has no kind", path.display()));
        }
        objects.push(value);
    }
    Ok(objects)
}

/// kustomize's `namespace` field, for the kinds ebb's manifests use.
fn set_namespace(objects: &mut [Value], namespace: &str) {
    let accounts: Vec<String> =
        objects.iter().filter(|o| kind(o) == "ServiceAccount").map(|o| name(o).to_owned()).collect();
    for object in objects.iter_mut() {
        let kind = kind(object).to_owned();
        if kind == "Namespace" {
            object["metadata"]["name"] = json!(namespace);
        } else if is_namespaced(&kind) {
            object["metadata"]["namespace"] = json!(namespace);
        }
        if kind == "RoleBinding" || kind == "ClusterRoleBinding" {
            for subject in object["subjects"].as_array_mut().into_iter().flatten() {
                let account = subject["kind"] == "ServiceAccount"
                    && subject["name"].as_str().is_some_and(|n| accounts.iter().any(|a| a == n));
                if account {
                    subject["namespace"] = json!(namespace);
                }
            }
        }
    }
}

/// An object's kind.
pub fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

/// An object's name.
pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> Option<&'a Value> {
    objects.iter().find(|o| kind(o) == kind_ && name(o) == name_)
}

/// The objects as one multi-document YAML stream (for `ebb check` and `kubectl`-like tools).
pub fn to_yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| serde_saphyr::to_string(o).expect("YAML from JSON"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Creates, with `admin`, the RBAC that `manifests/` gives the component whose ServiceAccount is `account`
/// (`ebb-autoscaler` or `ebb-activator`), in test namespace `namespace`: the ServiceAccount, its Role and
/// RoleBinding there, and its ClusterRole and ClusterRoleBinding renamed `NAME-NAMESPACE` (they are
/// cluster-wide; the suffix keeps tests apart). Returns the objects created.
pub async fn grant(admin: &Client, namespace: &str, account: &str) -> Vec<Value> {
    grant_from(admin, namespace, account, "manifests").await
}

/// [`grant`] from the kustomization in `dir` (relative to the repository), such as
/// `manifests/scale-targets/statefulsets`: the ServiceAccount when `dir` has it (else it must exist), and
/// the roles `dir` binds to it.
pub async fn grant_from(admin: &Client, namespace: &str, account: &str, dir: &str) -> Vec<Value> {
    let mut objects = render_in(&in_repo(dir), namespace).unwrap_or_else(|e| panic!("render {dir}: {e}"));
    // A folder without the ServiceAccount binds the installed one: it is in the test namespace here.
    for object in objects.iter_mut().filter(|o| kind(o).ends_with("RoleBinding")) {
        for subject in object["subjects"].as_array_mut().into_iter().flatten() {
            if subject["kind"] == "ServiceAccount" && subject["name"] == account {
                subject["namespace"] = json!(namespace);
            }
        }
    }
    let suffixed = |name: &str| format!("{name}-{namespace}");
    let binds_account = |o: &Value| {
        o["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == account)
    };
    let mut created = Vec::new();
    let pp = PostParams::default();
    if let Some(service_account) = find(&objects, "ServiceAccount", account) {
        let service_account: ServiceAccount = serde_json::from_value(service_account.clone()).unwrap();
        match Api::<ServiceAccount>::namespaced(admin.clone(), namespace).create(&pp, &service_account).await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => panic!("creating ServiceAccount {namespace}/{account}: {e}"),
        }
        created.push(serde_json::to_value(&service_account).unwrap());
    }
    for binding in objects.iter().filter(|o| binds_account(o)) {
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        match kind(binding) {
            "ClusterRoleBinding" => {
                let mut role = find(&objects, "ClusterRole", role_name)
                    .unwrap_or_else(|| panic!("{dir} has no ClusterRole {role_name}"))
                    .clone();
                role["metadata"]["name"] = json!(suffixed(role_name));
                let mut binding = binding.clone();
                binding["metadata"]["name"] = json!(suffixed(name(&binding)));
                binding["roleRef"]["name"] = json!(suffixed(role_name));
                let role: ClusterRole = serde_json::from_value(role).unwrap();
                let binding: ClusterRoleBinding = serde_json::from_value(binding).unwrap();
                Api::<ClusterRole>::all(admin.clone()).create(&pp, &role).await.expect("create ClusterRole");
                Api::<ClusterRoleBinding>::all(admin.clone())
                    .create(&pp, &binding)
                    .await
                    .expect("create ClusterRoleBinding");
                created.push(serde_json::to_value(&role).unwrap());
                created.push(serde_json::to_value(&binding).unwrap());
            }
            "RoleBinding" => {
                let role = find(&objects, "Role", role_name)
                    .unwrap_or_else(|| panic!("{dir} has no Role {role_name}"));
                let role: Role = serde_json::from_value(role.clone()).unwrap();
                let binding: RoleBinding = serde_json::from_value(binding.clone()).unwrap();
                Api::<Role>::namespaced(admin.clone(), namespace)
                    .create(&pp, &role)
                    .await
                    .expect("create Role");
                Api::<RoleBinding>::namespaced(admin.clone(), namespace)
                    .create(&pp, &binding)
                    .await
                    .expect("create RoleBinding");
                created.push(serde_json::to_value(&role).unwrap());
                created.push(serde_json::to_value(&binding).unwrap());
            }
            _ => {}
        }
    }
    created
}
