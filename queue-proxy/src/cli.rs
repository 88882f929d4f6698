//! The command line (`queue-proxy` and `ebb queue-proxy`): every option is a flag with an `EBB_*`
//! environment variable, as `ebb inject` writes them. Invalid configuration is reported on stderr with the
//! flag, the value and what is accepted, and the process exits with code 2.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ebb_config::Protocol;
use ebb_config::names::{
    QUEUE_PROXY_ADMIN_PORT, QUEUE_PROXY_DATA_PORT, QUEUE_PROXY_METRICS_PORT, QUEUE_PROXY_STATS_PORT,
};
use ebb_config::sidecar::{self, env};
use ebb_config::value::MAX_DURATION;
use ebb_config::wire::MAX_SERVICE_NAME_LEN;
use ebb_http::proxy::ForwarderOptions;
use ebb_http::timeouts::Timeouts;
use ebb_process::logging::{self, LogArgs};
use ebb_process::{exit, flags};
use http::uri::Authority;

use crate::config::{Config, ConfigError, Ports, check_name, parse_upstream};
use crate::probe::{ProbeOptions, ProbeTarget};
use crate::server::QueueProxy;

/// Options of the queue-proxy.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address of the user container, HOST:PORT.
    #[arg(long, env = env::UPSTREAM, default_value = "127.0.0.1:8080", value_parser = parse_upstream)]
    pub upstream: Authority,

    /// Address every port binds to (local mode gives each pod its own 127.0.0.N).
    #[arg(long, env = env::BIND_ADDRESS, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Data port: requests for the user container (0 = any free port).
    #[arg(long, env = env::DATA_PORT, default_value_t = QUEUE_PROXY_DATA_PORT)]
    pub data_port: u16,

    /// Admin port: readiness, liveness and /wait-for-drain (0 = any free port).
    #[arg(long, env = env::ADMIN_PORT, default_value_t = QUEUE_PROXY_ADMIN_PORT)]
    pub admin_port: u16,

    /// Stats port: GET /stats for the autoscaler (0 = any free port).
    #[arg(long, env = env::STATS_PORT, default_value_t = QUEUE_PROXY_STATS_PORT)]
    pub stats_port: u16,

    /// Prometheus port (0 = any free port).
    #[arg(long, env = env::METRICS_PORT, default_value_t = QUEUE_PROXY_METRICS_PORT)]
    pub metrics_port: u16,

    /// Most requests in flight to the user container; 0 = unlimited.
    #[arg(long, env = env::CONTAINER_CONCURRENCY, default_value_t = 0)]
    pub container_concurrency: u32,

    /// Requests that may wait for a slot beyond the limit [default: 10 x container concurrency].
    #[arg(long, env = env::QUEUE_DEPTH)]
    pub queue_depth: Option<u32>,

    /// Total request timeout, queueing included (300s, 1m30s, or whole seconds).
    #[arg(long, env = env::TIMEOUT, default_value = "300s", value_parser = flags::duration)]
    pub timeout: Duration,

    /// Time allowed until the response starts [default: --timeout].
    #[arg(long, env = env::RESPONSE_START_TIMEOUT, value_parser = flags::duration)]
    pub response_start_timeout: Option<Duration>,

    /// Longest time the upstream may send nothing (before the response headers, then between body chunks);
    /// 0 = off.
    #[arg(long, env = env::IDLE_TIMEOUT, default_value = "0", value_parser = flags::duration)]
    pub idle_timeout: Duration,

    /// Longest time the client may send nothing while its request body is still coming (answered 408); 0 = off
    /// [default: 60s, or --timeout when shorter].
    #[arg(long, env = env::REQUEST_BODY_TIMEOUT, value_parser = flags::duration)]
    pub request_body_timeout: Option<Duration>,

    /// Upstream protocol, `http1` or `h2c` [default: the client's].
    #[arg(long, env = env::PROTOCOL, value_parser = str::parse::<Protocol>)]
    pub protocol: Option<Protocol>,

    /// HTTP path to probe on the user container (2xx/3xx = ready); without it a TCP connect is the probe.
    #[arg(long, env = env::PROBE_PATH)]
    pub probe_path: Option<String>,

    /// Probe period while starting up.
    #[arg(long, env = env::PROBE_PERIOD, default_value = "10ms", value_parser = flags::duration)]
    pub probe_period: Duration,

    /// How long to probe at --probe-period before backing off. As long as the default activation timeout:
    /// a model that loads for minutes is seen ready within --probe-period, and a loopback probe costs
    /// microseconds.
    #[arg(long, env = env::PROBE_AGGRESSIVE_FOR, default_value = "600s", value_parser = flags::duration)]
    pub probe_aggressive_for: Duration,

    /// Longest probe period after backing off.
    #[arg(long, env = env::PROBE_MAX_PERIOD, default_value = "1s", value_parser = flags::duration)]
    pub probe_max_period: Duration,

    /// Time allowed for one probe.
    #[arg(long, env = env::PROBE_TIMEOUT, default_value = "1s", value_parser = flags::duration)]
    pub probe_timeout: Duration,

    /// While draining, exit once nothing is in flight and nothing arrived for this long [default: 30s].
    #[arg(long, env = env::DRAIN_QUIET_PERIOD, value_parser = flags::duration)]
    pub drain_quiet_period: Option<Duration>,

    /// Longest drain [default: --timeout + --drain-quiet-period].
    #[arg(long, env = env::DRAIN_DEADLINE, value_parser = flags::duration)]
    pub drain_deadline: Option<Duration>,

    /// This pod's name, reported in stats [default: $HOSTNAME].
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,

    /// Namespace of the service this pod serves.
    #[arg(long, env = env::SERVICE_NAMESPACE, default_value = "default")]
    pub service_namespace: String,

    /// Name of the service (Deployment) this pod serves.
    #[arg(long, env = env::SERVICE_NAME, default_value = "unknown")]
    pub service_name: String,

    /// `Retry-After` sent with 503s.
    #[arg(long, env = env::RETRY_AFTER, default_value = "1s", value_parser = flags::duration)]
    pub retry_after: Duration,

    /// Tokio worker threads (a sidecar needs few).
    #[arg(long, env = env::WORKER_THREADS, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,

    /// `--log-format`.
    #[command(flatten)]
    pub log: LogArgs,

    /// Also write the bound addresses (the JSON line printed on stdout) to this file, atomically.
    #[arg(long, env = env::READY_FILE)]
    pub ready_file: Option<PathBuf>,
}

