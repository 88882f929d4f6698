//! The command line of the Kubernetes autoscaler (`autoscaler` and `ebb autoscaler`): every option is a flag
//! with an environment variable, as the manifests set them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ebb_config::names::{AUTOSCALER_INGEST_PORT, AUTOSCALER_METRICS_PORT, QUEUE_PROXY_STATS_PORT};
use ebb_process::exit;
use ebb_process::logging::{self, LogArgs};

use crate::cluster::webhook::{self, WebhookOptions, certs::Policy};
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

    /// Buckets the services are spread over (each a Lease that one replica holds; every replica of a
    /// Deployment must be given the same count). 1: one leader acts on every service.
    #[arg(long, env = "EBB_BUCKETS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub buckets: u32,

    /// A kubeconfig file [default: in-cluster, then $KUBECONFIG or ~/.kube/config].
    #[arg(long, env = "EBB_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// `--log-format`.
    #[command(flatten)]
    pub log: LogArgs,

    /// Serve the admission webhook that injects the queue-proxy here (HTTPS, `POST /inject`) [default: not
    /// served; the manifests set 0.0.0.0:8443].
    #[arg(long, env = "EBB_WEBHOOK_ADDRESS")]
    pub webhook_address: Option<SocketAddr>,

    /// The webhook's certificates: `ebb` (its own CA, rotated, written into the configuration's caBundle) or
    /// `external` (served as the Secret holds them, e.g. from cert-manager, whose CA injector writes the
    /// caBundle).
    #[arg(long, env = "EBB_WEBHOOK_CERTIFICATES", default_value = "ebb", value_parser = ["ebb", "external"])]
    pub webhook_certificates: String,

    /// The Secret holding the webhook's certificates, in the autoscaler's namespace.
    #[arg(long, env = "EBB_WEBHOOK_SECRET", default_value = webhook::DEFAULT_SECRET)]
    pub webhook_secret: String,

    /// The MutatingWebhookConfiguration whose caBundle the leader writes (with `ebb` certificates).
    #[arg(long, env = "EBB_WEBHOOK_CONFIGURATION", default_value = webhook::DEFAULT_CONFIGURATION)]
    pub webhook_configuration: String,

    /// The Service in front of the webhook (the certificate is made for its DNS names).
    #[arg(long, env = "EBB_WEBHOOK_SERVICE", default_value = webhook::DEFAULT_SERVICE)]
    pub webhook_service: String,

    /// More names or addresses for the certificate, comma-separated (a `clientConfig.url` host).
    #[arg(long, env = "EBB_WEBHOOK_HOSTS", value_delimiter = ',')]
    pub webhook_hosts: Vec<String>,

    /// The lifetime of the webhook's serving certificates (renewed at two thirds).
    #[arg(long, env = "EBB_WEBHOOK_CERT_VALIDITY", default_value = "720h", value_parser = ebb_process::flags::duration)]
    pub webhook_cert_validity: Duration,

    /// The lifetime of the webhook's CA (rotated at two thirds, without a failed call).
    #[arg(long, env = "EBB_WEBHOOK_CA_VALIDITY", default_value = "8760h", value_parser = ebb_process::flags::duration)]
    pub webhook_ca_validity: Duration,

    /// The image of the queue-proxy the webhook injects.
    #[arg(long, env = "EBB_QUEUE_PROXY_IMAGE", default_value = QUEUE_PROXY_IMAGE)]
    pub queue_proxy_image: String,
}

/// The image of every ebb component.
pub const QUEUE_PROXY_IMAGE: &str = "ghcr.io/ebb-dev/ebb:0.1.0";

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
        options.buckets = self.buckets;
        options.webhook = self.webhook_address.map(|address| self.webhook(address)).transpose()?;
        Ok(options)
    }

    fn webhook(&self, address: SocketAddr) -> Result<WebhookOptions, String> {
        if self.webhook_cert_validity < Duration::from_secs(15)
            || self.webhook_ca_validity < Duration::from_secs(30)
        {
            return Err(
                "--webhook-cert-validity must be at least 15s and --webhook-ca-validity at least 30s".into(),
            );
        }
        let issuer = match self.webhook_certificates.as_str() {
            "external" => webhook::Issuer::External,
            _ => webhook::Issuer::Ebb {
                policy: Policy::new(
                    self.webhook_ca_validity,
                    self.webhook_cert_validity,
                    webhook::hosts(&self.webhook_service, &self.namespace, &self.webhook_hosts),
                ),
                configuration: self.webhook_configuration.clone(),
            },
        };
        Ok(WebhookOptions {
            address,
            secret: self.webhook_secret.clone(),
            issuer,
            image: self.queue_proxy_image.clone(),
        })
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
    ebb_process::limits::raise_and_log();
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
        let webhook = controller.webhook_addr.map_or_else(|| "null".to_owned(), |a| format!("\"{a}\""));
        println!(
            "{{\"ingest\":\"{}\",\"metrics\":\"{}\",\"webhook\":{webhook}}}",
            controller.ingest_addr, controller.metrics_addr
        );
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
