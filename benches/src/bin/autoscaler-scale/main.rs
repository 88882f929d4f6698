//! The autoscaler at scale: one replica under N services x M pods, driven through its real interfaces.
//!
//! * `farm`: the simulated queue-proxies (`GET /stats` for every pod address) and activators (the real
//!   activator pusher on the ingest stream); a child of the drivers, told load steps on its standard input.
//! * `engine`: the model of the API side. The autoscaler's engine (`ebb_autoscaler::engine::Autoscaler`) is fed
//!   the services and pods directly, as the reconcile pass would from its watches, and acts through a scaler
//!   that records each replica change instead of patching (the patch is the moment the engine hands it over);
//!   scrapes, the ingest server with its token check (answered by a stub TokenReview) and the tick are real.
//! * `cluster`: the whole controller (`ClusterController`) against the real control plane of the test harness:
//!   N Deployments and N x M Ready pods created through the API, every watch, pass, scale patch and
//!   EndpointSlice write real.
//!
//! Both drivers run the autoscaler in their own process and report its CPU per second, resident memory per
//! service, tick durations and the time from a load step to the scale patch, as one JSON line. See
//! benches/README.md, "Autoscaler at scale".

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ebb_autoscaler::cluster::auth::Authenticator;
use ebb_autoscaler::cluster::ingest::Ingest;
use ebb_autoscaler::engine::{Autoscaler, Options, PodTarget, Scaler};
use ebb_benches::scale::addresses::service_name;
use ebb_benches::scale::driver::{
    ANNOTATIONS, DriverArgs, FarmChild, REST_LOAD, STEP_LOAD, Shape, fleet, metric_sum, note_fd_limit,
    scrape_errors,
};
use ebb_benches::scale::farm::{self, Loads};
use ebb_benches::scale::measure::{cpu_time, ms, quantile, status_kib};
use ebb_config::{GlobalConfig, Mode, ServiceId, resolve_service};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

mod cluster;

#[derive(Parser, Debug)]
#[command(about = "The autoscaler under N services x M pods, through its real interfaces")]
struct Cli {
    #[command(subcommand)]
    command: Mode_,
}

#[derive(Subcommand, Debug)]
enum Mode_ {
    /// The simulated queue-proxies and activators (started by the drivers).
    Farm(FarmArgs),
    /// The engine with a model of the API side.
    Engine(DriverArgs),
    /// The whole controller against the test harness's real control plane.
    Cluster(DriverArgs),
}

#[derive(Args, Debug)]
struct FarmArgs {
    #[command(flatten)]
    shape: Shape,
    /// The autoscaler replicas' ingest addresses.
    #[arg(long, value_delimiter = ',')]
    ingest: Vec<SocketAddr>,
    /// A file holding the activators' bearer token.
    #[arg(long)]
    token_file: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The autoscaler's log, when asked for (`RUST_LOG=ebb_autoscaler=info`): what a run that misses a step did.
    if std::env::var_os("RUST_LOG").is_some() {
        ebb_process::logging::init(Some(ebb_process::logging::LogFormat::Text));
    }
    ebb_process::limits::raise_open_files();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Mode_::Farm(args) => runtime.block_on(run_farm(args)),
        Mode_::Engine(args) => runtime.block_on(run_engine(args)),
        Mode_::Cluster(args) => runtime.block_on(cluster::run(args)),
    }
}

async fn run_farm(args: FarmArgs) -> Result<()> {
    let fleet = fleet(&args.shape);
    let loads = Loads::new(fleet.services, REST_LOAD);
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    // A deep backlog: every pod is connected to at once on the first scrape.
    let listener = {
        let std = listener.into_std()?;
        let socket = socket2::Socket::from(std);
        socket.listen(65_535)?;
        TcpListener::from_std(socket.into())?
    };
    println!("port {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    tokio::spawn(farm::serve_stats(listener, fleet, loads.clone()));
    let activators = farm::Activators {
        count: args.shape.activators,
        every: args.shape.activator_every,
        ingest: args.ingest,
        token_file: args.token_file,
        namespace: args.shape.namespace.clone(),
    };
    if activators.count > 0 {
        tokio::spawn(farm::push_activator_stats(fleet, loads.clone(), activators));
    }
    // Commands on standard input: `load SERVICE CONCURRENCY`; end of input ends the farm.
    let (tx, mut rx) = mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["load", service, value] = words[..] {
            loads.set(service.parse()?, value.parse()?);
        }
    }
    Ok(())
}

/// The model of the API side's writes: every replica change, with when the engine handed it over.
#[derive(Default)]
struct RecordingScaler {
    changes: Mutex<Vec<(ServiceId, u32, Instant)>>,
}

