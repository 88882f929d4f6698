//! `ebb status`: a table of autoscaled services, from one of two places:
//!
//! - a running `ebb up` (the default): its `/status` endpoint at `--url`;
//! - a cluster, when `--kubeconfig PATH` or `--cluster` is given (and only then, so a `KUBECONFIG` set for
//!   other work never changes what plain `ebb status` shows): the Deployments labelled `ebb.dev/service` in
//!   every namespace (or `-n NS`), with what the autoscaler writes on them and on their public Service
//!   ([`cluster_run`]).
//!
//! With `--service NS/NAME` it shows that service's last decisions instead ([`decisions`]), from `ebb up` or
//! from any autoscaler's metrics port given as `--url`.

mod decisions;

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Arguments of `ebb status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The metrics address of `ebb up` (its `--metrics-port`).
    #[arg(long, default_value = "http://127.0.0.1:9090", conflicts_with_all = ["kubeconfig", "cluster"])]
    url: String,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Show the services of the cluster this kubeconfig points at, instead of a local `ebb up`.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Show the services of the current cluster: $KUBECONFIG, ~/.kube/config, or the pod's ServiceAccount.
    #[arg(long)]
    cluster: bool,
    /// With a cluster: only this namespace [default: all namespaces].
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Option<String>,
    /// Show this service's last decisions with their inputs and reasons (`NAME` in `ebb up`). In a cluster,
    /// point --url at an autoscaler: `kubectl -n ebb-system port-forward deploy/ebb-autoscaler 9090`.
    #[arg(long, short = 's', value_name = "NS/NAME", conflicts_with_all = ["kubeconfig", "cluster"])]
    service: Option<String>,
    /// With --service: only the last N decisions.
    #[arg(long, value_name = "N", requires = "service")]
    limit: Option<usize>,
    /// With --service: also write an SVG of them (load, desired and ready pods, panic periods) with the
    /// service's cold-start phases where the server measures them (`ebb up`).
    #[arg(long, value_name = "FILE", requires = "service")]
    plot: Option<std::path::PathBuf>,
}

/// Prints the table; exit 1 when `ebb up` or the cluster cannot be reached, 2 for a bad command line or an
/// unreadable kubeconfig.
pub fn run(args: Args) -> ExitCode {
    if args.kubeconfig.is_some() || args.cluster {
        return cluster_run(args.kubeconfig.as_deref(), args.namespace.as_deref(), args.json);
    }
    if args.namespace.is_some() {
        eprintln!("ebb status: --namespace needs a cluster: add --kubeconfig PATH or --cluster");
        return ExitCode::from(ebb_process::exit::USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ebb status: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(service) = &args.service {
        let options = decisions::Options { limit: args.limit, plot: args.plot.as_deref(), json: args.json };
        return runtime.block_on(decisions::run(&args.url, service, options));
    }
    match runtime.block_on(fetch(&args.url)) {
        Ok(status) if args.json => {
            println!("{status:#}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            print!("{}", table(&status));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ebb status: cannot read {}/status: {err} (is `ebb up` running?)", args.url);
            ExitCode::FAILURE
        }
    }
}

async fn fetch(url: &str) -> Result<Value, String> {
    let (status, body) = get(url, "/status").await?;
    if !(200..300).contains(&status) {
        return Err(format!("status {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// `GET path` at `url` (`http://HOST:PORT`): the status and the body.
async fn get(url: &str, path: &str) -> Result<(u16, Bytes), String> {
    let authority = url.trim_end_matches('/').trim_start_matches("http://");
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// The table: one row per service.
pub fn table(status: &Value) -> String {
    let headers = ["SERVICE", "DESIRED", "READY", "MODE", "PHASE", "IN FLIGHT", "QUEUED", "LAST REASON"];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let empty = Vec::new();
    for s in status["services"].as_array().unwrap_or(&empty) {
        let text = |key: &str| match &s[key] {
            Value::String(t) => t.clone(),
            Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        rows.push(vec![
            text("name"),
            text("desired"),
            text("ready"),
            text("mode"),
            text("phase"),
            text("in_flight"),
            text("queued"),
            text("last_reason"),
        ]);
    }
    render(&headers, rows)
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn render(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> =
        std::iter::once(headers.iter().map(|h| (*h).to_owned()).collect()).chain(rows).collect();
    let widths: Vec<usize> =
        (0..headers.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| if i + 1 == row.len() { c.clone() } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The annotations the autoscaler writes (autoscaler/src/kube/status.rs on the Deployment,
/// autoscaler/src/kube/path.rs on the public Service).
const DESIRED: &str = "status.ebb.dev/desired";
const MODE: &str = "status.ebb.dev/mode";
const PHASE: &str = "status.ebb.dev/phase";
const PANIC: &str = "status.ebb.dev/panic";
const REASON: &str = "status.ebb.dev/reason";

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

/// `ebb status --kubeconfig PATH | --cluster [-n NS]`.
fn cluster_run(kubeconfig: Option<&std::path::Path>, namespace: Option<&str>, json: bool) -> ExitCode {
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
    fn the_local_table_shows_every_service_from_status() {
        let status = serde_json::json!({
            "gateway": "127.0.0.1:8080",
            "services": [
                {"name": "chat", "desired": 3, "ready": 2, "mode": "serve", "phase": "active", "in_flight": 11,
                 "queued": 0, "last_reason": "stable: 11.0 in flight / target 4"},
                {"name": "embed", "desired": 0, "ready": 0, "mode": "proxy", "phase": "zero", "in_flight": 0,
                 "queued": 0, "last_reason": null},
            ],
        });
        assert_eq!(
            table(&status),
            "SERVICE  DESIRED  READY  MODE   PHASE   IN FLIGHT  QUEUED  LAST REASON\n\
             chat     3        2      serve  active  11         0       stable: 11.0 in flight / target 4\n\
             embed    0        0      proxy  zero    0          0       -\n"
        );
        assert_eq!(
            table(&serde_json::json!({})),
            "SERVICE  DESIRED  READY  MODE  PHASE  IN FLIGHT  QUEUED  LAST REASON\n"
        );
    }

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
        // A Service ebb does not own says nothing about the mode: the Deployment's annotation is used.
        let rows = cluster_rows(&deployments, &[service(json!({}))]);
        assert_eq!((rows[1].mode.as_deref(), rows[1].phase.as_deref()), (Some("proxy"), None));
    }
}
