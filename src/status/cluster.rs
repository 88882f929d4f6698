//! `ebb status --kubeconfig PATH | --cluster`: the Deployments labelled `ebb.dev/service`, with what the
//! autoscaler writes on them and on their public Service.

use std::process::ExitCode;

use super::columns::render;

/// The annotations the autoscaler writes: `desired`, `mode`, `panic` and `reason` on the Deployment; `mode` and
/// `phase` on the public Service it manages.
const DESIRED: &str = "status.ebb.dev/desired";
const MODE: &str = "status.ebb.dev/mode";
const PHASE: &str = "status.ebb.dev/phase";
const PANIC: &str = "status.ebb.dev/panic";
const REASON: &str = "status.ebb.dev/reason";
const SIDECAR: &str = "status.ebb.dev/sidecar";

/// One autoscaled Deployment as the cluster shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterRow {
    /// `NAMESPACE/NAME`.
    pub service: String,
    /// The replicas the autoscaler wants (`status.ebb.dev/desired`); `None` before it wrote any.
    pub desired: Option<String>,
    /// `spec.replicas`.
    pub replicas: Option<i32>,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// `serve` or `proxy`: the public Service's `status.ebb.dev/mode`, else the Deployment's.
    pub mode: Option<String>,
    /// The scale-to-zero phase on the public Service (`activating`, `active`, `inactive`, `zero`).
    pub phase: Option<String>,
    /// Whether the decider is in panic mode (`status.ebb.dev/panic`); from an autoscaler too old to write
    /// it, whether the last change of replicas was a panic decision (its reason starts `panic`).
    pub panic: Option<bool>,
    /// Why the replicas last changed (`status.ebb.dev/reason`).
    pub last_reason: Option<String>,
    /// Pods without the queue-proxy or with outdated settings, and what to do (`status.ebb.dev/sidecar`).
    pub sidecar: Option<String>,
}

/// The rows for `deployments`, with the mode and phase from the ebb-managed `services` of the same names.
pub fn cluster_rows(
    deployments: &[k8s_openapi::api::apps::v1::Deployment],
    services: &[k8s_openapi::api::core::v1::Service],
) -> Vec<ClusterRow> {
    use ebb_config::names::{LABEL_MANAGED_BY, MANAGED_BY_EBB};
    let key = |meta: &kube::api::ObjectMeta| {
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )
    };
    let owned: std::collections::HashMap<String, &std::collections::BTreeMap<String, String>> = services
        .iter()
        .filter(|s| {
            s.metadata.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)).map(String::as_str)
                == Some(MANAGED_BY_EBB)
        })
        .filter_map(|s| Some((key(&s.metadata), s.metadata.annotations.as_ref()?)))
        .collect();
    let empty = std::collections::BTreeMap::new();
    let mut rows: Vec<ClusterRow> = deployments
        .iter()
        .map(|d| {
            let service = key(&d.metadata);
            let own = d.metadata.annotations.as_ref().unwrap_or(&empty);
            let public = owned.get(&service).copied().unwrap_or(&empty);
            let last_reason = own.get(REASON).cloned();
            ClusterRow {
                desired: own.get(DESIRED).cloned(),
                replicas: d.spec.as_ref().and_then(|s| s.replicas),
                ready: d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
                mode: public.get(MODE).or_else(|| own.get(MODE)).cloned(),
                phase: public.get(PHASE).cloned(),
                panic: own.get(PANIC).map(|v| v == "true").or_else(|| {
                    last_reason.as_deref().map(|r| r.starts_with("panic: ") || r.starts_with("panic hold: "))
                }),
                last_reason,
                sidecar: own.get(SIDECAR).cloned(),
                service,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.service.cmp(&b.service));
    rows
}

/// The cluster table.
pub fn cluster_table(rows: &[ClusterRow]) -> String {
    let headers = ["SERVICE", "DESIRED", "REPLICAS", "READY", "MODE", "PHASE", "PANIC", "LAST REASON"];
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let cells = rows
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                dash(r.desired.clone()),
                dash(r.replicas.map(|n| n.to_string())),
                r.ready.to_string(),
                dash(r.mode.clone()),
                dash(r.phase.clone()),
                dash(r.panic.map(|p| if p { "yes" } else { "no" }.to_owned())),
                dash(r.last_reason.clone()),
            ]
        })
        .collect();
    render(&headers, cells)
}

/// The lines under the table: one per service whose pods do not all run the queue-proxy its annotations
/// ask for (empty when there is none).
pub fn cluster_notes(rows: &[ClusterRow]) -> String {
    rows.iter().filter_map(|r| Some(format!("sidecar: {}: {}\n", r.service, r.sidecar.as_deref()?))).collect()
}