impl Scaler for RecordingScaler {
    fn set_replicas(&self, service: &ServiceId, replicas: u32) {
        self.changes.lock().unwrap().push((service.clone(), replicas, Instant::now()));
    }
    fn set_mode(&self, _service: &ServiceId, _mode: Mode) {}
    fn activator_in_path(&self, _service: &ServiceId) -> bool {
        false
    }
}

impl RecordingScaler {
    fn first_change(&self, id: &ServiceId, after: Instant, above: u32) -> Option<(u32, Instant)> {
        let changes = self.changes.lock().unwrap();
        changes.iter().find(|(s, n, at)| s == id && *at >= after && *n > above).map(|(_, n, at)| (*n, *at))
    }
}

/// A kube client whose only answer is a TokenReview that authenticates every token as the first activator
/// identity: the engine model has no API server, and the token check is one review per stream anyway.
fn token_review_stub(identity: String) -> kube::Client {
    let service = tower::service_fn(move |_request: http::Request<kube::client::Body>| {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
            "status": {"authenticated": true, "user": {"username": identity}},
        });
        async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(201)
                    .body(kube::client::Body::from(body.to_string().into_bytes()))
                    .unwrap(),
            )
        }
    });
    kube::Client::new(service, "default")
}

fn service_config() -> ebb_config::ServiceConfig {
    let annotations: BTreeMap<String, String> =
        ANNOTATIONS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    resolve_service(&annotations, &GlobalConfig::default()).expect("valid annotations").value
}

