//! `ebb inject` over a multi-document YAML stream: every labelled Deployment gets the sidecar, `kind: List`
//! items included, with the `config-autoscaler` ConfigMap of the same input as the cluster-wide defaults. Other
//! documents pass through as they were written, in order; a document is re-serialized only when something in it
//! changed. Problems are collected over the whole stream, each naming its document and object.

use std::fmt;

use ebb_config::GlobalConfig;
use ebb_config::names::CONFIG_MAP_NAME;
use serde_json::Value;

use super::deployment::inject_object;
use super::documents::{Document, split_documents};
use crate::manifest::{str_at, string_map};
use crate::yaml;

/// One reason the input cannot be injected, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectError {
    /// 1-based index of the YAML document.
    pub document: usize,
    /// `Kind NAMESPACE/NAME` (or `Kind NAME` without a namespace), when the document is an object.
    pub object: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}: ", self.document)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The result of injecting one YAML stream.
#[derive(Debug, Default)]
pub struct Injected {
    /// The YAML to print.
    pub yaml: String,
    /// Things the user should know (printed on stderr), prefixed like errors.
    pub warnings: Vec<String>,
    /// Deployments that got (or kept) the sidecar.
    pub deployments: usize,
}

/// Injects every labelled Deployment of a YAML stream. On error, every problem found (all of them, so they
/// can be fixed at once) and no output.
pub fn inject(text: &str, image: &str) -> Result<Injected, Vec<InjectError>> {
    let documents = split_documents(text).map_err(|err| {
        let message = if err.limit { err.to_string() } else { format!("not valid YAML: {err}") };
        vec![InjectError { document: err.document.unwrap_or(1), object: None, message }]
    })?;
    let mut errors = Vec::new();
    let global = global_config(&documents, &mut errors);
    let mut out = Injected::default();
    let mut pieces = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        let number = index + 1;
        let Document { raw, value } = document;
        let Some(mut value) = value else {
            pieces.push(raw);
            continue;
        };
        let mut changed = false;
        let mut visit = |object: &mut Value| match inject_object(object, &global, image) {
            Ok(None) => {}
            Ok(Some(outcome)) => {
                out.deployments += 1;
                changed |= outcome.changed;
                let name = describe(object);
                out.warnings
                    .extend(outcome.warnings.iter().map(|w| format!("document {number}: {name}: {w}")));
            }
            Err(messages) => {
                let object = Some(describe(object));
                errors.extend(messages.into_iter().map(|message| InjectError {
                    document: number,
                    object: object.clone(),
                    message,
                }));
            }
        };
        if str_at(&value, &["kind"]) == Some("List") {
            for item in value.get_mut("items").and_then(Value::as_array_mut).into_iter().flatten() {
                visit(item);
            }
        } else {
            visit(&mut value);
        }
        if changed || raw.is_none() {
            pieces.push(Some(yaml::to_string(&value)));
        } else {
            pieces.push(raw);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    out.yaml = pieces.into_iter().flatten().collect::<Vec<_>>().join("---\n");
    Ok(out)
}

/// The first `config-autoscaler` ConfigMap in the input, as `ebb check` uses it; Knative's defaults without.
fn global_config(documents: &[Document], errors: &mut Vec<InjectError>) -> GlobalConfig {
    for (index, document) in documents.iter().enumerate() {
        let Some(value) = &document.value else { continue };
        let items: Vec<&Value> = match value.get("items").and_then(Value::as_array) {
            Some(items) if str_at(value, &["kind"]) == Some("List") => items.iter().collect(),
            _ => vec![value],
        };
        for object in items {
            if str_at(object, &["kind"]) != Some("ConfigMap")
                || str_at(object, &["metadata", "name"]) != Some(CONFIG_MAP_NAME)
            {
                continue;
            }
            let data = string_map(object.get("data")).0;
            match GlobalConfig::from_data(&data) {
                Ok(config) => return config.value,
                Err(invalid) => {
                    let object = Some(describe(object));
                    errors.extend(invalid.errors.iter().map(|e| InjectError {
                        document: index + 1,
                        object: object.clone(),
                        message: e.to_string(),
                    }));
                    return GlobalConfig::default();
                }
            }
        }
    }
    GlobalConfig::default()
}

/// `Kind NAMESPACE/NAME`, or `Kind NAME` when the object has no namespace.
fn describe(object: &Value) -> String {
    let kind = str_at(object, &["kind"]).unwrap_or("object");
    let name = str_at(object, &["metadata", "name"]).unwrap_or("(unnamed)");
    match str_at(object, &["metadata", "namespace"]) {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[cfg(test)]
mod tests {
    use ebb_config::names::LABEL_SERVICE;

    use ebb_inject::{SIDECAR, drain_hook};

    use super::super::IMAGE;
    use super::*;

    const DEPLOYMENT: &str = r#"# the model
apiVersion: apps/v1
kind: Deployment
metadata:
  name: chat
  labels: {ebb.dev/service: chat}
  annotations:
    ebb.dev/container-concurrency: "4"
    ebb.dev/timeout: "1m"
spec:
  template:
    spec:
      containers:
        - name: model
          image: example.com/model:1
          ports: [{name: http, containerPort: 8000}]
          readinessProbe: {httpGet: {path: /health, port: http}, timeoutSeconds: 2}
          livenessProbe: {httpGet: {path: /live, port: 8000}}
"#;

    fn one(text: &str) -> Value {
        let out = inject(text, IMAGE).unwrap();
        yaml::from_str(&out.yaml).unwrap()
    }

    fn env_of(container: &Value) -> Vec<(String, String)> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let value = str_at(e, &["value"]).map_or_else(
                    || format!("from {}", str_at(e, &["valueFrom", "fieldRef", "fieldPath"]).unwrap()),
                    str::to_owned,
                );
                (str_at(e, &["name"]).unwrap().to_owned(), value)
            })
            .collect()
    }

    #[test]
    fn the_sidecar_gets_the_resolved_settings() {
        let d = one(DEPLOYMENT);
        let pod = &d["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        let env = env_of(&containers[1]);
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("EBB_UPSTREAM"), Some("127.0.0.1:8000"));
        assert_eq!(get("EBB_CONTAINER_CONCURRENCY"), Some("4"));
        assert_eq!(get("EBB_QUEUE_DEPTH"), Some("40"));
        assert_eq!(get("EBB_TIMEOUT"), Some("1m"));
        assert_eq!(get("EBB_RESPONSE_START_TIMEOUT"), Some("1m"));
        assert_eq!(get("EBB_IDLE_TIMEOUT"), Some("0s"));
        assert_eq!(get("EBB_PROTOCOL"), None);
        assert_eq!(get("EBB_PROBE_PATH"), Some("/health"));
        assert_eq!(get("EBB_PROBE_TIMEOUT"), Some("2s"));
        assert_eq!(get("EBB_SERVICE_NAME"), Some("chat"));
        assert_eq!(get("EBB_SERVICE_NAMESPACE"), Some("from metadata.namespace"));
        // 60 s timeout + 30 s quiet period + 5 s margin.
        assert_eq!(pod["terminationGracePeriodSeconds"].as_u64(), Some(95));
        assert_eq!(d["spec"]["template"]["metadata"]["labels"][LABEL_SERVICE], "chat");
        let model = &containers[0];
        assert!(model.get("readinessProbe").is_none());
        assert!(model.get("livenessProbe").is_some());
        assert_eq!(model["lifecycle"]["preStop"], drain_hook());
        assert!(containers[1].get("lifecycle").is_none(), "the queue-proxy has no preStop hook");
    }

    #[test]
    fn injecting_twice_is_injecting_once() {
        let once = inject(DEPLOYMENT, IMAGE).unwrap().yaml;
        let twice = inject(&once, IMAGE).unwrap().yaml;
        assert_eq!(once, twice);
        // A changed annotation updates the sidecar in place; the moved probe path survives.
        let changed = once.replace("ebb.dev/timeout: 1m", "ebb.dev/timeout: 10m");
        assert_ne!(changed, once);
        let d: Value = yaml::from_str(&inject(&changed, IMAGE).unwrap().yaml).unwrap();
        let containers = d["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        let env = env_of(&containers[1]);
        assert!(env.contains(&("EBB_TIMEOUT".into(), "10m".into())), "{env:?}");
        assert!(env.contains(&("EBB_PROBE_PATH".into(), "/health".into())), "{env:?}");
        assert_eq!(d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64(), Some(635));
    }

    #[test]
    fn untouched_documents_keep_their_text() {
        let other = "# a comment kept\nkind: ConfigMap\nmetadata: {name: x}   # inline\ndata: {a: \"1\"}\n";
        let text = format!("---\n{other}---\n{DEPLOYMENT}---\n{other}");
        let out = inject(&text, IMAGE).unwrap().yaml;
        let parts: Vec<&str> = out.split("---\n").collect();
        assert_eq!(parts.len(), 3, "{out}");
        assert_eq!(parts[0], other);
        assert_eq!(parts[2], other);
        assert!(parts[1].contains("queue-proxy"));
    }

    #[test]
    fn readiness_the_queue_proxy_cannot_probe_stays() {
        let text = DEPLOYMENT.replace(
            "{httpGet: {path: /health, port: http}, timeoutSeconds: 2}",
            "{exec: {command: [ready]}}",
        );
        let out = inject(&text, IMAGE).unwrap();
        assert!(out.warnings[0].contains("stays on it"), "{:?}", out.warnings);
        let d: Value = yaml::from_str(&out.yaml).unwrap();
        assert!(d["spec"]["template"]["spec"]["containers"][0].get("readinessProbe").is_some());
        let text = DEPLOYMENT.replace("port: http}", "port: 9000}");
        assert!(inject(&text, IMAGE).unwrap().warnings[0].contains("another port"));
    }

    #[test]
    fn reserved_ports_and_bad_annotations_are_errors() {
        let text = DEPLOYMENT.replace("containerPort: 8000", "containerPort: 9090");
        let errors = inject(&text, IMAGE).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, 1);
        assert_eq!(errors[0].object.as_deref(), Some("Deployment chat"));
        assert!(errors[0].message.contains("port 9090"), "{}", errors[0]);
        let text = DEPLOYMENT.replace("\"1m\"", "\"forever\"").replace("\"4\"", "4");
        let errors = inject(&text, IMAGE).unwrap_err();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("ebb.dev/timeout: \"forever\"")), "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("must be strings")), "{messages:?}");
    }

    #[test]
    fn default_port_and_lists() {
        let text = "kind: List\nitems:\n- kind: Deployment\n  metadata: {name: a, labels: {ebb.dev/service: a}}\n  \
                    spec: {template: {spec: {containers: [{name: app, image: x}]}}}\n";
        let d = one(text);
        let env = env_of(&d["items"][0]["spec"]["template"]["spec"]["containers"][1]);
        assert!(env.contains(&("EBB_UPSTREAM".into(), "127.0.0.1:8080".into())), "{env:?}");
    }

    #[test]
    fn streams_that_cannot_be_cut_are_rewritten_whole() {
        // A directive makes the text before the first `---` unparseable alone: every document is re-serialized,
        // with the same values.
        let text = format!("%YAML 1.2\n---\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n{DEPLOYMENT}");
        let out = inject(&text, IMAGE).unwrap().yaml;
        let values: Vec<Value> = yaml::documents(&out).unwrap();
        assert_eq!(values.len(), 2, "{out}");
        assert_eq!(values[0], yaml::from_str::<Value>("kind: ConfigMap\nmetadata: {name: x}").unwrap());
        assert_eq!(values[1]["spec"]["template"]["spec"]["containers"][1]["name"], SIDECAR);
        assert_eq!(inject(&out, IMAGE).unwrap().yaml, out, "and then it is idempotent");
    }

    #[test]
    fn a_template_label_of_another_value_is_reported_not_changed() {
        let text = DEPLOYMENT.replace(
            "spec:\n  template:\n",
            "spec:\n  template:\n    metadata: {labels: {ebb.dev/service: other}}\n",
        );
        let out = inject(&text, IMAGE).unwrap();
        assert!(out.warnings.iter().any(|w| w.contains("\"other\"")), "{:?}", out.warnings);
        let d: Value = yaml::from_str(&out.yaml).unwrap();
        assert_eq!(d["spec"]["template"]["metadata"]["labels"][LABEL_SERVICE], "other");
    }
}
