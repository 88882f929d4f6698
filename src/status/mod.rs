//! `ebb status`: a table of autoscaled services, from one of two places:
//!
//! - a running `ebb up` (the default): its `/status` endpoint at `--url`;
//! - a cluster, when `--kubeconfig PATH` or `--cluster` is given (and only then, so a `KUBECONFIG` set for
//!   other work never changes what plain `ebb status` shows): the Deployments labelled `ebb.dev/service` in
//!   every namespace (or `-n NS`), with what the autoscaler writes on them and on their public Service
//!   ([`cluster`]).
//!
//! With `--service NS/NAME` it shows that service's last decisions instead ([`decisions`]), from `ebb up` or
//! from any autoscaler's metrics port given as `--url`.

mod client;
mod cluster;
mod columns;
mod decisions;

use std::process::ExitCode;

use serde_json::Value;

use self::client::get;
use self::columns::render;

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
        return cluster::run(args.kubeconfig.as_deref(), args.namespace.as_deref(), args.json);
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

#[cfg(test)]
mod tests {
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
}
