//! Streaming stats to every autoscaler replica (docs/architecture.md, "Stats"): one long-lived `POST /v1/stats` per
//! replica carrying length-prefixed frames, authenticated with this pod's ServiceAccount token. A replica that
//! is down gets nothing: frames for it are dropped, never queued without bound, and the stream is re-opened with
//! backoff. Every replica collects, so their windows stay warm for a failover.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ebb_config::names::INGEST_PATH;
use ebb_config::wire::{INGEST_CONTENT_TYPE, IngestFrame};
use ebb_process::sync::Locked;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::stats::StatSink;

/// Frames buffered per replica while its stream is open; beyond this they are dropped.
const BUFFER: usize = 256;
/// Backoff between attempts to open a stream.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long opening a stream may take (a replica that vanished without a reset drops the SYN).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long frames may stay unacknowledged before the kernel closes the stream (`TCP_USER_TIMEOUT`), so that a
/// replica that vanished without a reset (a lost node, a partition) is noticed and its stream re-opened within
/// seconds rather than after TCP's default of about 15 minutes of retransmissions.
pub const UNACKED_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the bearer token comes from.
#[derive(Debug, Clone)]
pub enum Token {
    /// No authentication (local tests).
    None,
    /// A token file, re-read for every new stream since the kubelet rotates projected tokens.
    File(PathBuf),
}

impl Token {
    fn header(&self) -> Option<String> {
        match self {
            Token::None => None,
            Token::File(path) => match std::fs::read_to_string(path) {
                Ok(token) => Some(format!("Bearer {}", token.trim())),
                Err(err) => {
                    tracing::warn!(path = %path.display(), "cannot read the ServiceAccount token: {err}");
                    None
                }
            },
        }
    }
}

/// The open stream to one replica: frames go into `sender` while it is `Some`.
#[derive(Debug)]
struct Replica {
    sender: Arc<Mutex<Option<mpsc::Sender<Bytes>>>>,
    task: AbortHandle,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Streams stats to a changing set of autoscaler replicas.
#[derive(Debug)]
pub struct Pusher {
    replicas: Mutex<HashMap<SocketAddr, Replica>>,
    token: Token,
    dropped: AtomicU64,
}

impl Pusher {
    /// A pusher with no replicas yet.
    pub fn new(token: Token) -> Arc<Self> {
        Arc::new(Self { replicas: Mutex::default(), token, dropped: AtomicU64::new(0) })
    }

    /// Replicas whose stream is open now.
    pub fn connected(&self) -> usize {
        let replicas = self.replicas.locked();
        replicas.values().filter(|r| r.sender.locked().is_some()).count()
    }

    /// Streams to exactly these replicas from now on (new ones are opened, departed ones closed).
    pub fn set_replicas(self: &Arc<Self>, addrs: &[SocketAddr]) {
        let mut replicas = self.replicas.locked();
        replicas.retain(|addr, _| addrs.contains(addr));
        for &addr in addrs {
            replicas.entry(addr).or_insert_with(|| {
                let sender = Arc::new(Mutex::new(None));
                let task =
                    tokio::spawn(stream_forever(addr, self.token.clone(), sender.clone())).abort_handle();
                Replica { sender, task }
            });
        }
    }
}

impl StatSink for Pusher {
    fn send(&self, frame: IngestFrame) {
        let bytes = match frame.encode() {
            Ok(bytes) => Bytes::from(bytes),
            Err(err) => return tracing::warn!("stat not encodable: {err}"),
        };
        let replicas = self.replicas.locked();
        for replica in replicas.values() {
            let sender = replica.sender.locked();
            let sent = sender.as_ref().is_some_and(|s| s.try_send(bytes.clone()).is_ok());
            if !sent {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Keeps one replica's stream open, re-opening it with backoff whenever it ends.
async fn stream_forever(addr: SocketAddr, token: Token, sender: Arc<Mutex<Option<mpsc::Sender<Bytes>>>>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let opened = tokio::time::Instant::now();
        let (tx, rx) = mpsc::channel(BUFFER);
        match stream_once(addr, &token, rx, || *sender.locked() = Some(tx)).await {
            Ok(()) => tracing::info!(%addr, "stat stream closed by the autoscaler"),
            Err(err) => tracing::debug!(%addr, "stat stream: {err}"),
        }
        *sender.locked() = None;
        if opened.elapsed() > MAX_BACKOFF * 2 {
            backoff = FIRST_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A connection to a replica, with [`UNACKED_TIMEOUT`] and `TCP_NODELAY` set.
pub async fn connect(addr: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    let connecting = tokio::net::TcpStream::connect(addr);
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(connected) => connected.map_err(|e| format!("connect: {e}"))?,
        Err(_) => return Err(format!("connect: no answer within {CONNECT_TIMEOUT:?}")),
    };
    let _ = stream.set_nodelay(true);
    if let Err(err) = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(UNACKED_TIMEOUT)) {
        tracing::debug!(%addr, "cannot set TCP_USER_TIMEOUT: {err}");
    }
    Ok(stream)
}

/// One stream: connect, send the request whose body is the frames from `rx`, and call `on_open` once the
/// connection is up so frames start flowing. Returns when the stream ends.
async fn stream_once(
    addr: SocketAddr,
    token: &Token,
    rx: mpsc::Receiver<Bytes>,
    on_open: impl FnOnce(),
) -> Result<(), String> {
    let stream = connect(addr).await?;
    let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let connection = tokio::spawn(connection);
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    let mut request = Request::post(INGEST_PATH)
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, INGEST_CONTENT_TYPE)
        .body(StreamBody::new(frames))
        .map_err(|e| e.to_string())?;
    if let Some(value) = token.header().and_then(|v| v.parse().ok()) {
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    on_open();
    // The autoscaler answers only when it ends the stream, or at once when it refuses it.
    let response = send.send_request(request).await.map_err(|e| format!("stream: {e}"))?;
    connection.abort();
    match response.status() {
        StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
        status => Err(format!("the autoscaler refused the stream: {status}")),
    }
}