async fn run_engine(args: DriverArgs) -> Result<()> {
    let shape = &args.shape;
    let fleet = fleet(shape);
    note_fd_limit(fleet);
    let me = std::process::id();
    if let Some(path) = &args.pid_file {
        std::fs::write(path, me.to_string())?;
    }
    let ingest_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let ingest_addr = ingest_listener.local_addr()?;
    let dir = std::env::temp_dir().join(format!("ebb-autoscaler-scale-{me}"));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, "bench-token")?;
    let mut farm = FarmChild::start(shape, &[ingest_addr], &token_file)?;

    let scaler = Arc::new(RecordingScaler::default());
    let autoscaler = Autoscaler::new(scaler.clone(), Options::default());
    let rss_empty = status_kib(me, "VmRSS").unwrap_or(0);
    let config = service_config();
    let started = Instant::now().checked_sub(Duration::from_secs(600)).unwrap_or_else(Instant::now);
    for s in 0..fleet.services {
        let id = ServiceId::new(shape.namespace.clone(), service_name(s));
        autoscaler.set_service(id.clone(), config.clone(), fleet.pods as u32)?;
        let pods = (0..fleet.pods)
            .map(|p| PodTarget {
                name: ebb_benches::scale::addresses::pod_name(s, p),
                stats: Some(SocketAddr::new(IpAddr::V4(fleet.address(s, p)), farm.port)),
                ready: true,
                terminating: false,
                started,
            })
            .collect();
        autoscaler.set_pods(&id, pods);
    }
    let rss_services = status_kib(me, "VmRSS").unwrap_or(0);

    let identity = format!("system:serviceaccount:{}:ebb-activator", shape.namespace);
    let auth = Arc::new(Authenticator::new(token_review_stub(identity.clone()), vec![identity]));
    let (frames_tx, mut frames) = mpsc::channel(4096);
    let (_stop_tx, stop) = watch::channel(false);
    let ingest = Ingest::new(auth, frames_tx, Arc::new(|_frame| {}));
    tokio::spawn(ingest.serve(ingest_listener, stop));

    // The engine's own loop (`Autoscaler::run`), with each collection and tick timed.
    let collections = Arc::new(Mutex::new(Vec::<(Instant, Duration)>::new()));
    {
        let (autoscaler, collections) = (autoscaler.clone(), collections.clone());
        let mut interval = tokio::time::interval(Options::default().scrape_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(async move {
            loop {
                interval.tick().await;
                let began = Instant::now();
                autoscaler.collect().await;
                collections.lock().unwrap().push((began, began.elapsed()));
            }
        });
    }
    let ticks = Arc::new(Mutex::new(Vec::<(Instant, Duration)>::new()));
    {
        let (autoscaler, ticks) = (autoscaler.clone(), ticks.clone());
        let mut interval = tokio::time::interval(Options::default().tick_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = frames.recv() => match frame {
                        Some(frame) => autoscaler.ingest(frame),
                        None => return,
                    },
                    _ = interval.tick() => {
                        let began = Instant::now();
                        autoscaler.tick();
                        ticks.lock().unwrap().push((began, began.elapsed()));
                    }
                }
            }
        });
    }

    eprintln!("{} services x {} pods; warming up {} s", fleet.services, fleet.pods, args.warmup);
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let measure_from = Instant::now();
    let cpu_from = cpu_time(me).context("cpu time")?;
    let errors_from = scrape_errors(&autoscaler.encode_metrics());
    let farm_cpu_from = cpu_time(farm.child.id()).unwrap_or_default();
    let mut steps = Vec::new();
    let step_every = Duration::from_secs(args.measure) / (args.steps as u32 + 1);
    for k in 0..args.steps {
        tokio::time::sleep(step_every.saturating_sub(Duration::from_secs(0))).await;
        let service = 1 + k * (fleet.services / args.steps.max(1));
        let id = ServiceId::new(shape.namespace.clone(), service_name(service));
        let stepped = Instant::now();
        farm.set_load(service, STEP_LOAD)?;
        let deadline = stepped + Duration::from_secs(20);
        let patched = loop {
            if let Some(change) = scaler.first_change(&id, stepped, fleet.pods as u32) {
                break Some(change);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        farm.set_load(service, REST_LOAD)?;
        match patched {
            Some((replicas, at)) => steps.push((service, replicas, at - stepped)),
            None => eprintln!("step on {service}: no scale-up within 20 s"),
        }
    }
    let remaining = Duration::from_secs(args.measure).saturating_sub(measure_from.elapsed());
    tokio::time::sleep(remaining).await;
    let elapsed = measure_from.elapsed();
    let cpu = cpu_time(me).context("cpu time")? - cpu_from;
    let farm_cpu = cpu_time(farm.child.id()).unwrap_or_default() - farm_cpu_from;
    let rss = status_kib(me, "VmRSS").unwrap_or(0);
    let hwm = status_kib(me, "VmHWM").unwrap_or(0);

    let window = |samples: &Mutex<Vec<(Instant, Duration)>>| -> Vec<Duration> {
        samples.lock().unwrap().iter().filter(|(at, _)| *at >= measure_from).map(|(_, d)| *d).collect()
    };
    let (ticks, collections) = (window(&ticks), window(&collections));
    let q = |s: &[Duration], p: f64| quantile(s, p).map_or(f64::NAN, ms);
    let metrics = autoscaler.encode_metrics();
    let latencies: Vec<Duration> = steps.iter().map(|(_, _, d)| *d).collect();
    let result = serde_json::json!({
        "mode": "engine",
        // The allocator's settings (the manifest's are in benches/README.md): they move resident memory.
        "glibc_tunables": std::env::var("GLIBC_TUNABLES").ok(),
        "services": fleet.services,
        "pods_per_service": fleet.pods,
        "activators": shape.activators,
        "activator_every": shape.activator_every,
        "measured_s": elapsed.as_secs_f64(),
        "cpu_cores": cpu.as_secs_f64() / elapsed.as_secs_f64(),
        "farm_cpu_cores": farm_cpu.as_secs_f64() / elapsed.as_secs_f64(),
        "rss_mib": rss as f64 / 1024.0,
        "hwm_mib": hwm as f64 / 1024.0,
        "rss_empty_mib": rss_empty as f64 / 1024.0,
        "kib_per_service": (rss.saturating_sub(rss_empty)) as f64 / fleet.services as f64,
        "kib_per_service_before_scraping": (rss_services.saturating_sub(rss_empty)) as f64 / fleet.services as f64,
        "ticks": ticks.len(),
        "tick_p50_ms": q(&ticks, 0.5),
        "tick_p99_ms": q(&ticks, 0.99),
        "tick_max_ms": q(&ticks, 1.0),
        "collections": collections.len(),
        "collect_p50_ms": q(&collections, 0.5),
        "collect_p99_ms": q(&collections, 0.99),
        "steps": steps.len(),
        "step_to_patch_ms": latencies.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "step_to_patch_max_ms": q(&latencies, 1.0),
        "scrape_errors_measured": scrape_errors(&metrics) - errors_from,
        "scrape_connections_kept": metric_sum(&metrics, "ebb_autoscaler_scrape_connections_kept"),
        "scrape_connections_limit": metric_sum(&metrics, "ebb_autoscaler_scrape_connections_limit"),
    });
    println!("{result}");
    drop(farm);
    let _ = std::fs::remove_dir_all(&dir);
    if steps.len() < args.steps {
        bail!("{} of {} load steps never scaled", args.steps - steps.len(), args.steps);
    }
    Ok(())
}
