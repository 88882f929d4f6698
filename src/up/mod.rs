//! `ebb up`: local mode (docs/architecture.md, "Modes"). The activator is the gateway, the autoscaler runs in
//! process, and every pod is a queue-proxy plus the service's command on its own 127.0.0.N, run by an
//! `ebb pod-supervisor` so that nothing outlives `ebb up`.
//!
//! - [`config`]: `ebb.yaml` and the default demo service;
//! - [`pods`]: starting, draining and replacing pod processes;
//! - [`backoff`]: the delay before replacing pods that keep failing;
//! - [`scaler`]: the autoscaler's decisions applied to the pods and the activator;
//! - [`metrics_port`]: `/metrics`, `/status`, `/service-discovery`, `/debug/decisions`;
//! - [`supervisor`]: the per-pod watchdog process.

mod backoff;
pub mod config;
mod metrics_port;
mod pods;
mod scaler;
pub mod supervisor;

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ebb_activator::endpoints::{Change, ChangeSender, LocalSource};
use ebb_activator::handler::{Activator, Options as ActivatorOptions};
use ebb_activator::metrics::Metrics as ActivatorMetrics;
use ebb_activator::registry::Registry;
use ebb_activator::server::{DrainOptions, Server};
use ebb_activator::stats::ChannelSink;
use ebb_autoscaler::engine::{Autoscaler, Options as AutoscalerOptions};
use ebb_config::ServiceId;
use ebb_config::wire::IngestFrame;
use ebb_process::logging::{self, LogArgs, LogFormat};
use ebb_process::{exit, flags};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::yaml;
use pods::{NAMESPACE, PodManager, PodOptions};

/// Arguments of `ebb up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services to run (see the README); without it, `ebb demo-model` runs as `demo`.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Gateway port (the activator); 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Port of /metrics, /status and /service-discovery; 0 picks a free one.
    #[arg(long, default_value_t = 9090)]
    metrics_port: u16,
    /// Address the gateway binds to (0.0.0.0 serves other machines).
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// Address the metrics port binds to: it shows every service and pod (/status, /debug, /metrics), so it
    /// stays on loopback unless asked.
    #[arg(long, default_value = "127.0.0.1")]
    metrics_address: IpAddr,
    // The pods' queue-proxies log in the same format.
    #[command(flatten)]
    log: LogArgs,
    /// How long a stopping pod may drain before it is killed.
    #[arg(long, default_value = "30s", value_parser = flags::duration)]
    grace_period: Duration,
}

