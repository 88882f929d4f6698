//! The data-plane pipeline for one request: header-gated probe answers, stats, breaker, forwarding under the
//! response-start and idle timeouts, and a response body that carries the slot, the stats guard and the body timers
//! until it ends.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ebb_config::Protocol;
use ebb_config::names::{
    HEADER_KNATIVE_PROXIED, HEADER_PROBE, HEADER_PROBE_WAIT, HEADER_PROXIED, HEADER_PROXY_ERROR, PROBE_QUEUE,
    PROBE_WAIT_MAX_SECS, PROXIED_BY_ACTIVATOR,
};
use ebb_http::answer::{Answer, ClientKind, error_response};
use ebb_http::body::{BodyEnd, ProxyBody, RequestBody, TrackedBody};
use ebb_http::breaker::{Breaker, Permit};
use ebb_http::drain::Drainer;
use ebb_http::error::{Classified, ProxyError};
use ebb_http::h1::conn::{Admit, Forward, Policy};
use ebb_http::h1::head::RequestEdit;
use ebb_http::h1::pool::Pool;
use ebb_http::proxy::Forwarder;
use ebb_http::stats::{RequestStats, StatsGuard};
use ebb_http::timeouts::{BodyTimer, TimeoutKind, Timeouts};
use http::header::{CONNECTION, CONTENT_TYPE, HOST};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::probe::{ProbeOptions, Readiness};

/// The data plane's response body.
pub type DataBody = ProxyBody<Completion>;

/// Whether a request came through the activator (`Ebb-Proxied: activator`, or Knative's
/// `K-Proxy-Request: activator`).
pub fn is_proxied(headers: &HeaderMap) -> bool {
    proxied_by(|name| headers.get(name).map(HeaderValue::as_bytes))
}

/// [`is_proxied`] over any way of reading a field's first value.
fn proxied_by<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> bool {
    let by_activator =
        |name: &str| get(name).is_some_and(|v| v.eq_ignore_ascii_case(PROXIED_BY_ACTIVATOR.as_bytes()));
    by_activator(HEADER_PROXIED) || by_activator(HEADER_KNATIVE_PROXIED)
}

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct DataPlane {
    /// The upstream pools.
    pub forwarder: Forwarder<RequestBody>,
    /// The user container.
    pub upstream: Authority,
    /// Upstream protocol override.
    pub protocol: Option<Protocol>,
    /// The concurrency limit (`None` = unlimited).
    pub breaker: Option<Breaker>,
    /// Time-weighted request stats.
    pub stats: RequestStats,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Request timeouts.
    pub timeouts: Timeouts,
    /// Whether the user container is ready.
    pub readiness: Arc<Readiness>,
    /// How to probe the user container again when it refuses a connection.
    pub probe: ProbeOptions,
    /// Drain state.
    pub drainer: Arc<Drainer>,
    /// `NAMESPACE/NAME`.
    pub service: String,
    /// `Retry-After` on 503s.
    pub retry_after: Duration,
}

/// Rides along with a response until it ends: frees the slot, ends the stats interval and records the
/// request's duration (when dropped), and counts a timeout or failure that cut the body.
#[derive(Debug)]
pub struct Completion {
    start: Instant,
    metrics: Arc<Metrics>,
    _permit: Option<Permit>,
    _guard: StatsGuard,
}

impl BodyEnd for Completion {
    fn timed_out(&mut self, kind: TimeoutKind) {
        body_timed_out(&self.metrics, kind);
    }

    fn failed(&mut self, error: &ProxyError) {
        body_failed(&self.metrics, error);
    }
}

/// A timeout cut a response's body: counted and logged the same on both paths.
fn body_timed_out(metrics: &Metrics, kind: TimeoutKind) {
    metrics.error(&ProxyError::Timeout(kind));
    tracing::info!("response body cut: {}", ProxyError::Timeout(kind));
}

/// A failure cut a response's body.
fn body_failed(metrics: &Metrics, error: &ProxyError) {
    metrics.error(error);
    error.log("");
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.metrics.finished(self.start.elapsed());
    }
}

/// What a request on the HTTP/1 fast path holds until its response ends: the same as [`Completion`] (which
/// it becomes, in effect, once the response started), and how to answer if forwarding fails before that.
#[derive(Debug)]
pub struct FastHold {
    start: Instant,
    metrics: Arc<Metrics>,
    _permit: Option<Permit>,
    _guard: StatsGuard,
    kind: ClientKind,
    close_after: bool,
    /// The response started: its end is recorded as the request's duration.
    responded: bool,
}

impl BodyEnd for FastHold {
    fn timed_out(&mut self, kind: TimeoutKind) {
        body_timed_out(&self.metrics, kind);
    }

