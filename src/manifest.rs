//! Reading Kubernetes objects from multi-document YAML: only the fields ebb's commands look at.

use std::collections::BTreeMap;
use std::fmt;

use ebb_config::targets::TargetKind;
use serde_json::Value;

use crate::yaml::{self, ReadError};

/// Where YAML comes from: a file path, or `-` for standard input.
#[derive(Debug, Clone)]
pub struct Source(pub String);

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 == "-" { "<stdin>" } else { &self.0 })
    }
}

/// Why a source could not be read as Kubernetes YAML.
#[derive(Debug)]
pub enum InputError {
    /// The file (or stdin) could not be read, or is larger than ebb reads.
    Unreadable(ReadError),
    /// The text is not YAML, or goes beyond ebb's limits; the error carries the line and column.
    NotYaml(yaml::Error),
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable(err) => err.fmt(f),
            Self::NotYaml(err) if err.limit => err.fmt(f),
            Self::NotYaml(err) => write!(f, "not valid YAML: {err}"),
        }
    }
}

/// The parts of a Kubernetes object that ebb reads.
#[derive(Debug, Clone, Default)]
pub struct Object {
    /// `apiVersion` (empty when absent).
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    /// `metadata.labels` (string values only).
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`, with values that were not YAML strings listed in `non_string_annotations`.
    pub annotations: BTreeMap<String, String>,
    /// Annotation keys whose values were numbers or booleans: Kubernetes rejects those.
    pub non_string_annotations: Vec<String>,
    /// Whether the object has a pod template where its kind keeps the one of the role that takes traffic
    /// (`spec.template`; a LeaderWorkerSet's leader template).
    pub has_template: bool,
    /// That pod template's `metadata.labels`.
    pub template_labels: BTreeMap<String, String>,
    /// That pod template's `metadata.annotations`.
    pub template_annotations: BTreeMap<String, String>,
    /// `data` of a ConfigMap.
    pub data: BTreeMap<String, String>,
}

impl Object {
    /// The kind as `scale-target-kinds` names it (`statefulsets.apps`), when it could be one: from the
    /// `apiVersion`'s group, or the built-in workloads' group when `apiVersion` is left out.
    pub fn target_kind(&self) -> Option<TargetKind> {
        match self.api_version.as_str() {
            "" if matches!(self.kind.as_str(), "Deployment" | "StatefulSet") => {
                TargetKind::of_manifest("apps/v1", &self.kind)
            }
            version => TargetKind::of_manifest(version, &self.kind),
        }
    }

    /// `Kind NAMESPACE/NAME`, as messages name it.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Reads the text of a source, within ebb's limit on input size.
pub fn read_source(source: &Source) -> Result<String, InputError> {
    let text = if source.0 == "-" {
        yaml::read_text(std::io::stdin().lock())
    } else {
        std::fs::File::open(&source.0).map_err(ReadError::Io).and_then(yaml::read_text)
    };
    text.map_err(InputError::Unreadable)
}

/// Parses every document of a YAML stream into objects; `kind: List` documents contribute their items.
/// Empty documents are skipped; anything that is not a mapping with a `kind` is ignored.
pub fn parse_objects(text: &str) -> Result<Vec<Object>, InputError> {
    let mut objects = Vec::new();
    for value in yaml::documents(text).map_err(InputError::NotYaml)? {
        collect(&value, &mut objects);
    }
    Ok(objects)
}

fn collect(value: &Value, out: &mut Vec<Object>) {
    let kind = str_at(value, &["kind"]).map(str::to_owned);
    if kind.as_deref() == Some("List") {
        for item in value.get("items").and_then(Value::as_array).into_iter().flatten() {
            collect(item, out);
        }
        return;
    }
    let Some(kind) = kind else { return };
    let (annotations, non_string_annotations) = string_map(at(value, &["metadata", "annotations"]));
    let api_version = str_at(value, &["apiVersion"]).unwrap_or_default().to_owned();
    let group_version = if api_version.is_empty() { "apps/v1" } else { api_version.as_str() };
    let paths = TargetKind::of_manifest(group_version, &kind).and_then(|k| k.entry_templates());
    let spec_template: &[&str] = &["spec", "template"];
    let template =
        paths.unwrap_or(&[]).iter().copied().chain([spec_template]).find_map(|path| at(value, path));
    let template_map = |field: &str| string_map(template.and_then(|t| at(t, &["metadata", field]))).0;
    out.push(Object {
        api_version,
        has_template: template.is_some(),
        template_labels: template_map("labels"),
        template_annotations: template_map("annotations"),
        kind,
        name: str_at(value, &["metadata", "name"]).unwrap_or_default().to_owned(),
        namespace: str_at(value, &["metadata", "namespace"]).unwrap_or("default").to_owned(),
        labels: string_map(at(value, &["metadata", "labels"])).0,
        annotations,
        non_string_annotations,
        data: string_map(at(value, &["data"])).0,
    });
}

/// The value at `path` (mapping keys) under `value`.
pub fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// The value at `path` (mapping keys) under `value`, mutable.
pub fn at_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(key))
}

/// The string at `path` (mapping keys) under `value`.
pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// A map of strings (annotations, labels, ConfigMap data); scalar values of other types are kept as text and
/// their keys returned beside the map.
pub fn string_map(value: Option<&Value>) -> (BTreeMap<String, String>, Vec<String>) {
    let mut map = BTreeMap::new();
    let mut not_strings = Vec::new();
    for (key, value) in value.and_then(Value::as_object).into_iter().flatten() {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            _ => continue,
        };
        if !value.is_string() {
            not_strings.push(key.clone());
        }
        map.insert(key.clone(), text);
    }
    (map, not_strings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_documents_lists_and_the_fields_ebb_needs() {
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: chat
  labels: {ebb.dev/service: chat}
  annotations:
    autoscaling.knative.dev/min-scale: 2
    ebb.dev/timeout: "30s"
spec:
  template:
    metadata:
      labels: {ebb.dev/service: chat}
      annotations: {autoscaling.knative.dev/window: 30s}
---
---
kind: List
items:
  - {kind: ConfigMap, metadata: {name: config-autoscaler, namespace: ebb-system}, data: {stable-window: 30s}}
"#;
        let objects = parse_objects(text).unwrap();
        assert_eq!(objects.len(), 2);
        let d = &objects[0];
        assert_eq!(
            (d.describe(), d.labels["ebb.dev/service"].as_str()),
            ("Deployment default/chat".into(), "chat")
        );
        assert_eq!(d.annotations["autoscaling.knative.dev/min-scale"], "2");
        assert_eq!(d.non_string_annotations, ["autoscaling.knative.dev/min-scale"]);
        assert_eq!(d.template_annotations["autoscaling.knative.dev/window"], "30s");
        assert_eq!(objects[1].describe(), "ConfigMap ebb-system/config-autoscaler");
        assert_eq!(objects[1].data["stable-window"], "30s");
    }

    #[test]
    fn broken_yaml_names_the_line() {
        let err = parse_objects("kind: Deployment\nmetadata: {name: [unclosed\n").unwrap_err();
        assert!(matches!(err, InputError::NotYaml(_)));
        assert!(err.to_string().contains("line"), "{err}");
    }
}
