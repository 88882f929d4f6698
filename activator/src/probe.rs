//! Probing pods' queue-proxies (`Ebb-Probe: queue`) until they answer, so a request never goes to a pod that is
//! not listening, and a pod is used the moment it can serve, before the kubelet's next readiness report: the
//! queue-proxy holds the probe of a starting pod (`Ebb-Probe-Wait`) and answers as its container turns ready.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ebb_config::names::{HEADER_PROBE, HEADER_PROBE_WAIT, PROBE_QUEUE};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Interval between probes of a starting pod during [`EAGER_FOR`]: most workloads that start fast start within
/// it, and seeing them ready a few milliseconds sooner is most of a fast cold start's overhead.
pub const FIRST_INTERVAL: Duration = Duration::from_millis(5);
/// How long a starting pod is probed every [`FIRST_INTERVAL`] before the interval grows by half each time.
pub const EAGER_FOR: Duration = Duration::from_secs(1);
/// How long a queue-proxy may hold a probe of a starting pod (`Ebb-Probe-Wait`): it answers the moment its user
/// container is ready, so slow starts (GPU model loads) are seen at once rather than at the next poll.
pub const PROBE_WAIT: Duration = Duration::from_secs(2);
/// Longest interval between probes that fail at once (no queue-proxy listening yet).
pub const MAX_INTERVAL: Duration = Duration::from_millis(100);
/// How long one probe may take.
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// Probes queue-proxies over pooled keep-alive connections.
#[derive(Debug, Clone)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober {
    /// A prober with its own connection pool.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(connector);
        Self { client }
    }

    /// Probes `addr` once: `true` if the queue-proxy answered `Ebb-Probe: queue` with 200 `queue`.
    pub async fn probe(&self, addr: SocketAddr) -> bool {
        self.probe_waiting(addr, Duration::ZERO).await
    }

    /// [`Self::probe`], letting the queue-proxy hold the answer up to `wait` until its user container is ready.
    async fn probe_waiting(&self, addr: SocketAddr, wait: Duration) -> bool {
        let request = Request::get(format!("http://{addr}/"))
            .header(HEADER_PROBE, PROBE_QUEUE)
            .header(HEADER_PROBE_WAIT, wait.as_secs())
            .body(Empty::new())
            .expect("a probe request is always valid");
        let answer = async {
            let response = self.client.request(request).await.ok()?;
            let ok = response.status() == StatusCode::OK;
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some(ok && body == PROBE_QUEUE.as_bytes())
        };
        matches!(tokio::time::timeout(TIMEOUT + wait, answer).await, Ok(Some(true)))
    }

    /// Returns once `addr` answers its probe. Each probe asks the queue-proxy to hold it for [`PROBE_WAIT`]
    /// while the pod starts, so a ready pod is known the moment it is ready; a probe that fails at once (no
    /// queue-proxy listening yet, or one that does not hold probes) is retried every [`FIRST_INTERVAL`] for
    /// [`EAGER_FOR`], then backing off to [`MAX_INTERVAL`].
    pub async fn wait_until_serving(&self, addr: SocketAddr) {
        let eager_until = tokio::time::Instant::now() + EAGER_FOR;
        let mut interval = FIRST_INTERVAL;
        loop {
            let sent = tokio::time::Instant::now();
            if self.probe_waiting(addr, PROBE_WAIT).await {
                return;
            }
            // A held probe that timed out is followed by the next one at once.
            tokio::time::sleep_until(sent + interval).await;
            if tokio::time::Instant::now() >= eager_until {
                interval = (interval * 3 / 2).min(MAX_INTERVAL);
            }
        }
    }
}
