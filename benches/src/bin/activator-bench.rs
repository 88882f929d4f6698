//! The activator's cold-path benchmarks, with real sockets:
//!
//! * `cold`: for fresh services at zero, the time from a request's arrival to the activator's stat leaving
//!   it (goal <= 1 ms), and from a pod's endpoint becoming ready (the moment its queue-proxy answered the probe
//!   that made it usable) to the first request reaching that pod (goal <= 2 ms). Prints a markdown table.
//! * `serve`: an activator in proxy mode in front of one ready pod, for `benches/load/data-plane.sh`.
//! * `hold`: an activator in local mode whose service `127.0.0.1` never gets a pod, so every request waits;
//!   `benches/activator/hold.sh` sends it 10,000 requests from a separate process and reads its memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use ebb_activator::endpoints::{Change, PodInfo};
use ebb_activator::handler::{Activator, Options};
use ebb_activator::metrics::Metrics;
use ebb_activator::registry::Registry;
use ebb_activator::server::{DrainOptions, Server};
use ebb_activator::stats::ChannelSink;
use ebb_config::ServiceConfig;
use ebb_config::ServiceId;
use ebb_config::wire::IngestFrame;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Parser)]
#[command(about = "The activator's cold-path and holding benchmarks")]
struct Cli {
    /// Tokio worker threads (the data-plane runner compares one-thread proxies).
    #[arg(long, global = true, default_value_t = 2)]
    worker_threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Cold-path latencies over fresh services.
    Cold {
        /// Services to measure.
        #[arg(long, default_value_t = 200)]
        iterations: usize,
    },
    /// Serve an activator in front of one ready pod (a queue-proxy's data address), for the warm-path benchmark.
    Serve {
        /// The pod's queue-proxy data address.
        #[arg(long)]
        pod: SocketAddr,
    },
    /// Serve an activator whose one service never starts, holding every request (until killed).
    Hold {
        /// Most requests held.
        #[arg(long, default_value_t = 20_000)]
        max_queued: u32,
    },
}

struct Bench {
    addr: SocketAddr,
    metrics: SocketAddr,
    registry: Arc<Registry>,
    stats: mpsc::Receiver<IngestFrame>,
}

async fn activator(max_queued: u32) -> Result<Bench> {
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new(true, max_queued, metrics.clone()));
    let (tx, stats) = mpsc::channel(100_000);
    let options =
        Options { name: "bench".into(), max_queued_total: max_queued, retry_after: Duration::from_secs(1) };
    let activator =
        Arc::new(Activator::new(registry.clone(), Arc::new(ChannelSink::new(tx)), metrics, options));
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let drain = DrainOptions { quiet_period: Duration::ZERO, deadline: Duration::from_secs(1) };
    let server = Server::bind(activator, any, any, drain).await?;
    let (addr, metrics) = server.addresses();
    tokio::spawn(server.run(std::future::pending()));
    Ok(Bench { addr, metrics, registry, stats })
}

fn service(bench: &Bench, name: &str, max_queued: u32, hosts: Vec<String>) -> ServiceId {
    let mut config = ServiceConfig::default().data_plane;
    config.max_queued = max_queued;
    config.activation_timeout = Duration::from_secs(3600);
    config.hosts = hosts;
    let key = ServiceId::new("default", name);
    bench.registry.apply(Change::Service { key: key.clone(), config });
    key
}

/// When the fake queue-proxy answered the probe that made it usable, and when the first request arrived.
#[derive(Default)]
struct Marks {
    ready: bool,
    probe_ok: Option<Instant>,
    first_request: Option<Instant>,
}

