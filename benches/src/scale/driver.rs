//! What both drivers of `autoscaler-scale` share: the fleet's shape and the run's length ([`DriverArgs`]), the
//! load at rest and in a step, the farm child ([`FarmChild`]) and the process limits the run needs.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context, Result};
use clap::Args;

use super::addresses::Fleet;

/// The fleet and its activators.
#[derive(Args, Debug, Clone)]
pub struct Shape {
    /// Services.
    #[arg(long, default_value_t = 10_000)]
    pub services: usize,
    /// Pods per service.
    #[arg(long, default_value_t = 3)]
    pub pods: usize,
    /// Activators pushing stats.
    #[arg(long, default_value_t = 2)]
    pub activators: usize,
    /// One service in this many has traffic through the activators (a frame a second from each).
    #[arg(long, default_value_t = 10)]
    pub activator_every: usize,
    /// The services' namespace.
    #[arg(long, default_value = "bench")]
    pub namespace: String,
}

/// A driver's run.
#[derive(Args, Debug)]
pub struct DriverArgs {
    #[command(flatten)]
    pub shape: Shape,
    /// Seconds before measuring (windows fill, connections open).
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 60)]
    pub measure: u64,
    /// Load steps during the measurement (each on another service).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Where to write the perf-friendly pid file (the driver's pid, for `perf record -p`).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
}

/// Per-pod concurrency at rest: 3 pods x 6 over a target of 7 per pod (10 at 70 %) keeps 3 pods.
pub const REST_LOAD: f64 = 6.0;
/// Per-pod concurrency of a load step: 3 x 60 = 180, which wants 26 pods.
pub const STEP_LOAD: f64 = 60.0;
/// The annotations of every service.
pub const ANNOTATIONS: [(&str, &str); 1] = [("autoscaling.knative.dev/target", "10")];

/// Says so when the fleet has more pods than this process may keep connections to: the autoscaler then
/// scrapes the others on a new connection each second (`ebb_autoscaler_scrape_connections_limit`), and the run
/// measures that cost too. The farm child keeps the other end of each kept connection.
pub fn note_fd_limit(fleet: Fleet) {
    let keep = ebb_autoscaler::engine::kept_connections_allowed();
    if fleet.total_pods() > keep {
        eprintln!(
            "{} pods, and this process may keep {keep} connections: {} pods are scraped on a new connection each \
             second",
            fleet.total_pods(),
            fleet.total_pods() - keep
        );
    }
}

/// The fleet of `shape`.
pub fn fleet(shape: &Shape) -> Fleet {
    Fleet { services: shape.services, pods: shape.pods }
}

/// The farm child, its stats port and the pipe its load steps go down.
pub struct FarmChild {
    /// The farm process.
    pub child: Child,
    stdin: ChildStdin,
    /// Where it answers `GET /stats` on every pod address.
    pub port: u16,
}

impl FarmChild {
    /// Starts the farm (this executable's `farm` command) for `shape`, pushing to `ingest`.
    pub fn start(shape: &Shape, ingest: &[SocketAddr], token_file: &std::path::Path) -> Result<Self> {
        let ingest: Vec<String> = ingest.iter().map(ToString::to_string).collect();
        let mut child = Command::new(std::env::current_exe()?)
            .arg("farm")
            .args(["--services", &shape.services.to_string(), "--pods", &shape.pods.to_string()])
            .args(["--activators", &shape.activators.to_string()])
            .args(["--activator-every", &shape.activator_every.to_string()])
            .args(["--namespace", &shape.namespace, "--ingest", &ingest.join(",")])
            .arg("--token-file")
            .arg(token_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the farm")?;
        let stdin = child.stdin.take().context("farm stdin")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("farm stdout")?).read_line(&mut line)?;
        let port = line.trim().strip_prefix("port ").context("the farm's port")?.parse()?;
        Ok(Self { child, stdin, port })
    }

    /// Sets every pod of `service` to `concurrency`.
    pub fn set_load(&mut self, service: usize, concurrency: f64) -> Result<()> {
        writeln!(self.stdin, "load {service} {concurrency}")?;
        Ok(self.stdin.flush()?)
    }
}

impl Drop for FarmChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of the engine's `scrape_errors` counters.
pub fn scrape_errors(metrics: &str) -> f64 {
    metric_sum(metrics, "ebb_autoscaler_scrape_errors_total").unwrap_or(0.0)
}

/// A metric on a metrics page, summed over its series; `None` when the page has none (a controller from
/// before the metric existed).
pub fn metric_sum(page: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with(['{', ' ']))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