/// Runs `ebb up` until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> ExitCode {
    let log_format = logging::init(args.log.format);
    ebb_process::limits::raise_and_log();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            eprintln!("ebb up: cannot find the ebb binary: {err}");
            return ExitCode::FAILURE;
        }
    };
    let config = match &args.file {
        None => config::default_demo(&exe),
        Some(path) => {
            let text = match std::fs::File::open(path).map_err(yaml::ReadError::Io).and_then(yaml::read_text)
            {
                Ok(text) => text,
                Err(err) => {
                    eprintln!("ebb up: {}: {err}", path.display());
                    return ExitCode::from(exit::USAGE);
                }
            };
            match config::parse(&path.display().to_string(), &text) {
                Ok(config) => config,
                Err(err) => {
                    for line in &err.0 {
                        eprintln!("ebb up: {line}");
                    }
                    return ExitCode::from(exit::USAGE);
                }
            }
        }
    };
    if let Err(err) = check_ports(&args, &config) {
        eprintln!("ebb up: {err}");
        return ExitCode::from(exit::USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ebb up: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(up(args, exe, config, log_format));
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ebb up: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Pods bind their service's port on 127.0.0.N: a gateway or metrics port bound on every address (0.0.0.0 or
/// `::`) takes that port on all of them, and no pod of such a service could ever start.
fn check_ports(args: &Args, config: &config::UpConfig) -> Result<(), String> {
    let listeners = [
        ("--bind-address", args.bind_address, "--port", args.port),
        ("--metrics-address", args.metrics_address, "--metrics-port", args.metrics_port),
    ];
    for (address_option, address, option, port) in listeners {
        if !address.is_unspecified() {
            continue;
        }
        for service in &config.services {
            if service.roles.iter().any(|role| role.port == port) {
                return Err(format!(
                    "service {} listens on port {port}, which {address_option} {address} {option} {port} takes on \
                     every address, 127.0.0.N included: give the service another `port:` in ebb.yaml, or {option} \
                     another port",
                    service.name
                ));
            }
        }
    }
    Ok(())
}

async fn up(args: Args, exe: PathBuf, config: config::UpConfig, log_format: LogFormat) -> anyhow::Result<()> {
    let (activator, registry, frames_rx) = gateway_activator(&config);
    let (changes, source) = LocalSource::new();
    tokio::spawn(registry.clone().follow_source(Box::new(source)));

    let log_format = log_format.as_str();
    let pods = PodManager::new(
        PodOptions { exe, grace_period: args.grace_period, log_format },
        config.services.clone(),
        changes.clone(),
        registry.clone(),
    );
    let autoscaler = local_autoscaler(&config, &pods, changes)?;

    // The activator's own metrics port is not used: ours serves its metrics beside the autoscaler's.
    let gateway = SocketAddr::new(args.bind_address, args.port);
    let internal = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0);
    let drain = DrainOptions { quiet_period: Duration::from_millis(200), deadline: args.grace_period };
    let server = Server::bind(activator.clone(), gateway, internal, drain)
        .await
        .with_context(|| format!("cannot bind the gateway on {gateway}"))?;
    let gateway = server.addresses().0;
    let metrics_addr = SocketAddr::new(args.metrics_address, args.metrics_port);
    let metrics_listener = TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("cannot bind the metrics port on {metrics_addr}"))?;
    let metrics_addr = metrics_listener.local_addr()?;
    let state = Arc::new(metrics_port::State {
        autoscaler: autoscaler.clone(),
        activator,
        pods: pods.clone(),
        gateway,
    });
    let http_task = tokio::spawn(metrics_port::serve(metrics_listener, state));

    follow_readiness(&pods, &registry);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let autoscaler_task = tokio::spawn(autoscaler.clone().run(frames_rx, async {
        let _ = stop_rx.await;
    }));
    let (gateway_stop, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway_task = tokio::spawn(server.run(async {
        let _ = gateway_stopped.await;
    }));

    announce(gateway, metrics_addr, &pods);

    ebb_process::signal::shutdown().await;
    tracing::info!("shutting down: draining the gateway, then the pods (Ctrl-C again to kill at once)");
    let graceful = async {
        let _ = gateway_stop.send(());
        let _ = gateway_task.await;
        let _ = stop_tx.send(());
        let _ = autoscaler_task.await;
        pods.shutdown(args.grace_period + Duration::from_secs(2)).await;
    };
    tokio::select! {
        () = graceful => tracing::info!("all pods stopped"),
        _ = ebb_process::signal::shutdown() => {
            tracing::warn!("second signal: killing the pods");
            pods.kill_remaining();
        }
    }
    http_task.abort();
    Ok(())
}

/// The gateway: an activator whose registry holds every service, and the stats it sends the autoscaler.
fn gateway_activator(
    config: &config::UpConfig,
) -> (Arc<Activator>, Arc<Registry>, mpsc::Receiver<IngestFrame>) {
    let activator_metrics = Arc::new(ActivatorMetrics::new());
    let registry = Arc::new(Registry::new(true, 10_000, activator_metrics.clone()));
    let (frames, frames_rx) = mpsc::channel(4096);
    let activator = Arc::new(Activator::new(
        registry.clone(),
        Arc::new(ChannelSink::new(frames)),
        activator_metrics,
        ActivatorOptions {
            name: "ebb-up".into(),
            max_queued_total: 10_000,
            retry_after: Duration::from_secs(1),
        },
    ));
    for service in &config.services {
        let key = ServiceId::new(NAMESPACE, &service.name);
        registry.apply(Change::Service { key, config: service.config.data_plane.clone() });
    }
    (activator, registry, frames_rx)
}

/// The autoscaler, in process: its decisions scale the local pods.
fn local_autoscaler(
    config: &config::UpConfig,
    pods: &Arc<PodManager>,
    changes: ChangeSender,
) -> anyhow::Result<Arc<Autoscaler>> {
    let scaler = Arc::new(scaler::LocalScaler::new(pods.clone(), changes));
    let autoscaler = Autoscaler::new(scaler, AutoscalerOptions::default());
    pods.set_autoscaler(&autoscaler);
    for service in &config.services {
        let id = ServiceId::new(NAMESPACE, &service.name);
        autoscaler
            .set_service(id, service.config.clone(), 0)
            .with_context(|| format!("service {}", service.name))?;
    }
    Ok(autoscaler)
}

/// Readiness as the activator's probes find it, for the autoscaler's ready counts.
fn follow_readiness(pods: &Arc<PodManager>, registry: &Registry) {
    for name in pods.service_names() {
        let key = ServiceId::new(NAMESPACE, &name);
        let Some(service) = registry.get(&key) else { continue };
        let mut watch = service.watch();
        let pods = pods.clone();
        tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                pods.publish_ready(&name);
            }
        });
    }
}

/// The bound addresses, as one JSON line on stdout (for scripts and tests), and a hint in the log.
fn announce(gateway: SocketAddr, metrics_addr: SocketAddr, pods: &PodManager) {
    {
        let line = serde_json::json!({"gateway": gateway.to_string(), "metrics": metrics_addr.to_string()});
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }
    tracing::info!(
        %gateway,
        metrics = %metrics_addr,
        services = ?pods.service_names(),
        "ebb up: try curl -H 'Host: {}' http://{gateway}/...",
        pods.service_names().first().map_or("demo", String::as_str)
    );
}
