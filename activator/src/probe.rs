//! Probing pods' queue-proxies (`Ebb-Probe: queue`) until they answer, so a request never goes to a pod that is
//! not listening, and a pod is used the moment it can serve, before the kubelet's next readiness report.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ebb_config::names::{HEADER_PROBE, PROBE_QUEUE};
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
/// Longest interval between probes (slow starts, such as GPU model loads, are seen within this).
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

    /// Whether the queue-proxy at `addr` answers its probe with 200 `queue`.
    pub async fn probe(&self, addr: SocketAddr) -> bool {
        let request = Request::get(format!("http://{addr}/"))
            .header(HEADER_PROBE, PROBE_QUEUE)
            .body(Empty::new())
            .expect("a probe request is always valid");
        let answer = async {
            let response = self.client.request(request).await.ok()?;
            let ok = response.status() == StatusCode::OK;
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some(ok && body == PROBE_QUEUE.as_bytes())
        };
        matches!(tokio::time::timeout(TIMEOUT, answer).await, Ok(Some(true)))
    }

    /// Probes until the pod answers: every [`FIRST_INTERVAL`] for [`EAGER_FOR`], then backing off to
    /// [`MAX_INTERVAL`]. Cancel by dropping.
    pub async fn wait_until_serving(&self, addr: SocketAddr) {
        let eager_until = tokio::time::Instant::now() + EAGER_FOR;
        let mut interval = FIRST_INTERVAL;
        while !self.probe(addr).await {
            tokio::time::sleep(interval).await;
            if tokio::time::Instant::now() >= eager_until {
                interval = (interval * 3 / 2).min(MAX_INTERVAL);
            }
        }
    }
}
