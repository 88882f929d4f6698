//! `ebb status`: a table of autoscaled services, from one of two places:
//!
//! - a running `ebb up` (the default) or an autoscaler: its `/status` at `--url` (`http://` or `https://`);
//! - a cluster, when `--kubeconfig PATH`, `--context NAME` or `--cluster` is given (and only then, so a
//!   `KUBECONFIG` set for other work never changes what plain `ebb status` shows): the Deployments labelled
//!   `ebb.dev/service` in every namespace (or `-n NS`), with what the autoscaler writes on them and on their
//!   public Service ([`cluster`]).
//!
//! With `--service NS/NAME` it shows that service's last decisions instead ([`decisions`]), from `ebb up`, an
//! autoscaler at `--url`, or a cluster's autoscaler through the API server's service proxy ([`client`]).
//! kubectl's habits hold: `-n`/`-A`, `-o wide|json|yaml`, `-w` ([`output`]).

mod client;
mod cluster;
mod columns;
mod decisions;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use self::client::Endpoint;
use self::cluster::ClusterOptions;
use self::columns::render;
use self::output::{Format, Screen, document};

/// Arguments of `ebb status`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  ebb status                                   # a local `ebb up` (its metrics port, 127.0.0.1:9090)
  ebb status -w                                # ... drawn again on every change
  ebb status --cluster -A                      # every autoscaled Deployment of the current cluster
  ebb status --context prod -n models -o wide  # one namespace of another context, more columns
  ebb status --cluster -o json | jq '.[] | select(.panic)'
  ebb status --cluster --service models/chat   # its last decisions, read through the API server
  ebb status --service demo --plot demo.svg    # ebb up: the decisions and an SVG of them
  ebb status --url https://ebb.example.com     # an ebb up or autoscaler behind TLS
  ebb status --url https://ebb.internal --certificate-authority ca.pem   # signed by a private CA

Columns (table; scripts may rely on them, -o wide adds MIN MAX TARGET CC before LAST REASON):
  cluster:  SERVICE DESIRED REPLICAS READY MODE PHASE PANIC LAST REASON
  ebb up:   SERVICE DESIRED READY MODE PHASE IN FLIGHT QUEUED LAST REASON
  --service: TIME (UTC) OBSERVED PANIC WINDOW READY DESIRED PANIC MODE PHASE REASON
A cell with nothing to show is `-`.

--service on a cluster needs `get` on `services/proxy` for the Service ebb-autoscaler:metrics in the
autoscaler's namespace (manifests/status-rbac.yaml; docs/rbac.md).

Exit codes:
  0  shown (an empty list too)
  1  the server, cluster or service could not be read (unreachable, refused, unknown service)
  2  a bad command line, or a kubeconfig or context that cannot be used")]
pub struct Args {
    /// The metrics address of `ebb up` (its `--metrics-port`) or of an autoscaler, `http://` or `https://`
    /// (the system's trusted certificates).
    #[arg(long, default_value = "http://127.0.0.1:9090", conflicts_with_all = ["kubeconfig", "cluster", "context"])]
    url: String,
    /// With an `https://` --url: trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kubeconfig", "cluster", "context"])]
    certificate_authority: Option<std::path::PathBuf>,
    /// Read a cluster through this kubeconfig, instead of a local `ebb up`.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Read a cluster through this context of the kubeconfig ($KUBECONFIG or ~/.kube/config, or --kubeconfig).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Read the current cluster: $KUBECONFIG, ~/.kube/config, or the pod's ServiceAccount.
    #[arg(long)]
    cluster: bool,
    /// With a cluster: only this namespace [default: all namespaces].
    #[arg(long, short = 'n', value_name = "NS", conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// With a cluster: every namespace (the default; as kubectl's -A).
    #[arg(long, short = 'A')]
    all_namespaces: bool,
    /// Output format: table, wide (more columns), json or yaml.
    #[arg(long, short = 'o', value_enum, value_name = "FORMAT", default_value_t = Format::Table)]
    output: Format,
    /// The same as `-o json`.
    #[arg(long, conflicts_with = "output")]
    json: bool,
    /// Watch: draw again on every change (in place on a terminal, one more document otherwise) until
    /// interrupted.
    #[arg(long, short = 'w')]
    watch: bool,
    /// Show this service's last decisions with their inputs and reasons: `NS/NAME` (`NAME` in `ebb up`, or in
    /// -n's or the context's namespace). In a cluster they are read from the autoscaler through the API
    /// server's service proxy.
    #[arg(long, short = 's', value_name = "NS/NAME")]
    service: Option<String>,
    /// With --service: only the last N decisions.
    #[arg(long, value_name = "N", requires = "service")]
    limit: Option<usize>,
    /// With --service: also write an SVG of them (load, desired and ready pods, panic periods) with the
    /// service's cold-start phases where the server measures them (`ebb up`).
    #[arg(long, value_name = "FILE", requires = "service")]
    plot: Option<std::path::PathBuf>,
    /// With --service on a cluster: the autoscaler's namespace.
    #[arg(long, value_name = "NS", default_value = "ebb-system")]
    autoscaler_namespace: String,
}

