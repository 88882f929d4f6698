//! The command line of the cluster activator (`activator` and `ebb activator`): every option is a flag with an
//! `EBB_*` environment variable. It serves the data and metrics ports, follows the cluster through the
//! Kubernetes endpoint source, and streams stats to the autoscaler replicas.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ebb_config::names::{ACTIVATOR_DATA_PORT, ACTIVATOR_METRICS_PORT, AUTOSCALER_INGEST_PORT};
use ebb_process::logging::{self, LogArgs};
use ebb_process::{exit, flags};

use crate::handler::{Activator, Options};
use crate::kube_source::KubeSource;
use crate::metrics::Metrics;
use crate::push::{Pusher, Token};
use crate::registry::Registry;
use crate::server::{DrainOptions, Server};
use crate::stats::StatSink;

/// Options of the activator.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address the ports bind to.
    #[arg(long, env = "EBB_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Data port (0 = any free port).
    #[arg(long, env = "EBB_DATA_PORT", default_value_t = ACTIVATOR_DATA_PORT)]
    pub data_port: u16,
    /// Prometheus, /healthz and /readyz port (0 = any free port).
    #[arg(long, env = "EBB_METRICS_PORT", default_value_t = ACTIVATOR_METRICS_PORT)]
    pub metrics_port: u16,
    /// This pod's name, reported in stats.
    #[arg(long, env = "POD_NAME", default_value = "activator")]
    pub pod_name: String,
    /// The namespace of ebb's own pods (the activators and autoscalers it looks for).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ebb-system")]
    pub pod_namespace: String,
    /// Namespaces whose services are routed, comma-separated; empty means all.
    #[arg(long, env = "EBB_WATCH_NAMESPACES", value_delimiter = ',', default_value = "")]
    pub watch_namespaces: Vec<String>,
    /// Autoscaler ingest addresses (HOST:PORT, comma-separated); empty means every Ready autoscaler pod.
    #[arg(long, env = "EBB_AUTOSCALER", value_delimiter = ',')]
    pub autoscaler: Vec<SocketAddr>,
    /// The ServiceAccount token sent to the autoscalers; empty sends none.
    #[arg(
        long,
        env = "EBB_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,
    /// Most requests waiting across all services.
    #[arg(long, env = "EBB_MAX_QUEUED_TOTAL", default_value_t = 10_000)]
    pub max_queued_total: u32,
    /// `Retry-After` on 503 answers.
    #[arg(long, env = "EBB_RETRY_AFTER", default_value = "1s", value_parser = flags::duration)]
    pub retry_after: Duration,
    /// Quiet time with nothing in flight before a draining activator exits.
    #[arg(long, env = "EBB_DRAIN_QUIET_PERIOD", default_value = "15s", value_parser = flags::duration)]
    pub drain_quiet_period: Duration,
    /// Longest drain; above the longest activation timeout so queued cold starts are not cut.
    #[arg(long, env = "EBB_DRAIN_DEADLINE", default_value = "11m", value_parser = flags::duration)]
    pub drain_deadline: Duration,
    /// `--log-format`.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Runs the activator until it has drained after SIGTERM or SIGINT.
pub fn run(args: Args) -> ExitCode {
    if args.max_queued_total == 0 {
        eprintln!("activator: --max-queued-total: must be at least 1");
        return ExitCode::from(exit::USAGE);
    }
    logging::init(args.log.format);
    ebb_process::limits::raise_and_log();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("activator: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("activator: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    // kube's TLS needs a process-wide crypto provider; another part of the process may have installed it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client =
        kube::Client::try_default().await.map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;

    let token = match args.token_file.as_os_str().is_empty() {
        true => Token::None,
        false => Token::File(args.token_file.clone()),
    };
    let pusher = Pusher::new(token);
    let discover = args.autoscaler.is_empty();
    if !discover {
        pusher.set_replicas(&args.autoscaler);
    }
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new(false, args.max_queued_total, metrics.clone()));
    let options = Options {
        name: args.pod_name.clone(),
        max_queued_total: args.max_queued_total,
        retry_after: args.retry_after,
    };
    let sink: Arc<dyn StatSink> = pusher.clone();
    let activator = Arc::new(Activator::new(registry.clone(), sink, metrics, options));

    let watch = crate::kube_source::Options {
        namespaces: args.watch_namespaces.clone(),
        own_namespace: args.pod_namespace,
    };
    let source = KubeSource::new(client, watch, discover.then_some(pusher));
    tokio::spawn(registry.follow_source(Box::new(source)));

    let drain = DrainOptions { quiet_period: args.drain_quiet_period, deadline: args.drain_deadline };
    let data = SocketAddr::new(args.bind_address, args.data_port);
    let metrics_addr = SocketAddr::new(args.bind_address, args.metrics_port);
    let server = Server::bind(activator, data, metrics_addr, drain)
        .await
        .map_err(|e| format!("cannot listen on {data} and {metrics_addr}: {e}"))?;
    let (data, metrics_addr) = server.addresses();
    println!("{{\"data\":\"{data}\",\"metrics\":\"{metrics_addr}\"}}");
    tracing::info!(autoscaler_port = AUTOSCALER_INGEST_PORT, "streaming stats to the autoscalers");
    server
        .run(async {
            let stop = ebb_process::signal::shutdown().await;
            tracing::info!("{stop}: draining");
        })
        .await;
    Ok(())
}