    fn failed(&mut self, error: &ProxyError) {
        body_failed(&self.metrics, error);
    }
}

impl Drop for FastHold {
    fn drop(&mut self) {
        if self.responded {
            self.metrics.finished(self.start.elapsed());
        }
    }
}

/// The sidecar's pipeline on the HTTP/1 fast path: the same steps as [`DataPlane::handle`], in the same order,
/// for the requests the fast path carries (probes stay on hyper's path).
impl Policy for DataPlane {
    type Hold = FastHold;

    fn admit<'s>(
        &'s self,
        req: &ebb_http::h1::conn::Request<'_>,
    ) -> impl Future<Output = Admit<FastHold>> + Send + use<'s> {
        // Probes, and requests an upstream speaking h2c must get, are hyper's.
        let probe = req.header(HEADER_PROBE).is_some() || self.protocol == Some(Protocol::H2c);
        let start = Instant::now();
        let proxied = proxied_by(|name| req.header(name));
        let kind = ClientKind::from_parts(req.path(), req.header(CONTENT_TYPE.as_str()));
        async move {
            if probe {
                return Admit::Hyper;
            }
            self.drainer.touch(start);
            let mut guard = match &self.breaker {
                Some(_) => self.stats.enter_queued_at(start.into_std(), proxied),
                None => self.stats.enter_at(start.into_std(), proxied),
            };
            let close_after = self.drainer.is_draining();
            let (queue_deadline, queue_kind) = self.timeouts.response_start_deadline(start);
            let permit = match &self.breaker {
                None => None,
                Some(breaker) => match breaker.acquire(Some(queue_deadline)).await {
                    Ok(permit) => {
                        guard.admitted();
                        Some(permit)
                    }
                    Err(err) => {
                        let err = ProxyError::from_breaker(err, queue_kind);
                        return Admit::Answer(self.fail(&err, kind, close_after));
                    }
                },
            };
            let hold = FastHold {
                start,
                metrics: self.metrics.clone(),
                _permit: permit,
                _guard: guard,
                kind,
                close_after,
                responded: false,
            };
            Admit::Forward(Forward {
                hold,
                upstream: self.upstream.clone(),
                start,
                timeouts: self.timeouts,
                close: close_after,
                request: RequestEdit { remove: &[HEADER_PROXIED, HEADER_KNATIVE_PROXIED], add: None },
                // Only this proxy may say that nothing reached the container (the activator retries on it).
                response_remove: &[HEADER_PROXY_ERROR],
                replay: false,
            })
        }
    }

    fn responded(&self, hold: &mut FastHold, status: StatusCode) -> Option<(&'static str, HeaderValue)> {
        self.metrics.first_byte(hold.start.elapsed());
        self.metrics.response(status);
        hold.responded = true;
        None
    }

    fn failed(&self, hold: FastHold, err: &ProxyError) -> Response<Bytes> {
        if *err == ProxyError::UpstreamRefused {
            // The container died or is restarting: fail readiness now, not at the kubelet's next probe.
            self.readiness.lost(&self.probe);
        }
        // A client that stopped sending its body has the rest of it unread on the connection.
        let close = hold.close_after || matches!(err, ProxyError::Timeout(TimeoutKind::RequestBody));
        self.fail(err, hold.kind, close)
    }

    fn pool(&self) -> &Arc<Pool> {
        self.forwarder.pool()
    }
}

