//! Probing the user container: aggressively at start-up (every 10 ms by default, then backing off) until it
//! answers, so the pod turns ready within milliseconds of the container; then once per kubelet readiness
//! probe, whose result (ready or not) the data port's header-gated probe reports until the next. A probe is a
//! TCP connect, or an HTTP GET of a path that must answer 2xx or 3xx.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{Request, uri::Authority};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    /// The upstream port accepts a TCP connection.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http {
        /// Absolute path, with query if any.
        path: String,
    },
}

/// How to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// What to check.
    pub target: ProbeTarget,
    /// The user container's address.
    pub upstream: Authority,
    /// Period while starting up.
    pub initial_period: Duration,
    /// How long to keep the initial period before backing off.
    pub aggressive_for: Duration,
    /// Longest period after backing off.
    pub max_period: Duration,
    /// Time allowed for one probe.
    pub timeout: Duration,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No connection.
    #[error("cannot connect to {upstream}: {source}")]
    Connect {
        /// The address probed.
        upstream: Authority,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP probe failed: {0}")]
    Http(#[from] hyper::Error),
    /// The probe path answered with an unhealthy status.
    #[error("HTTP probe answered {0}")]
    Status(http::StatusCode),
    /// The probe took longer than its timeout.
    #[error("probe timed out after {0:?}")]
    Timeout(Duration),
}

/// Whether the user container has answered a probe (and not failed one since), and a way to wait for it.
#[derive(Debug)]
pub struct Readiness {
    user_ready: watch::Sender<bool>,
    /// A probe loop started by [`Readiness::lost`] is running.
    reprobing: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Self { user_ready: watch::Sender::new(false), reprobing: AtomicBool::new(false) }
    }
}

impl Readiness {
    /// Whether the user container is ready.
    pub fn is_ready(&self) -> bool {
        *self.user_ready.borrow()
    }

    /// Records a probe result; whether it changed the state.
    pub fn set(&self, ready: bool) -> bool {
        self.user_ready.send_if_modified(|was| std::mem::replace(was, ready) != ready)
    }

    /// The user container refused a connection: it is not ready from now on (the kubelet's next probe, the
    /// activator's probe and the data port's answers all see it at once), and it is probed as at start-up until it
    /// answers again. One probe loop at a time, however many requests were refused.
    pub fn lost(self: &Arc<Self>, options: &ProbeOptions) {
        if self.set(false) {
            tracing::warn!("the user container refused a connection; not ready until it answers its probe");
        }
        if self.reprobing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (readiness, options) = (self.clone(), options.clone());
        tokio::spawn(async move {
            wait_until_ready(&options, &readiness).await;
            readiness.reprobing.store(false, Ordering::Release);
        });
    }

    /// Waits until the user container is ready, at most `limit`; whether it is.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let mut ready = self.user_ready.subscribe();
        matches!(tokio::time::timeout(limit, ready.wait_for(|r| *r)).await, Ok(Ok(_)))
    }
}

/// Probes once.
pub async fn probe_once(options: &ProbeOptions) -> Result<(), ProbeError> {
    match tokio::time::timeout(options.timeout, probe_inner(options)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(options.timeout)),
    }
}