/// `ebb status --kubeconfig PATH | --cluster [-n NS]`.
pub fn run(kubeconfig: Option<&std::path::Path>, namespace: Option<&str>, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ebb status: {err}");
            return ExitCode::FAILURE;
        }
    };
    let config = match runtime.block_on(cluster_config(kubeconfig)) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("ebb status: {err}");
            return ExitCode::from(ebb_process::exit::USAGE);
        }
    };
    let server = config.cluster_url.to_string();
    match runtime.block_on(fetch_cluster(config, namespace)) {
        Ok(rows) if json => match serde_json::to_string_pretty(&rows) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("ebb status: {err}");
                ExitCode::FAILURE
            }
        },
        Ok(rows) => {
            print!("{}", cluster_table(&rows));
            let notes = cluster_notes(&rows);
            if !notes.is_empty() {
                print!("\n{notes}");
            }
            if rows.is_empty() {
                let scope =
                    namespace.map_or_else(|| "any namespace".to_owned(), |ns| format!("namespace {ns}"));
                eprintln!("ebb status: no Deployment labelled ebb.dev/service in {scope}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ebb status: cannot list autoscaled Deployments from {server}: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn cluster_config(kubeconfig: Option<&std::path::Path>) -> Result<kube::Config, String> {
    match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("cannot use the kubeconfig {}: {e}", path.display()))
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!(
                "no cluster found ($KUBECONFIG, ~/.kube/config, in-cluster): {e}; or pass --kubeconfig PATH"
            )
        }),
    }
}

async fn fetch_cluster(config: kube::Config, namespace: Option<&str>) -> Result<Vec<ClusterRow>, String> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, ListParams};

    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let (deployments, services): (Api<Deployment>, Api<Service>) = match namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client, ns)),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let labelled = ListParams::default().labels(ebb_config::names::LABEL_SERVICE);
    let deployments = deployments.list(&labelled).await.map_err(|e| e.to_string())?;
    let managed = ListParams::default().labels(&format!(
        "{}={}",
        ebb_config::names::LABEL_MANAGED_BY,
        ebb_config::names::MANAGED_BY_EBB
    ));
    let services = services.list(&managed).await.map_err(|e| e.to_string())?;
    Ok(cluster_rows(&deployments.items, &services.items))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_read_what_the_autoscaler_writes() {
        let deployment = |name: &str, annotations: serde_json::Value| {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "models", "annotations": annotations},
                "spec": {"replicas": 3, "selector": {}, "template": {}},
                "status": {"readyReplicas": 2},
            }))
            .unwrap()
        };
        let deployments = [
            deployment(
                "chat",
                json!({DESIRED: "3", MODE: "proxy", REASON: "panic: 30 concurrent over target 7 x 1 pod -> 3 pods"}),
            ),
            deployment("batch", json!({})),
            deployment("embed", json!({DESIRED: "2", PANIC: "true", REASON: "stable: 2 pods"})),
        ];
        let service = |labels: serde_json::Value| {
            serde_json::from_value(json!({
                "metadata": {"name": "chat", "namespace": "models", "labels": labels,
                             "annotations": {MODE: "serve", PHASE: "active"}},
            }))
            .unwrap()
        };
        let rows = cluster_rows(&deployments, &[service(json!({"app.kubernetes.io/managed-by": "ebb"}))]);
        assert_eq!(rows[0].service, "models/batch");
        assert_eq!((rows[0].desired.as_deref(), rows[0].mode.as_deref(), rows[0].panic), (None, None, None));
        let chat = &rows[1];
        assert_eq!((chat.desired.as_deref(), chat.replicas, chat.ready), (Some("3"), Some(3), 2));
        assert_eq!(
            (chat.mode.as_deref(), chat.phase.as_deref(), chat.panic),
            (Some("serve"), Some("active"), Some(true))
        );
        let table = cluster_table(&rows);
        assert!(
            table.starts_with("SERVICE       DESIRED  REPLICAS  READY  MODE   PHASE   PANIC  LAST REASON\n"),
            "{table}"
        );
        assert!(
            table.contains("models/chat   3        3         2      serve  active  yes    panic: 30"),
            "{table}"
        );
        // The live flag wins over the last change's reason.
        assert_eq!((rows[2].service.as_str(), rows[2].panic), ("models/embed", Some(true)));
        assert_eq!(cluster_notes(&rows), "");
        // A Service ebb does not own says nothing about the mode: the Deployment's annotation is used.
        let rows = cluster_rows(&deployments, &[service(json!({}))]);
        assert_eq!((rows[1].mode.as_deref(), rows[1].phase.as_deref()), (Some("proxy"), None));
    }

    #[test]
    fn pods_without_the_sidecar_or_with_outdated_settings_are_shown_under_the_table() {
        let deployment = serde_json::from_value(json!({
            "metadata": {"name": "chat", "namespace": "models",
                         "annotations": {SIDECAR: "1 of 2 pods with outdated queue-proxy settings: restart"}},
            "spec": {"selector": {}, "template": {}},
        }))
        .unwrap();
        let rows = cluster_rows(&[deployment], &[]);
        assert_eq!(
            cluster_notes(&rows),
            "sidecar: models/chat: 1 of 2 pods with outdated queue-proxy settings: restart\n"
        );
    }
}
