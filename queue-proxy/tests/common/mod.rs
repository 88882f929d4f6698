//! Test harness: real upstream servers on loopback, an in-process queue-proxy on ports picked by the system,
//! and small clients. Every wait polls against a generous deadline; nothing sleeps a fixed time to "let
//! things settle".
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use ebb_queue_proxy::handler::DataPlane;
use ebb_queue_proxy::{Addresses, QueueProxy};
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Generous limit for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(15);

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|never| match never {}).boxed()
}

/// A body fed frame by frame through the returned sender; it ends when the sender is dropped.
pub fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(16);
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (Ok(f), rx)) });
    (tx, StreamBody::new(stream).boxed())
}

pub fn response(status: u16, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response
}

/// Starts an HTTP/1.1 + h2c upstream on 127.0.0.1:0 that answers with `handler`.
pub async fn upstream<H, F>(handler: H) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_upstream(listener, handler);
    addr
}

/// Serves `listener` as an HTTP/1.1 + h2c upstream; aborting the returned task closes the listener (the user
/// container going away), and connections already open are served on.
pub fn serve_upstream<H, F>(listener: TcpListener, handler: H) -> tokio::task::JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handler = handler.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
            });
        }
    })
}

/// An upstream that can die as a process does: [`Killable::kill`] closes its listener and every open
/// connection.
pub struct Killable {
    tasks: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
}

impl Killable {
    /// Serves `listener` as [`serve_upstream`] does.
    pub fn serve<H, F>(listener: TcpListener, handler: H) -> Self
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let tasks = Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let conns = tasks.clone();
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handler = handler.clone();
                conns.lock().unwrap().spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { tasks }
    }

    /// Closes the listener and every connection at once.
    pub fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// An address on which nothing listens (a port only just released: a test that must be sure nobody else
/// takes it meanwhile holds it with [`ReservedPort`]).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A port that refuses connections until [`ReservedPort::listen`]: bound but not listening, so no other test
/// running beside this one can take it (a released port can be handed out again at once).
pub struct ReservedPort(socket2::Socket, pub SocketAddr);

impl ReservedPort {
    pub fn new() -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        Self(socket, addr)
    }

    /// Starts listening on the port.
    pub fn listen(self) -> TcpListener {
        self.0.listen(128).unwrap();
        self.0.set_nonblocking(true).unwrap();
        TcpListener::from_std(std::net::TcpListener::from(self.0)).unwrap()
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ebb_queue_proxy::cli::Args,
}

/// An in-process queue-proxy.
pub struct Proxy {
    pub addrs: Addresses,
    pub data: Arc<DataPlane>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.data)
    }

    /// Drains and waits for the proxy to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(DEADLINE, &mut self.task).await;
    }
}

/// Starts a queue-proxy in front of `upstream` with extra flags, without waiting for readiness.
pub async fn proxy_unready(upstream: SocketAddr, flags: &[&str]) -> Proxy {
    let upstream = upstream.to_string();
    let mut argv = vec![
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
        "test-pod",
        "--service-name",
        "demo",
        "--drain-quiet-period",
        "0s",
    ];
    argv.extend_from_slice(flags);
    let config = Cli::try_parse_from(argv).unwrap().args.into_config().unwrap();
    let proxy = QueueProxy::bind(config).await.unwrap();
    let addrs = proxy.addresses();
    let data = proxy.data_plane();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        proxy
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Proxy { addrs, data, stop: Some(stop), task }
}

/// Starts a queue-proxy and waits until it has seen the upstream ready.
pub async fn proxy(upstream: SocketAddr, flags: &[&str]) -> Proxy {
    let proxy = proxy_unready(upstream, flags).await;
    let data = proxy.data.clone();
    eventually("the proxy sees the upstream ready", || {
        let data = data.clone();
        async move { data.is_ready() }
    })
    .await;
    proxy
}

/// Polls `check` every 10 ms until it holds, failing after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client with a connection pool.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

/// Sends and waits for the response headers.
pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Response<Incoming> {
    tokio::time::timeout(DEADLINE, client.request(req)).await.expect("response in time").expect("response")
}

pub async fn text(response: Response<Incoming>) -> String {
    let bytes = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// GET a path on one of the proxy's auxiliary ports and return the body.
pub async fn fetch(addr: SocketAddr, path: &str) -> (u16, Bytes) {
    let response = send(&client(), get(&format!("http://{addr}{path}"))).await;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, bytes)
}

pub async fn metrics(proxy: &Proxy) -> String {
    let (_, body) = fetch(proxy.addrs.metrics, "/metrics").await;
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of one series in Prometheus text.
pub fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The real queue-proxy binary on ports picked by the system; killed when dropped.
pub struct BinaryProxy {
    pub child: std::process::Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
}

impl BinaryProxy {
    /// Starts `queue-proxy` in front of `upstream` with extra flags and reads its address line.
    pub async fn start(upstream: SocketAddr, flags: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let binary = env!("CARGO_BIN_EXE_queue-proxy");
        let mut child = Command::new(binary)
            .args(["--upstream", &upstream.to_string(), "--bind-address", "127.0.0.1"])
            .args(["--data-port", "0", "--admin-port", "0", "--stats-port", "0", "--metrics-port", "0"])
            .args(["--pod-name", "test-pod"])
            .args(flags)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start {binary}: {err}; build it with `cargo build -p ebb-queue-proxy`")
            });
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let mut proxy = Self { child, data: closed_port(), admin: closed_port() };
        let line =
            tokio::time::timeout(DEADLINE, line).await.expect("address line in time").unwrap().unwrap();
        let addrs: serde_json::Value =
            serde_json::from_str(&line).expect("a JSON line of addresses on stdout");
        proxy.data = addrs["data"].as_str().unwrap().parse().unwrap();
        proxy.admin = addrs["admin"].as_str().unwrap().parse().unwrap();
        proxy
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// File descriptors the process holds now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |dir| dir.count())
    }

    /// Waits for the exit; `None` if it did not exit in time.
    pub async fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BinaryProxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