async fn probe_inner(options: &ProbeOptions) -> Result<(), ProbeError> {
    let upstream = &options.upstream;
    let connect = |source| ProbeError::Connect { upstream: upstream.clone(), source };
    let stream = TcpStream::connect(upstream.as_str()).await.map_err(connect)?;
    let ProbeTarget::Http { path } = &options.target else {
        return Ok(());
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = Request::get(path.as_str())
        .header(HOST, upstream.as_str())
        .header(USER_AGENT, concat!("ebb-queue-proxy/", env!("CARGO_PKG_VERSION"), " probe"))
        .body(Empty::<Bytes>::new());
    let Ok(request) = request else {
        // The path was validated at start-up; a bad one just never succeeds.
        return Err(ProbeError::Status(http::StatusCode::BAD_REQUEST));
    };
    let response = sender.send_request(request).await;
    connection.abort();
    let status = response?.status();
    if status.is_success() || status.is_redirection() { Ok(()) } else { Err(ProbeError::Status(status)) }
}

/// Probes until the user container answers, then marks it ready. Every `initial_period` for
/// `aggressive_for`, then doubling up to `max_period`.
pub async fn wait_until_ready(options: &ProbeOptions, readiness: &Readiness) {
    let start = Instant::now();
    let mut period = options.initial_period;
    let mut next_report = start + Duration::from_secs(5);
    loop {
        let attempt = Instant::now();
        match probe_once(options).await {
            Ok(()) => {
                readiness.set(true);
                tracing::info!(after_ms = start.elapsed().as_millis() as u64, "user container is ready");
                return;
            }
            Err(err) => {
                if attempt >= next_report {
                    tracing::info!(
                        waited_s = start.elapsed().as_secs(),
                        "user container not ready yet: {err}"
                    );
                    next_report = attempt + Duration::from_secs(30);
                } else {
                    tracing::debug!("user container not ready: {err}");
                }
            }
        }
        if start.elapsed() >= options.aggressive_for {
            period = period.saturating_mul(2).min(options.max_period);
        }
        tokio::time::sleep_until(attempt + period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(upstream: Authority, target: ProbeTarget) -> ProbeOptions {
        ProbeOptions {
            target,
            upstream,
            initial_period: Duration::from_millis(10),
            aggressive_for: Duration::from_secs(1),
            max_period: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
        }
    }

    /// A user container that answers `GET` with 503 `failures` times, then 200; returns the path and time of
    /// each request.
    async fn http_container(
        failures: usize,
    ) -> (Authority, tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for answered in 0.. {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the probe sent a whole request head");
                    head.extend_from_slice(&buf[..n]);
                }
                let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
                let _ = seen.send((line, Instant::now()));
                let status = if answered < failures { "503 Service Unavailable" } else { "200 OK" };
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (addr.to_string().parse().unwrap(), requests)
    }

    #[tokio::test]
    async fn http_probe_backs_off_until_the_path_answers_2xx() {
        let (upstream, mut requests) = http_container(3).await;
        let target = ProbeTarget::Http { path: "/healthz?full=1".into() };
        let opts = ProbeOptions {
            // Back off from the first failure: 100 ms, then 200 ms (the most).
            initial_period: Duration::from_millis(50),
            aggressive_for: Duration::ZERO,
            max_period: Duration::from_millis(200),
            ..options(upstream, target)
        };
        match probe_once(&opts).await {
            Err(ProbeError::Status(status)) => assert_eq!(status, 503),
            other => panic!("a 503 fails the probe, got {other:?}"),
        }
        let readiness = Readiness::default();
        tokio::time::timeout(Duration::from_secs(15), wait_until_ready(&opts, &readiness))
            .await
            .expect("ready once the path answers 200");
        assert!(readiness.is_ready());
        // One failure above, two here, then the success.
        let mut seen = Vec::new();
        while let Ok(request) = requests.try_recv() {
            seen.push(request);
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen.iter().all(|(line, _)| line == "GET /healthz?full=1 HTTP/1.1"), "{seen:?}");
        // Sleeps never end early, so the gaps are at least the backed-off periods, less the time from a probe's
        // start to its request arriving (a quarter of the period is a generous allowance for that).
        let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
        assert!(gaps[1] >= Duration::from_millis(75), "doubled from 50 ms to 100 ms: {gaps:?}");
        assert!(gaps[2] >= Duration::from_millis(150), "doubled again to 200 ms: {gaps:?}");
    }

    #[tokio::test]
    async fn tcp_probe_waits_for_a_listener() {
        // Reserve a port, free it, and start listening there a little later.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let opts = options(addr.to_string().parse().unwrap(), ProbeTarget::Tcp);
        assert!(probe_once(&opts).await.is_err());
        let readiness = Readiness::default();
        let listen = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::net::TcpListener::bind(addr).await.unwrap()
        };
        let (listener, (), woken) = tokio::join!(
            listen,
            wait_until_ready(&opts, &readiness),
            readiness.wait_ready(Duration::from_secs(5))
        );
        assert!(readiness.is_ready());
        assert!(woken, "a waiter is woken when the container turns ready");
        assert!(
            !Readiness::default().wait_ready(Duration::from_millis(20)).await,
            "and gives up at its limit"
        );
        drop(listener);
    }
}