/// Prints the table; exit 1 when `ebb up` or the cluster cannot be reached, 2 for a bad command line or an
/// unreadable kubeconfig.
pub fn run(args: Args) -> ExitCode {
    let format = if args.json { Format::Json } else { args.output };
    let service = args.service.clone().map(|service| {
        let options = decisions::Options { limit: args.limit, plot: None, format, watch: args.watch };
        (service, options)
    });
    if args.kubeconfig.is_some() || args.cluster || args.context.is_some() {
        let plot = args.plot.clone();
        return cluster::run(ClusterOptions {
            kubeconfig: args.kubeconfig,
            context: args.context,
            namespace: args.namespace,
            format,
            watch: args.watch,
            service: service.map(|(s, options)| (s, decisions::Options { plot: plot.as_deref(), ..options })),
            autoscaler_namespace: args.autoscaler_namespace,
        });
    }
    if args.namespace.is_some() || args.all_namespaces {
        let flag = if args.all_namespaces { "--all-namespaces" } else { "--namespace" };
        eprintln!("ebb status: {flag} needs a cluster: add --kubeconfig PATH, --context NAME or --cluster");
        return ExitCode::from(ebb_process::exit::USAGE);
    }
    if let Err(err) = client::join(&args.url, "/status") {
        eprintln!("ebb status: --url {err}");
        return ExitCode::from(ebb_process::exit::USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ebb status: {err}");
            return ExitCode::FAILURE;
        }
    };
    let endpoint =
        Endpoint::Url { url: args.url.clone(), certificate_authority: args.certificate_authority.clone() };
    if let Some((service, options)) = service {
        let options = decisions::Options { plot: args.plot.as_deref(), ..options };
        return runtime.block_on(decisions::run(&endpoint, &service, options));
    }
    runtime.block_on(local(&endpoint, format, args.watch))
}

/// The services of `ebb up` (or an autoscaler) at `endpoint`; with `watch`, read every two seconds.
async fn local(endpoint: &Endpoint, format: Format, watch: bool) -> ExitCode {
    let mut screen = Screen::new(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    loop {
        match fetch(endpoint).await {
            Ok(status) => {
                let text = match format {
                    Format::Table | Format::Wide => table(&status),
                    Format::Json | Format::Yaml => document(&status, format),
                };
                if !watch {
                    print!("{text}");
                    return ExitCode::SUCCESS;
                }
                if screen.draw(text, format).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            Err(err) => {
                eprintln!(
                    "ebb status: cannot read {}/status: {err} (is `ebb up` running?)",
                    endpoint.describe()
                );
                if !watch {
                    return ExitCode::FAILURE;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn fetch(endpoint: &Endpoint) -> Result<Value, String> {
    let (status, body) = endpoint.get("/status").await?;
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