/// A stand-in queue-proxy: answers probes once `ready`, records the marks, answers requests with 200.
async fn fake_queue_proxy(marks: Arc<Mutex<Marks>>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let _ = stream.set_nodelay(true);
            let marks = marks.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let now = Instant::now();
                let mut marks = marks.lock().unwrap();
                let response = if req.headers().contains_key("ebb-probe") {
                    if marks.ready {
                        marks.probe_ok.get_or_insert(now);
                        Response::new(Full::new(Bytes::from_static(b"queue")))
                    } else {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        r
                    }
                } else {
                    marks.first_request.get_or_insert(now);
                    Response::new(Full::new(Bytes::from_static(b"ok")))
                };
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Ok(addr)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn row(what: &str, goal: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    let (p50, p99, max) = (percentile(&samples, 0.5), percentile(&samples, 0.99), *samples.last().unwrap());
    format!("| {what} | {} | {} | {} | {goal} | {} |", us(p50), us(p99), us(max), samples.len())
}

async fn cold(iterations: usize) -> Result<()> {
    let mut bench = activator(10_000).await?;
    let (mut to_stat, mut to_pod) = (Vec::new(), Vec::new());
    for i in 0..iterations {
        let name = format!("svc-{i}");
        let key = service(&bench, &name, 100, Vec::new());
        let marks = Arc::new(Mutex::new(Marks::default()));
        let pod = fake_queue_proxy(marks.clone()).await?;
        // The pod exists but does not answer its probe yet: the request waits.
        bench.registry.apply(Change::Pods { key, pods: vec![PodInfo::live("pod", pod)] });

        let mut client = TcpStream::connect(bench.addr).await?;
        client.set_nodelay(true)?;
        let request = format!("GET / HTTP/1.1\r\nhost: {name}\r\n\r\n");
        let sent = Instant::now();
        client.write_all(request.as_bytes()).await?;
        // The once-a-second reports of earlier services share the channel: wait for this one's.
        loop {
            let frame = bench.stats.recv().await.expect("the activator is running");
            if frame.name == name {
                break;
            }
        }
        to_stat.push(sent.elapsed());

        marks.lock().unwrap().ready = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        let (probe_ok, first) = loop {
            let seen = {
                let m = marks.lock().unwrap();
                m.probe_ok.zip(m.first_request)
            };
            if let Some(seen) = seen {
                break seen;
            }
            anyhow::ensure!(Instant::now() < deadline, "the request never reached the pod");
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        to_pod.push(first.saturating_duration_since(probe_ok));
        drop(client);
    }
    println!("| activator cold path ({iterations} fresh services) | p50 | p99 | max | goal | samples |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("first request's arrival -> stat leaving the activator", "<= 1 ms", to_stat));
    println!("{}", row("endpoint ready (probe answered) -> first byte at the pod", "<= 2 ms", to_pod));
    Ok(())
}

async fn serve(pod: SocketAddr) -> Result<()> {
    let bench = activator(10_000).await?;
    let key = service(&bench, "bench", 10_000, vec!["127.0.0.1".into()]);
    bench.registry.apply(Change::Pods { key: key.clone(), pods: vec![PodInfo::live("pod", pod)] });
    let service = bench.registry.get(&key).expect("just declared");
    let mut status = service.watch();
    let ready = status.wait_for(|s| s.ready == 1);
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .map_err(|_| anyhow::anyhow!("the pod never answered"))??;
    println!("{{\"addr\":\"{}\",\"metrics\":\"{}\"}}", bench.addr, bench.metrics);
    let mut stats = bench.stats;
    while stats.recv().await.is_some() {}
    Ok(())
}

async fn hold(max_queued: u32) -> Result<()> {
    let bench = activator(max_queued).await?;
    service(&bench, "bench", max_queued, vec!["127.0.0.1".into()]);
    println!("{{\"addr\":\"{}\",\"metrics\":\"{}\"}}", bench.addr, bench.metrics);
    let mut stats = bench.stats;
    while stats.recv().await.is_some() {}
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.worker_threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Cold { iterations } => cold(iterations).await,
            Command::Serve { pod } => serve(pod).await,
            Command::Hold { max_queued } => hold(max_queued).await,
        }
    })
}
