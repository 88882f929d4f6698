//! The auxiliary endpoints: the admin port (readiness for the kubelet at `/ready` or with `Ebb-Probe: queue`,
//! liveness, `/wait-for-drain` for the user container's preStop hook), the stats port (`GET /stats`) and the
//! Prometheus port (`GET /metrics`).
//!
//! The admin port is reachable by anything on the pod network (the kubelet probes it on the pod's IP), so
//! nothing on it changes the proxy's state: `/wait-for-drain` only waits for a drain that SIGTERM started, and
//! a bounded number of callers may wait at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use ebb_config::names::{HEADER_PROBE, PROBE_QUEUE, STATS_PATH, WAIT_FOR_DRAIN_PATH};
use ebb_config::wire::STAT_CONTENT_TYPE;
use ebb_http::admin::{self, text};
use ebb_http::stats::{last_whole_second, pod_stat};
use ebb_process::exposition;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::Semaphore;

use crate::handler::DataPlane;
use crate::probe::{ProbeOptions, probe_once};

/// Readiness path on the admin port (the kubelet's readiness probe).
pub const READY_PATH: &str = "/ready";
/// Liveness path on the admin port; it does not depend on the user container.
pub const LIVE_PATH: &str = "/live";
/// Prometheus path on the metrics port.
pub const METRICS_PATH: &str = "/metrics";

/// Most `/wait-for-drain` calls waiting at once: one per container's preStop hook is all a pod makes.
pub const MAX_DRAIN_WAITERS: usize = 16;

/// Shared state of the auxiliary endpoints.
#[derive(Debug)]
pub struct Admin {
    /// The data plane (readiness, drain, stats, metrics).
    pub data: Arc<DataPlane>,
    /// How to re-probe the user container on a readiness check.
    pub probe: ProbeOptions,
    /// The pod's name, which its stats carry.
    pub pod: String,
    /// When the proxy started (the stats' uptime).
    pub started: Instant,
    /// Places for `/wait-for-drain` callers.
    drain_waiters: Semaphore,
}

impl Admin {
    /// The endpoints over `data`.
    pub fn new(data: Arc<DataPlane>, probe: ProbeOptions, pod: String, started: Instant) -> Self {
        Self { data, probe, pod, started, drain_waiters: Semaphore::new(MAX_DRAIN_WAITERS) }
    }

    /// The admin port.
    pub async fn admin(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        // The kubelet's readiness probe as `ebb inject` writes it: `Ebb-Probe: queue`, whatever the path.
        if let Some(probe) = req.headers().get(HEADER_PROBE) {
            return Ok(match probe.as_bytes() == PROBE_QUEUE.as_bytes() {
                true => self.readiness().await,
                false => {
                    text(StatusCode::BAD_REQUEST, "this is the queue-proxy; it answers only Ebb-Probe: queue")
                }
            });
        }
        let response = match req.uri().path() {
            READY_PATH | "/healthz/ready" => self.readiness().await,
            LIVE_PATH | "/healthz" | "/healthz/live" => text(StatusCode::OK, "alive"),
            WAIT_FOR_DRAIN_PATH => {
                // Called from the user container's preStop hook while SIGTERM drains the queue-proxy: returns
                // once nothing more will come through, so the container stops only after its last request.
                // It never starts a drain itself: anyone on the pod network can call it.
                let Ok(_place) = self.drain_waiters.try_acquire() else {
                    return Ok(text(StatusCode::TOO_MANY_REQUESTS, "too many callers waiting for the drain"));
                };
                self.data.drainer.drained().await;
                text(StatusCode::OK, "drained")
            }
            _ => text(StatusCode::NOT_FOUND, "not found; try /ready, /live or /wait-for-drain"),
        };
        Ok(response)
    }

    /// Re-probes the user container, as the kubelet expects of a readiness check, and records the result
    /// where the data port's header-gated probe reads it: that probe then follows the container going away
    /// and coming back without probing upstream itself.
    async fn readiness(&self) -> Response<Full<Bytes>> {
        let data = &self.data;
        if data.drainer.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining");
        }
        match probe_once(&self.probe).await {
            Ok(()) => {
                if data.readiness.set(true) {
                    tracing::info!("user container is ready");
                }
                text(StatusCode::OK, "ready")
            }
            Err(err) => {
                if data.readiness.set(false) {
                    tracing::warn!("user container failed its readiness probe: {err}");
                } else {
                    tracing::debug!("user container not ready: {err}");
                }
                text(StatusCode::SERVICE_UNAVAILABLE, "user container not ready")
            }
        }
    }

    /// The stats port: the last whole second of the wall clock, which every pod and activator measures.
    pub async fn stats(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.uri().path() != STATS_PATH || req.method() != Method::GET {
            return Ok(text(StatusCode::NOT_FOUND, "not found; GET /stats"));
        }
        let now = Instant::now();
        let (end, end_wall) = last_whole_second(now, SystemTime::now());
        let second = self.data.stats.second_ending(end);
        let stat = pod_stat(&self.pod, &second, now.saturating_duration_since(self.started), end_wall);
        let encoded = match stat.encode() {
            Ok(encoded) => encoded,
            Err(err) => {
                tracing::error!("cannot encode the stat: {err}");
                return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the stat"));
            }
        };
        let mut response = Response::new(Full::new(Bytes::from(encoded)));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(STAT_CONTENT_TYPE));
        Ok(response)
    }

    /// The Prometheus port.
    pub async fn metrics(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.uri().path() != METRICS_PATH {
            return Ok(text(StatusCode::NOT_FOUND, "not found; GET /metrics"));
        }
        let data = &self.data;
        let queued = data.breaker.as_ref().map_or(0, |b| b.queued() as u64);
        let inside = data.stats.concurrency();
        let page = data.metrics.encode(inside.saturating_sub(queued), queued, data.is_ready());
        let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
        let (content_type, page) = exposition::negotiate(accept, page);
        Ok(admin::reply(StatusCode::OK, content_type, page))
    }
}
