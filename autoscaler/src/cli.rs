//! The command line of the Kubernetes autoscaler (`autoscaler` and `ebb autoscaler`): every option is a flag
//! with an environment variable, as the manifests set them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ebb_config::names::{AUTOSCALER_INGEST_PORT, AUTOSCALER_METRICS_PORT, QUEUE_PROXY_STATS_PORT};
use ebb_process::exit;
use ebb_process::logging::{self, LogArgs};

use crate::cluster::{ClusterController, Options};

/// Options of the autoscaler.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The autoscaler's namespace (config-autoscaler, the Lease and the activators live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ebb-system")]
    pub namespace: String,

    /// This replica's identity in the Lease [default: the host name].
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Namespaces to autoscale, comma-separated [default: all].
    #[arg(long, env = "EBB_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,

    /// The stat ingest's address.
    #[arg(long, env = "EBB_INGEST_ADDRESS", default_value_t = SocketAddr::from(([0, 0, 0, 0], AUTOSCALER_INGEST_PORT)))]
    pub ingest_address: SocketAddr,

    /// The metrics and health address.
    #[arg(long, env = "EBB_METRICS_ADDRESS", default_value_t = SocketAddr::from(([0, 0, 0, 0], AUTOSCALER_METRICS_PORT)))]
    pub metrics_address: SocketAddr,

    /// Identities allowed to send stats, comma-separated [default: system:serviceaccount:NAMESPACE:ebb-activator].
    #[arg(long, env = "EBB_INGEST_IDENTITIES", value_delimiter = ',')]
    pub ingest_identities: Vec<String>,

    /// Label selector of the activator pods in the autoscaler's namespace.
    #[arg(long, env = "EBB_ACTIVATOR_SELECTOR")]
    pub activator_selector: Option<String>,

    /// The queue-proxy's stats port on each pod.
    #[arg(long, env = "EBB_POD_STATS_PORT", default_value_t = QUEUE_PROXY_STATS_PORT)]
    pub pod_stats_port: u16,

    /// The Lease's duration in seconds (failover takes about this long plus one second).
    #[arg(long, env = "EBB_LEASE_DURATION_SECONDS", default_value_t = 10)]
    pub lease_duration_seconds: u64,

    /// A kubeconfig file [default: in-cluster, then $KUBECONFIG or ~/.kube/config].
    #[arg(long, env = "EBB_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// `--log-format`.
    #[command(flatten)]
    pub log: LogArgs,
}

impl Args {
    /// The controller's options.
    pub fn options(&self) -> Result<Options, String> {
        if self.lease_duration_seconds < 4 {
            return Err(format!(
                "--lease-duration-seconds {}: must be at least 4",
                self.lease_duration_seconds
            ));
        }
        let identity = self.identity.clone().unwrap_or_else(hostname);
        let mut options = Options::new(&self.namespace, identity);
        options.watch_namespaces = self.watch_namespaces.iter().filter(|n| !n.is_empty()).cloned().collect();
        options.ingest_addr = self.ingest_address;
        options.metrics_addr = self.metrics_address;
        if !self.ingest_identities.is_empty() {
            options.ingest_identities = self.ingest_identities.clone();
        }
        if let Some(selector) = &self.activator_selector {
            options.activator_selector = selector.clone();
        }
        options.pod_stats_port = self.pod_stats_port;
        options.lease_duration = Duration::from_secs(self.lease_duration_seconds);
        Ok(options)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("autoscaler-{}", std::process::id()))
}

/// A kube client from `path`, or from the environment.
async fn client(path: Option<&PathBuf>) -> Result<kube::Client, String> {
    let config = match path {
        Some(path) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| e.to_string())?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// Runs the autoscaler until SIGTERM or SIGINT, then releases the Lease. Builds its own runtime.
pub fn run(args: Args) -> ExitCode {
    logging::init(args.log.format);
    let options = match args.options() {
        Ok(options) => options,
        Err(err) => {
            eprintln!("autoscaler: invalid configuration: {err}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("autoscaler: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = runtime.block_on(async move {
        let client = client(args.kubeconfig.as_ref()).await?;
        let controller = ClusterController::start(client, options).await.map_err(|e| e.to_string())?;
        println!("{{\"ingest\":\"{}\",\"metrics\":\"{}\"}}", controller.ingest_addr, controller.metrics_addr);
        let stop = ebb_process::signal::shutdown().await;
        tracing::info!("{stop}: releasing the lease and stopping");
        controller.shutdown().await;
        Ok(())
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("autoscaler: {err}");
            ExitCode::FAILURE
        }
    }
}