impl Args {
    /// Resolves defaults and checks the values.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let drain_quiet_period = self.drain_quiet_period.unwrap_or(sidecar::DEFAULT_DRAIN_QUIET_PERIOD);
        let pod_name = match self.pod_name.filter(|p| !p.is_empty()) {
            Some(name) => name,
            None => std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "queue-proxy".into()),
        };
        check_name("--service-namespace", &self.service_namespace, 63)?;
        check_name("--service-name", &self.service_name, MAX_SERVICE_NAME_LEN)?;
        let queue_depth = self.queue_depth.unwrap_or_else(|| self.container_concurrency.saturating_mul(10));
        let config = Config {
            probe: ProbeOptions {
                target: match self.probe_path {
                    Some(path) => ProbeTarget::Http { path },
                    None => ProbeTarget::Tcp,
                },
                upstream: self.upstream.clone(),
                initial_period: self.probe_period,
                aggressive_for: self.probe_aggressive_for,
                max_period: self.probe_max_period,
                timeout: self.probe_timeout,
            },
            upstream: self.upstream,
            bind_address: self.bind_address,
            ports: Ports {
                data: self.data_port,
                admin: self.admin_port,
                stats: self.stats_port,
                metrics: self.metrics_port,
            },
            container_concurrency: self.container_concurrency,
            queue_depth,
            timeouts: Timeouts {
                total: self.timeout,
                response_start: self.response_start_timeout.unwrap_or(self.timeout),
                idle: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
                request_body: Some(
                    self.request_body_timeout
                        .unwrap_or(ebb_config::DEFAULT_REQUEST_BODY_TIMEOUT.min(self.timeout)),
                )
                .filter(|d| !d.is_zero()),
            },
            protocol: self.protocol,
            drain_quiet_period,
            // Capped, so that an accepted timeout and quiet period never make an unacceptable default.
            drain_deadline: self
                .drain_deadline
                .unwrap_or_else(|| self.timeout.saturating_add(drain_quiet_period).min(MAX_DURATION)),
            pod_name,
            service: format!("{}/{}", self.service_namespace, self.service_name),
            retry_after: self.retry_after,
            forwarder: ForwarderOptions::default(),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Runs the queue-proxy until it has drained after SIGTERM or SIGINT. Builds its own runtime.
pub fn run(args: Args) -> ExitCode {
    let workers = args.worker_threads as usize;
    let log_format = args.log.format;
    let ready_file = args.ready_file.clone();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("queue-proxy: invalid configuration: {err}");
            return ExitCode::from(exit::USAGE);
        }
    };
    logging::init(log_format);
    ebb_process::limits::raise_and_log();
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("queue-proxy: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let proxy = QueueProxy::bind(config).await?;
        let line = proxy.addresses().to_json();
        {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }
        if let Some(path) = &ready_file {
            write_atomically(path, &line)
                .map_err(|err| crate::server::ServeError::ReadyFile(path.clone(), err))?;
        }
        proxy
            .run(async {
                let stop = ebb_process::signal::shutdown().await;
                tracing::info!("{stop}: draining");
            })
            .await
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("queue-proxy failed: {err}");
            eprintln!("queue-proxy: {err}");
            ExitCode::FAILURE
        }
    }
}

