//! A small HTTP/1.1 load generator for the data-plane benchmarks.
//!
//! * `--rate R`: open loop at a fixed rate. Request `i` is due at `start + i/R`; its latency is measured from
//!   that due time, not from when a connection got round to sending it, so a stall shows up in the tail
//!   instead of silently lowering the rate (no coordinated omission). Connections take the next due request
//!   whenever they are free; with enough of them the schedule is kept.
//! * without `--rate`: closed loop, every connection sends back to back (saturation throughput).
//! * `--hold N`: opens N keep-alive connections, sends one request on each (all before awaiting any answer),
//!   and keeps them open for `--duration` (for memory measurements).
//!
//! Prints one JSON line: requests, errors, achieved rate and latency percentiles in microseconds, to the end of
//! the response and to its first body byte (`ttfb_*`: what a streamed response's reader waits for first).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(about = "HTTP/1.1 load generator: fixed-rate open loop or saturating closed loop")]
struct Args {
    /// Target, HOST:PORT.
    #[arg(long)]
    target: String,
    /// Path to request.
    #[arg(long, default_value = "/")]
    path: String,
    /// Requests per second (open loop); without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up in seconds before measuring (same load, not recorded).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Open this many connections, one request each, and hold them for --duration.
    #[arg(long)]
    hold: Option<usize>,
    /// A response whose body does not end with this (trailing whitespace aside) is an error: a cut stream,
    /// with `data: [DONE]`.
    #[arg(long)]
    expect_end: Option<String>,
}

struct Shared {
    args: Args,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    next: AtomicU64,
    errors: AtomicU64,
    /// Every completed request, warm-up included (for CPU time per request).
    total: AtomicU64,
}

async fn connect(target: &str) -> Result<SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(target).await.with_context(|| format!("connect {target}"))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole response; returns when its first body byte came (or its end, when
/// it has no body).
async fn one(sender: &mut SendRequest<Empty<Bytes>>, shared: &Shared) -> Result<Instant> {
    sender.ready().await?;
    let req = Request::get(shared.args.path.as_str())
        .header(hyper::header::HOST, shared.args.target.as_str())
        .body(Empty::new())?;
    let response = sender.send_request(req).await?;
    let ok = response.status().is_success();
    let mut body = response.into_body();
    let mut first_byte = None;
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            first_byte.get_or_insert_with(Instant::now);
            if shared.args.expect_end.is_some() {
                tail.extend_from_slice(&data);
                let keep = tail.len().saturating_sub(64);
                tail.drain(..keep);
            }
        }
    }
    if !ok {
        bail!("status not 2xx");
    }
    if let Some(end) = &shared.args.expect_end
        && !tail.trim_ascii_end().ends_with(end.as_bytes())
    {
        bail!("the body does not end with {end:?}");
    }
    Ok(first_byte.unwrap_or_else(Instant::now))
}

/// Microseconds from `from` to `to`.
fn micros(from: Instant, to: Instant) -> u32 {
    (to - from).as_micros().min(u32::MAX as u128) as u32
}

/// Each measured request's latency to its end and to its first body byte.
async fn worker(shared: Arc<Shared>) -> Vec<(u32, u32)> {
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut sender = None;
    let interval = shared.args.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    loop {
        let due = match interval {
            Some(interval) => {
                let i = shared.next.fetch_add(1, Ordering::Relaxed);
                let due = shared.start + interval.mul_f64(i as f64);
                if due >= shared.end {
                    break;
                }
                // A connection that is free before the request is due waits for it; tokio's timer wakes it up
                // to a millisecond late, which is the generator's fault, so such a request is timed from when
                // it actually left. A request that was already due when a connection became free (the
                // system under test was slow) is timed from its due time.
                if Instant::now() < due {
                    tokio::time::sleep_until(due).await;
                    Instant::now()
                } else {
                    due
                }
            }
            None => {
                let now = Instant::now();
                if now >= shared.end {
                    break;
                }
                now
            }
        };
        if sender.is_none() {
            match connect(&shared.args.target).await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let result = one(s, &shared).await;
        let done = Instant::now();
        let Ok(first_byte) = result else {
            if due >= shared.measure_from {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            sender = None;
            continue;
        };
        shared.total.fetch_add(1, Ordering::Relaxed);
        if due >= shared.measure_from {
            latencies.push((micros(due, done), micros(due, first_byte)));
        }
    }
    latencies
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn hold(args: Args, n: usize) -> Result<()> {
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        senders.push(connect(&args.target).await?);
    }
    // Send on every connection before waiting for any answer: a proxy holding requests (the activator at
    // zero) answers none of them until it has a pod, and each must be in flight for the memory reading.
    let mut answers = tokio::task::JoinSet::new();
    for sender in &mut senders {
        sender.ready().await?;
        let req = Request::get(args.path.as_str())
            .header(hyper::header::HOST, args.target.as_str())
            .body(Empty::new())?;
        let answer = sender.send_request(req);
        answers.spawn(async move {
            let response = answer.await?;
            let ok = response.status().is_success();
            response.into_body().collect().await?;
            if !ok {
                bail!("status not 2xx");
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    let (mut answered, mut errors) = (0, 0);
    let collect = async {
        while let Some(result) = answers.join_next().await {
            answered += 1;
            errors += usize::from(!matches!(result, Ok(Ok(()))));
        }
    };
    // Answers that have not come by then stay pending (a holding proxy); the line says how many came.
    let _ = tokio::time::timeout(Duration::from_secs_f64(args.duration), collect).await;
    println!("{{\"held\":{n},\"answered\":{answered},\"errors\":{errors}}}");
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    drop(senders);
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        if let Some(n) = args.hold {
            return hold(args, n).await;
        }
        let start = Instant::now() + Duration::from_millis(50);
        let measure_from = start + Duration::from_secs_f64(args.warmup);
        let end = measure_from + Duration::from_secs_f64(args.duration);
        let shared = Arc::new(Shared {
            args: args.clone(),
            start,
            measure_from,
            end,
            next: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            total: AtomicU64::new(0),
        });
        let tasks: Vec<_> = (0..args.connections).map(|_| tokio::spawn(worker(shared.clone()))).collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await?);
        }
        let requests = all.len();
        let (mut total, mut first_byte): (Vec<u32>, Vec<u32>) = all.into_iter().unzip();
        total.sort_unstable();
        first_byte.sort_unstable();
        println!(
            "{{\"mode\":\"{}\",\"total\":{},\"requests\":{},\"errors\":{},\"rps\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"ttfb_p50_us\":{},\"ttfb_p99_us\":{},\"ttfb_p999_us\":{}}}",
            if args.rate.is_some() { "rate" } else { "saturate" },
            shared.total.load(Ordering::Relaxed),
            requests,
            shared.errors.load(Ordering::Relaxed),
            requests as f64 / args.duration,
            percentile(&total, 50.0),
            percentile(&total, 99.0),
            percentile(&total, 99.9),
            total.last().copied().unwrap_or(0),
            percentile(&first_byte, 50.0),
            percentile(&first_byte, 99.0),
            percentile(&first_byte, 99.9),
        );
        Ok(())
    })
}