impl DataPlane {
    /// Whether the proxy should be receiving traffic: the user container is ready and no drain started.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready() && !self.drainer.is_draining()
    }

    /// Handles one request on the data port. Never fails: every error becomes an answer.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<DataBody>, Infallible> {
        if let Some(probe) = req.headers().get(HEADER_PROBE) {
            return Ok(self.probe_answer(probe, probe_wait(req.headers())).await);
        }
        // The body's silences are bounded, and an early answer drains what is left of it.
        let req = req.map(|body| RequestBody::new(body, self.timeouts.request_body));
        if req.headers().get_all(HOST).iter().nth(1).is_some() {
            // Which Host a container would read is anyone's guess (RFC 9112 section 3.2: answer 400).
            let kind = ClientKind::of(req.uri().path(), req.headers());
            return Ok(self.fail(&ProxyError::BadRequest("more than one Host header"), kind, true));
        }
        let start = Instant::now();
        self.drainer.touch(start);
        // Queued (it counts in the stats' queued part) until the breaker admits it.
        let proxied = is_proxied(req.headers());
        let mut guard = match &self.breaker {
            Some(_) => self.stats.enter_queued_at(start.into_std(), proxied),
            None => self.stats.enter_at(start.into_std(), proxied),
        };
        let kind = ClientKind::of(req.uri().path(), req.headers());
        let close_after = req.version() <= Version::HTTP_11 && self.drainer.is_draining();

        // A queued request waits no longer than its response may take to start: a slot granted later would
        // only be held for an immediate 504.
        let (queue_deadline, queue_kind) = self.timeouts.response_start_deadline(start);
        let permit = match &self.breaker {
            None => None,
            Some(breaker) => match breaker.acquire(Some(queue_deadline)).await {
                Ok(permit) => {
                    guard.admitted();
                    Some(permit)
                }
                Err(err) => {
                    return Ok(self.fail(&ProxyError::from_breaker(err, queue_kind), kind, close_after));
                }
            },
        };

        let mut req = req;
        let headers = req.headers_mut();
        if headers.contains_key(HEADER_PROXIED) {
            headers.remove(HEADER_PROXIED);
        }
        if headers.contains_key(HEADER_KNATIVE_PROXIED) {
            headers.remove(HEADER_KNATIVE_PROXIED);
        }

        let (deadline, deadline_kind) = self.timeouts.header_deadline(start, Instant::now());
        // Pinned in place: the timeout then holds a pointer instead of a copy of the whole forwarding future.
        let forwarded = pin!(self.forwarder.forward(req, &self.upstream, self.protocol));
        let (mut response, upgrade) = match tokio::time::timeout_at(deadline, forwarded).await {
            Ok(Ok(forwarded)) => forwarded,
            // A client that stopped sending its body has the rest of it unread on the connection.
            Ok(Err(err @ ProxyError::Timeout(TimeoutKind::RequestBody))) => {
                return Ok(self.fail(&err, kind, true));
            }
            Ok(Err(err @ ProxyError::UpstreamRefused)) => {
                // The container died or is restarting: fail readiness now, not at the kubelet's next probe.
                self.readiness.lost(&self.probe);
                return Ok(self.fail(&err, kind, close_after));
            }
            Ok(Err(err)) => return Ok(self.fail(&err, kind, close_after)),
            Err(_elapsed) => return Ok(self.fail(&ProxyError::Timeout(deadline_kind), kind, close_after)),
        };
        self.metrics.first_byte(start.elapsed());
        self.metrics.response(response.status());
        // Only this proxy may say that nothing reached the container (the activator retries on it).
        if response.headers().contains_key(HEADER_PROXY_ERROR) {
            response.headers_mut().remove(HEADER_PROXY_ERROR);
        }
        if close_after && upgrade.is_none() {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let completion = Completion { start, metrics: self.metrics.clone(), _permit: permit, _guard: guard };
        if let Some(upgrade) = upgrade {
            // The tunnel keeps the slot and counts as in flight until it closes.
            upgrade.spawn(completion);
            return Ok(response.map(|_| ProxyBody::empty()));
        }
        let timer = BodyTimer::new(self.timeouts.total_deadline(start), self.timeouts.idle);
        Ok(response.map(|body| ProxyBody::Upstream(TrackedBody::new(body, Some(timer), completion))))
    }

    fn fail<B: From<Bytes>>(&self, err: &ProxyError, kind: ClientKind, close_after: bool) -> Response<B> {
        self.metrics.error(err);
        self.metrics.response(err.status());
        err.log(&self.service);
        let answer = Answer { service: &self.service, retry_after: self.retry_after };
        let mut response = error_response(err, kind, answer);
        if close_after {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// `Ebb-Probe: queue` -> 200 `queue` when ready, 503 before (and while draining); with `Ebb-Probe-Wait`,
    /// a probe of a starting pod is held until the user container is ready or the wait is over. Other
    /// components' probes are not ours to answer.
    async fn probe_answer(&self, probe: &HeaderValue, wait: Duration) -> Response<DataBody> {
        let ours = probe.as_bytes() == PROBE_QUEUE.as_bytes();
        if ours && !wait.is_zero() && !self.drainer.is_draining() && !self.readiness.is_ready() {
            self.readiness.wait_ready(wait).await;
        }
        let (status, body) = if !ours {
            (StatusCode::BAD_REQUEST, "this is the queue-proxy; it answers only Ebb-Probe: queue")
        } else if self.is_ready() {
            (StatusCode::OK, PROBE_QUEUE)
        } else if self.drainer.is_draining() {
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "user container not ready")
        };
        let mut response = Response::new(ProxyBody::from(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    }
}

/// How long a probe may be held (`Ebb-Probe-Wait`, whole seconds, capped); zero when not asked.
fn probe_wait(headers: &http::HeaderMap) -> Duration {
    let seconds = headers.get(HEADER_PROBE_WAIT).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    Duration::from_secs(seconds.unwrap_or(0).min(PROBE_WAIT_MAX_SECS))
}
