//! Shared pieces of the activator's end-to-end tests: upstreams, in-process queue-proxies, an activator on a
//! loopback port with its endpoint source driven by the test, and a client.
#![allow(dead_code)] // each test binary uses a different subset

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use ebb_activator::endpoints::{Change, PodInfo};
use ebb_activator::handler::{Activator, Options};
use ebb_activator::metrics::Metrics;
use ebb_activator::registry::Registry;
use ebb_activator::server::{DrainOptions, Server};
use ebb_activator::stats::{ChannelSink, StatSink};
use ebb_config::ServiceId;
use ebb_config::wire::IngestFrame;
use ebb_config::{DataPlaneSpec, ServiceConfig};
use ebb_queue_proxy::QueueProxy;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// Generous bound for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

/// A real HTTP server on a loopback port answering with `handler`.
pub async fn upstream<H, F>(handler: H) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (addr, kill) = killable_upstream(handler).await;
    // Never killed: keep the switch alive as long as the test runs.
    std::mem::forget(kill);
    addr
}

/// Like [`upstream`], with a switch that ends it at once, open connections included, like a process that died.
pub async fn killable_upstream<H, F>(handler: H) -> (SocketAddr, watch::Sender<bool>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    killable_upstream_at("127.0.0.1:0".parse().unwrap(), handler).await
}

/// [`killable_upstream`] on `addr` (a model process restarting on its port).
pub async fn killable_upstream_at<H, F>(addr: SocketAddr, handler: H) -> (SocketAddr, watch::Sender<bool>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (kill, killed) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let mut killed = killed.clone();
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = killed.wait_for(|k| *k) => return,
            };
            let Ok((stream, _)) = accepted else { return };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = handler(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    _ = killed.wait_for(|k| *k) => {}
                }
            });
        }
    });
    (addr, kill)
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ebb_queue_proxy::cli::Args,
}

/// A real queue-proxy, in process, in front of `upstream`; stops (drains) when dropped or stopped.
pub struct QueueProxyHandle {
    pub data: SocketAddr,
    /// The stats port (`GET /stats`: the latest 1-second stat).
    pub stats: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl QueueProxyHandle {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(DEADLINE, &mut self.task).await;
    }
}

pub async fn queue_proxy(upstream: SocketAddr, pod: &str, container_concurrency: u32) -> QueueProxyHandle {
    let (upstream, cc) = (upstream.to_string(), container_concurrency.to_string());
    let argv = [
        "queue-proxy",
        "--upstream",
        &upstream,
        "--bind-address",
        "127.0.0.1",
        "--data-port",
        "0",
        "--admin-port",
        "0",
        "--stats-port",
        "0",
        "--metrics-port",
        "0",
        "--pod-name",
        pod,
        "--service-name",
        "demo",
        "--drain-quiet-period",
        "0s",
        "--container-concurrency",
        &cc,
    ];
    let config = Cli::try_parse_from(argv).unwrap().args.into_config().unwrap();
    let proxy = QueueProxy::bind(config).await.unwrap();
    let (data, stats) = (proxy.addresses().data, proxy.addresses().stats);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        proxy.run(async move { drop(stopped.await) }).await.unwrap();
    });
    QueueProxyHandle { data, stats, stop: Some(stop), task }
}

/// An activator on a loopback port whose endpoint source is the test.
pub struct TestActivator {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub activator: Arc<Activator>,
    pub registry: Arc<Registry>,
    pub stats: mpsc::Receiver<IngestFrame>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestActivator {
    /// An activator whose stats go to [`Self::stats`].
    pub async fn start(max_queued_total: u32) -> Self {
        let (tx, stats) = mpsc::channel(10_000);
        Self::with_sink(max_queued_total, Arc::new(ChannelSink::new(tx)), stats).await
    }

    /// An activator whose stats go to `sink` (`stats` then receives nothing unless the test feeds it).
    pub async fn with_sink(
        max_queued_total: u32,
        sink: Arc<dyn StatSink>,
        stats: mpsc::Receiver<IngestFrame>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new(true, max_queued_total, metrics.clone()));
        let options =
            Options { name: "activator-test".into(), max_queued_total, retry_after: Duration::from_secs(1) };
        let activator = Arc::new(Activator::new(registry.clone(), sink, metrics, options));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let drain = DrainOptions { quiet_period: Duration::ZERO, deadline: Duration::from_secs(30) };
        let server = Server::bind(activator.clone(), any, any, drain).await.unwrap();
        let (addr, metrics_addr) = server.addresses();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.run(async move { drop(stopped.await) }));
        Self { addr, metrics_addr, activator, registry, stats, stop: Some(stop) }
    }

    /// Declares `default/NAME` with `config`.
    pub fn service(&self, name: &str, config: DataPlaneSpec) -> ServiceId {
        let key = ServiceId::new("default", name);
        self.registry.apply(Change::Service { key: key.clone(), config });
        key
    }

    /// Replaces the service's pods with these (name, queue-proxy address) pairs.
    pub fn pods(&self, key: &ServiceId, pods: &[(&str, SocketAddr)]) {
        let pods = pods.iter().map(|(name, addr)| PodInfo::live(name, *addr)).collect();
        self.registry.apply(Change::Pods { key: key.clone(), pods });
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A service's data-plane settings with these changes from the defaults.
pub fn data_plane(change: impl FnOnce(&mut DataPlaneSpec)) -> DataPlaneSpec {
    let mut spec = ServiceConfig::default().data_plane;
    change(&mut spec);
    spec
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A GET for `path` at the activator, routed to `default/SERVICE` by Host.
pub fn get(addr: SocketAddr, service: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .header("host", service)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A GET at `addr` on the activator's metrics port (`/metrics`, `/readyz`, `/healthz`).
pub async fn admin(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = client().request(get(addr, "activator", path)).await.unwrap();
    (response.status().as_u16(), text(response).await)
}

/// The value of one Prometheus series (`name{labels}`) in `metrics`, if present.
pub fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok())
}

/// An HTTP/2 prior-knowledge (h2c) connection to `addr`. Requests on it carry their URI's authority as
/// `:authority` and no Host header, as HTTP/2 clients send them.
pub async fn h2c_connection(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// A pod that answers the activator's probe (`Ebb-Probe: queue`) like a queue-proxy, but resets the connection
/// (RST) after reading any other request in full, as a process that dies mid-request does. Counts those requests.
pub async fn resetting_pod() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let count = attempts.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n @ 1..) = stream.read(&mut buf).await else { return };
                    head.extend_from_slice(&buf[..n]);
                    // Requests here have no body: the head ends the request.
                    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let request = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                    head.drain(..end + 4);
                    if request.contains("\r\nebb-probe: queue") {
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nqueue";
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_zero_linger();
                    return; // dropped with zero linger: RST
                }
            });
        }
    });
    (addr, attempts)
}

pub async fn text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Polls `check` every 5 ms until it holds, failing after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
