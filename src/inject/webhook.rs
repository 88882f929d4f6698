//! The inject core for the autoscaler's admission webhook: [`pod`] adds the queue-proxy to a Pod (JSON, as
//! the API server sends it) with [`inject_template`], exactly as `ebb inject` does to a Deployment's pod
//! template. `ebb autoscaler` hands it to the webhook at start.

use ebb_autoscaler::cluster::webhook::inject::{Injected, Service};
use serde_json::Value;

use super::pod::{self, inject_template};

/// Injects `service`'s queue-proxy, running `image`, into `pod`: its `metadata` and `spec` are the template.
pub fn pod(pod: &Value, service: &Service<'_>, image: &str) -> Result<Injected, Vec<String>> {
    let yaml = |v: &Value| serde_yaml::to_value(v).map_err(|e| vec![format!("the pod: {e}")]);
    let template = serde_json::json!({"metadata": pod["metadata"], "spec": pod["spec"]});
    let service =
        pod::Service { name: service.name, annotations: service.annotations, global: service.global };
    let injection = inject_template(&yaml(&template)?, &service, image)?;
    let injected: Value =
        serde_json::to_value(&injection.template).map_err(|e| vec![format!("the injected pod: {e}")])?;
    let mut out = pod.clone();
    out["metadata"] = injected["metadata"].clone();
    out["spec"] = injected["spec"].clone();
    Ok(Injected { pod: out, warnings: injection.warnings })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ebb_config::GlobalConfig;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_pod_gets_the_sidecar_its_deployments_annotations_ask_for() {
        let created = json!({
            "metadata": {"generateName": "chat-5d-", "labels": {"ebb.dev/service": "chat"},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "chat-5d", "controller": true}]},
            "spec": {"containers": [{"name": "model", "image": "m", "ports": [{"containerPort": 8000}],
                                     "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}}}]},
        });
        let annotations = BTreeMap::from([("ebb.dev/container-concurrency".to_owned(), "4".to_owned())]);
        let global = GlobalConfig::default();
        let service = Service { name: "chat", annotations: &annotations, global: &global };
        let injected = pod(&created, &service, "img").unwrap();
        let containers = injected.pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers[1]["name"], "queue-proxy");
        assert_eq!(containers[1]["command"], json!(["ebb", "queue-proxy"]));
        let env = containers[1]["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e["name"] == "EBB_CONTAINER_CONCURRENCY" && e["value"] == "4"), "{env:?}");
        assert!(containers[0].get("readinessProbe").is_none(), "moved to the queue-proxy");
        assert_eq!(injected.pod["metadata"]["ownerReferences"], created["metadata"]["ownerReferences"]);
        // Bad annotations: every problem, naming the annotation.
        let bad = BTreeMap::from([("ebb.dev/timeout".to_owned(), "soon".to_owned())]);
        let service = Service { name: "chat", annotations: &bad, global: &global };
        let errors = pod(&created, &service, "img").err().unwrap();
        assert!(errors.iter().any(|e| e.contains("ebb.dev/timeout")), "{errors:?}");
    }
}
