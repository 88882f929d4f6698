//! The queue-proxies and activators of a simulated fleet, in one process: `GET /stats` answered for every pod
//! address with its service's load (the queue-proxy's wire format), and activators pushing their stats over
//! the real ingest stream (the activator's own [`Pusher`]).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ebb_activator::push::Pusher;
use ebb_activator::stats::StatSink;
use ebb_config::wire::{IngestFrame, PodStat};
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::addresses::{Fleet, pod_name, service_name};

/// Each service's per-pod concurrency, changed while the farm runs.
#[derive(Debug)]
pub struct Loads(Vec<AtomicU64>);

impl Loads {
    /// `services` services, each pod at `concurrency`.
    pub fn new(services: usize, concurrency: f64) -> Arc<Self> {
        Arc::new(Self((0..services).map(|_| AtomicU64::new(concurrency.to_bits())).collect()))
    }

    /// Service `service`'s per-pod concurrency.
    pub fn get(&self, service: usize) -> f64 {
        self.0.get(service).map_or(0.0, |l| f64::from_bits(l.load(Ordering::Relaxed)))
    }

    /// Sets service `service`'s per-pod concurrency.
    pub fn set(&self, service: usize, concurrency: f64) {
        if let Some(l) = self.0.get(service) {
            l.store(concurrency.to_bits(), Ordering::Relaxed);
        }
    }
}

/// The stat pod `pod` of service `service` reports.
fn pod_stat(service: usize, pod: usize, concurrency: f64) -> PodStat {
    PodStat {
        pod: pod_name(service, pod),
        average_concurrency: concurrency,
        average_proxied_concurrency: 0.0,
        request_count: concurrency,
        proxied_request_count: 0.0,
        process_uptime_secs: 600.0,
        timestamp_ms: 0,
        average_queued: Some(0.0),
    }
}

/// Answers `GET /stats` on `listener` (bound to the unspecified address) for every pod of `fleet`: the pod is
/// the address the client dialled. Connections to other addresses are closed.
pub async fn serve_stats(listener: TcpListener, fleet: Fleet, loads: Arc<Loads>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: let some connections close before accepting more.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Some((service, pod)) = stream.local_addr().ok().and_then(|a| match a.ip() {
            IpAddr::V4(ip) => fleet.pod_at(ip),
            IpAddr::V6(_) => None,
        }) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let loads = loads.clone();
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(move |_request| {
                let stat = pod_stat(service, pod, loads.get(service));
                let body = Bytes::from(stat.encode().expect("a small stat encodes"));
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
    }
}

/// How the activators push.
#[derive(Debug, Clone)]
pub struct Activators {
    /// Activator processes simulated (each streams every frame to the replica, as each real one does).
    pub count: usize,
    /// One service in `every` has traffic through the activators and so gets a frame each second from each.
    pub every: usize,
    /// The replicas' ingest addresses.
    pub ingest: Vec<SocketAddr>,
    /// A file holding the bearer token they present.
    pub token_file: std::path::PathBuf,
    /// The services' namespace.
    pub namespace: String,
}

/// Pushes one frame a second for every `every`th service from each activator, spread over the second in small
/// batches (the activator's stream buffers a few hundred frames and drops beyond, as a real one would).
pub async fn push_activator_stats(fleet: Fleet, loads: Arc<Loads>, activators: Activators) {
    let pushers: Vec<Arc<Pusher>> = (0..activators.count)
        .map(|_| {
            let pusher = Pusher::new(ebb_activator::push::Token::File(activators.token_file.clone()));
            pusher.set_replicas(&activators.ingest);
            pusher
        })
        .collect();
    let services: Vec<usize> = (0..fleet.services).step_by(activators.every.max(1)).collect();
    const SLICES: usize = 50;
    let mut interval = tokio::time::interval(Duration::from_secs(1) / SLICES as u32);
    let mut slice = 0;
    loop {
        interval.tick().await;
        for &service in services.iter().skip(slice).step_by(SLICES) {
            for (a, pusher) in pushers.iter().enumerate() {
                // An activator carries a share of the load it routes; a tenth of one pod's is plenty.
                let mut stat = pod_stat(service, 0, loads.get(service) / 10.0);
                stat.pod = format!("activator-{a}");
                stat.average_proxied_concurrency = 0.0;
                pusher.send(IngestFrame {
                    namespace: activators.namespace.clone(),
                    name: service_name(service),
                    stat,
                });
            }
        }
        slice = (slice + 1) % SLICES;
    }
}