fn write_atomically(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{line}\n"))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let argv = std::iter::once("queue-proxy").chain(extra.iter().copied());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.args.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = parse(&["--pod-name", "p"]).unwrap();
        assert_eq!(c.upstream.as_str(), "127.0.0.1:8080");
        assert_eq!((c.ports.data, c.ports.admin, c.ports.stats, c.ports.metrics), (8012, 8022, 9090, 9091));
        assert_eq!(c.timeouts.total, Duration::from_secs(300));
        assert_eq!(c.timeouts.response_start, Duration::from_secs(300));
        assert_eq!(c.timeouts.idle, None);
        assert_eq!(c.drain_deadline, Duration::from_secs(330));
        let c = parse(&["--pod-name", "p", "--container-concurrency", "4", "--timeout", "1m30s"]).unwrap();
        assert_eq!((c.container_concurrency, c.queue_depth), (4, 40));
        assert_eq!(c.timeouts.total, Duration::from_secs(90));
    }

    #[test]
    fn bad_values_are_named_with_what_is_accepted() {
        let err = parse(&["--timeout", "soon"]).unwrap_err();
        assert!(err.contains("--timeout") && err.contains("1m30s"), "{err}");
        let err = parse(&["--upstream", "localhost"]).unwrap_err();
        assert!(err.contains("no port"), "{err}");
        let err = parse(&["--protocol", "h3"]).unwrap_err();
        assert!(err.contains("http1 or h2c"), "{err}");
        let err = parse(&["--pod-name", "p", "--timeout", "0"]).unwrap_err();
        assert!(err.contains("--timeout: must be more than 0"), "{err}");
        let err = parse(&["--pod-name", "p", "--probe-path", "healthz"]).unwrap_err();
        assert!(err.contains("absolute path"), "{err}");
        let err = parse(&["--pod-name", "p", "--admin-port", "8012"]).unwrap_err();
        assert!(err.contains("8012 is given twice"), "{err}");
    }

    #[test]
    fn durations_beyond_a_year_are_refused_by_name_without_overflowing() {
        let huge = u64::MAX.to_string();
        for option in [
            "--timeout",
            "--response-start-timeout",
            "--idle-timeout",
            "--request-body-timeout",
            "--probe-period",
            "--probe-aggressive-for",
            "--probe-max-period",
            "--probe-timeout",
            "--drain-quiet-period",
            "--drain-deadline",
            "--retry-after",
        ] {
            let err = parse(&["--pod-name", "p", option, &huge]).unwrap_err();
            assert!(err.starts_with(&format!("{option}: ")), "{option}: {err}");
            assert!(err.contains("too long") && err.contains("at most 8760h"), "{option}: {err}");
        }
        let err = parse(&["--pod-name", "p", "--timeout", "8761h"]).unwrap_err();
        assert!(err.contains("--timeout: 8761h is too long"), "{err}");
        // A year is accepted, and the default drain deadline (timeout + quiet period) is capped at a year.
        let c = parse(&["--pod-name", "p", "--timeout", "8760h", "--drain-quiet-period", "8760h"]).unwrap();
        assert_eq!(c.drain_deadline, MAX_DURATION);
    }
}
