//! The activator's request pipeline: answer its own probe, find the service, announce a cold start, wait for
//! capacity (failing fast when the pods cannot start), forward to the least-loaded pod with retries only while
//! nothing was sent, and hand back a response body that holds the slot, the pod lease and the stats interval
//! until it ends.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ebb_config::Protocol;
use ebb_config::names::{
    HEADER_KNATIVE_PROXIED, HEADER_PROBE, HEADER_PROXIED, HEADER_PROXY_ERROR, HEADER_SERVICE,
    PROBE_ACTIVATOR, PROXIED_BY_ACTIVATOR,
};
use ebb_config::value::format_duration;
use ebb_http::answer::{Answer, ClientKind, error_response};
use ebb_http::body::{BodyEnd, RequestBody};
use ebb_http::body::{ProxyBody, TrackedBody};
use ebb_http::breaker::{BreakerError, Permit};
use ebb_http::drain::Drainer;
use ebb_http::error::{Classified, ProxyError};
use ebb_http::h1::conn::{Admit, Forward, Policy, Request as FastRequest, ResponseView, Retry};
use ebb_http::h1::head::RequestEdit;
use ebb_http::h1::pool::Pool;
use ebb_http::proxy::{Forwarder, PendingUpgrade, is_upgrade};
use ebb_http::stats::StatsGuard;
use ebb_http::timeouts::{BodyTimer, TimeoutKind, Timeouts};
use http::header::{CONTENT_TYPE, HOST, HeaderName};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::balancer::Lease;
use crate::error::ActivatorError;
use crate::metrics::ServiceGauges;
use crate::registry::Registry;
use crate::retry::{AttemptBody, Replayable};
use crate::routing::{RouteError, RouteFields};
use crate::service::{RequestSettings, Service, Status};
use crate::stats::{StatSink, cold_start_stat};

/// How long after the service's own timeout the activator gives up on a forwarded request; the queue-proxy
/// owns the real timeouts and should always answer first.
pub const BACKSTOP: Duration = Duration::from_secs(5);

/// Most attempts to send one request whose earlier attempts reached no user container (pods that refuse and
/// then pass their probe again cannot keep a request going round for ever).
const MAX_ATTEMPTS: usize = 10;

/// Carries a cold start's phases to the client (W3C Server Timing; browsers' developer tools show it).
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// The activator's response body.
pub type ActivatorBody = ProxyBody<Completion>;

/// Rides with a response until it ends: frees the pod lease and, for requests the activator held, the
/// service slot and the stats interval.
#[derive(Debug)]
pub struct Completion {
    _held: Option<Held>,
    _lease: Lease,
}

/// A request the activator counts and throttles (proxy mode).
#[derive(Debug)]
struct Held {
    _permit: Permit,
    _guard: StatsGuard,
}

impl BodyEnd for Completion {}

/// Counts requests waiting across all services, against the global cap.
#[derive(Debug)]
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicU32, cap: u32) -> Option<Self> {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).ok()?;
        Some(Self(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Options of the pipeline.
#[derive(Debug, Clone)]
pub struct Options {
    /// This activator's name in the stats it sends (its pod name).
    pub name: String,
    /// Most requests waiting across all services.
    pub max_queued_total: u32,
    /// `Retry-After` on 503s.
    pub retry_after: Duration,
}

/// Everything the pipeline shares across requests.
pub struct Activator {
    /// The known services.
    pub registry: Arc<Registry>,
    /// Drain state: readiness fails once it starts.
    pub drainer: Arc<Drainer>,
    forwarder: Forwarder<AttemptBody>,
    sink: Arc<dyn StatSink>,
    metrics: Arc<crate::metrics::Metrics>,
    options: Options,
    waiting: AtomicU32,
    started: std::time::Instant,
}

impl std::fmt::Debug for Activator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activator").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Activator {
    /// The pipeline over `registry`, reporting stats to `sink`.
    pub fn new(
        registry: Arc<Registry>,
        sink: Arc<dyn StatSink>,
        metrics: Arc<crate::metrics::Metrics>,
        options: Options,
    ) -> Self {
        Self {
            registry,
            drainer: Arc::new(Drainer::new()),
            forwarder: Forwarder::new(&Default::default()),
            sink,
            metrics,
            options,
            waiting: AtomicU32::new(0),
            started: std::time::Instant::now(),
        }
    }

    /// Sends each busy service's load to the stat sink every second, until dropped.
    pub async fn report_stats(&self) {
        crate::stats::report(
            self.registry.clone(),
            self.sink.clone(),
            self.options.name.clone(),
            self.started,
        )
        .await
    }

    /// The Prometheus text of every metric.
    pub fn encode_metrics(&self) -> String {
        let gauges: Vec<ServiceGauges> = self
            .registry
            .services()
            .iter()
            .map(|service| ServiceGauges {
                key: service.key.clone(),
                queued: service.breaker.queued(),
                in_flight: service.breaker.in_flight(),
                ready: service.status().ready,
            })
            .collect();
        self.metrics.encode(&gauges, self.sink.dropped())
    }

    /// Requests at this activator, queued or in flight, across all services.
    pub fn in_flight(&self) -> u64 {
        self.registry.services().iter().map(|service| service.stats.concurrency()).sum()
    }

    /// Requests waiting for capacity across all services.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether the activator should receive traffic (it is not draining).
    pub fn is_ready(&self) -> bool {
        !self.drainer.is_draining()
    }

    /// Handles one request. Never fails: every error becomes an answer in the client's shape.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ActivatorBody>, Infallible> {
        if let Some(probe) = req.headers().get(HEADER_PROBE) {
            return Ok(self.probe_answer(probe));
        }
        let arrived = Instant::now();
        self.drainer.touch(arrived);
        let kind = ClientKind::of(req.uri().path(), req.headers());
        let routed = self.registry.route(req.uri(), req.headers()).map(|service| {
            let settings = service.request_settings();
            (service, settings)
        });
        // The body's silences are bounded by its service's timeout, and an early answer drains what is left.
        let timeout = routed.as_ref().ok().and_then(|(_, settings)| settings.request_body_timeout);
        let mut req = req.map(|body| RequestBody::new(body, timeout));
        let (service, settings) = match routed {
            Ok(routed) => routed,
            Err(err) => return Ok(self.fail(None, &route_error(err), kind)),
        };

        // Serve mode (local mode, warm service): straight to a pod, as a gateway routing to the pods would, so
        // the queue-proxies measure the load as they do in a cluster. Otherwise the activator holds a slot of
        // its capacity share and counts the request.
        let direct = service.is_serving() && service.status().ready > 0;
        let cold_start = !direct && service.waits_for_cold_start(arrived.into_std());
        let held = match direct {
            true => None,
            false => {
                match self.hold(&service, arrived, settings, || crate::compact::compact_head(&mut req)).await
                {
                    Ok(held) => Some(held),
                    Err(err) => return Ok(self.fail(Some(&service), &err, kind)),
                }
            }
        };
        let activation_deadline = arrived + settings.activation_timeout;
        let (mut response, lease, upgrade) =
            match Box::pin(self.forward(&service, req, settings, activation_deadline, !direct)).await {
                Ok(forwarded) => forwarded,
                Err(err) => return Ok(self.fail(Some(&service), &err, kind)),
            };
        service.metrics.forwarded();
        if let Some(timeline) = service.cold_start().filter(|_| cold_start) {
            let phases = timeline.phases(arrived.into_std(), std::time::Instant::now());
            service.metrics.cold_start_answered(&phases);
            response.headers_mut().append(SERVER_TIMING, phases.server_timing());
        }
        let completion = Completion { _held: held, _lease: lease };
        if let Some(upgrade) = upgrade {
            upgrade.spawn(completion);
            return Ok(response.map(|_| ProxyBody::empty()));
        }
        let timer = BodyTimer::new(Instant::now() + settings.timeout + BACKSTOP, None);
        Ok(response.map(|body| ProxyBody::Upstream(TrackedBody::new(body, Some(timer), completion))))
    }

    /// Counts the request in the service's stats (announcing a cold start) and waits for a slot.
    async fn hold(
        &self,
        service: &Service,
        arrived: Instant,
        settings: RequestSettings,
        compact: impl FnOnce(),
    ) -> Result<Held, ActivatorError> {
        // The first request for a service at zero tells the autoscaler at once.
        let cold = service.status().ready == 0 && service.stats.concurrency() == 0;
        // Queued until a slot is free: the autoscaler holds scale-downs while an activator has requests queued.
        let mut guard = service.stats.enter_queued_at(arrived.into_std(), false);
        if cold {
            self.sink.send(cold_start_stat(service, &self.options.name, self.started.elapsed()));
        }
        // Every wait is recorded, however it ends (the timer records on drop, a client gone included), so the
        // histogram shows the waits that timed out too; a request refused at once for a full queue never waited.
        let timer = service.metrics.queue_timer(arrived.into_std());
        let admitted = self.admit(service, arrived + settings.activation_timeout, settings, compact).await;
        if let Err(ActivatorError::QueueFull) = admitted {
            timer.discard();
        }
        let permit = admitted?;
        guard.admitted();
        Ok(Held { _permit: permit, _guard: guard })
    }

    /// Takes a slot of the service's capacity, queueing (in arrival order) until a pod can take the request,
    /// the activation deadline passes, or the service's pods are found unable to start. `compact` runs when the
    /// request has to wait (it lets go of the connection's read buffer).
    async fn admit(
        &self,
        service: &Service,
        deadline: Instant,
        settings: RequestSettings,
        compact: impl FnOnce(),
    ) -> Result<Permit, ActivatorError> {
        if let Ok(permit) = service.breaker.try_acquire() {
            return Ok(permit);
        }
        let _waiting =
            Waiting::enter(&self.waiting, self.options.max_queued_total).ok_or(ActivatorError::QueueFull)?;
        compact();
        let mut status = service.watch();
        tokio::select! {
            acquired = service.breaker.acquire(Some(deadline)) => acquired.map_err(|err| match err {
                BreakerError::Overloaded => ActivatorError::QueueFull,
                BreakerError::QueueTimeout => activation_timeout(settings),
            }),
            failed = unable_to_start(&mut status) => Err(failed),
        }
    }

    /// Forwards to a pod, and to another when nothing of the request reached a user container (the connection
    /// failed before anything was sent, or the pod answered that it forwarded nothing): a pod that refused is
    /// left out until it answers its probe again, a full one is skipped for this request, and with no usable pod
    /// left the request waits for one as it would at zero. `proxied` marks the request as the activator's for
    /// the queue-proxy's accounting.
    async fn forward(
        &self,
        service: &Arc<Service>,
        req: Request<RequestBody>,
        settings: RequestSettings,
        activation_deadline: Instant,
        proxied: bool,
    ) -> Result<(Response<Incoming>, Lease, Option<PendingUpgrade>), ActivatorError> {
        let (mut parts, body) = req.into_parts();
        // The client's own claims are never passed on: only the activator says a request went through it.
        let headers = &mut parts.headers;
        headers.remove(HEADER_KNATIVE_PROXIED);
        headers.remove(HEADER_PROXIED);
        if proxied {
            headers.insert(HEADER_PROXIED, HeaderValue::from_static(PROXIED_BY_ACTIVATOR));
        }
        // An upgrade's handshake lives in the request's extensions, which only the first attempt can carry.
        let retryable = !is_upgrade(&parts.headers);
        let body = match retryable {
            true => Replayable::read(body).await?,
            false => Replayable::streamed(body),
        };
        let template = retryable
            .then(|| (parts.method.clone(), parts.uri.clone(), parts.version, parts.headers.clone()));
        let mut first = Some(parts);
        let mut full: Vec<Arc<str>> = Vec::new();
        let mut last_error = None;
        let deadline = Instant::now() + settings.timeout + BACKSTOP;
        for _ in 0..MAX_ATTEMPTS {
            let lease = match service.pick(&full) {
                Some(lease) => lease,
                // Every usable pod is full: their 503 is the answer.
                None if !full.is_empty() => break,
                None => {
                    wait_for_a_pod(service, activation_deadline, settings).await?;
                    continue;
                }
            };
            let parts = match (first.take(), &template) {
                (Some(parts), _) => parts,
                (None, Some((method, uri, version, headers))) => {
                    let mut rebuilt = Request::new(());
                    *rebuilt.method_mut() = method.clone();
                    *rebuilt.uri_mut() = uri.clone();
                    *rebuilt.version_mut() = *version;
                    *rebuilt.headers_mut() = headers.clone();
                    rebuilt.into_parts().0
                }
                (None, None) => break,
            };
            let outcome = {
                // Pinned in place: the timeout then holds a pointer, not a copy of the forwarding future.
                let attempt = pin!(self.forwarder.forward(
                    Request::from_parts(parts, body.attempt()),
                    &lease.endpoint().authority,
                    settings.protocol,
                ));
                tokio::time::timeout_at(deadline, attempt).await
            };
            let pod = lease.endpoint().name.clone();
            let unforwarded = match outcome {
                Ok(Ok((response, upgrade))) => {
                    let Some(err) = ProxyError::unforwarded_by_pod(response.headers()) else {
                        return Ok((response, lease, upgrade));
                    };
                    self.leave_out(service, &pod, &err, &mut full);
                    if !(retryable && body.replayable()) {
                        return Ok((response, lease, upgrade));
                    }
                    err
                }
                Ok(Err(err)) if is_connect_failure(&err) => {
                    self.leave_out(service, &pod, &err, &mut full);
                    if !(retryable && body.replayable()) {
                        return Err(err.into());
                    }
                    err
                }
                Ok(Err(err)) => return Err(err.into()),
                Err(_elapsed) => return Err(ProxyError::Timeout(TimeoutKind::ResponseStart).into()),
            };
            tracing::info!(service = %service.key, %pod, "nothing reached the pod's container ({unforwarded}); trying another");
            last_error = Some(unforwarded);
        }
        Err(last_error.unwrap_or(ProxyError::UpstreamRefused).into())
    }

    /// A pod reached nothing of a request: a full one is skipped for this request; one that refused (its
    /// container or its queue-proxy is gone) is out of the rotation until it answers its probe again.
    fn leave_out(&self, service: &Arc<Service>, pod: &Arc<str>, err: &ProxyError, full: &mut Vec<Arc<str>>) {
        match err {
            ProxyError::Overloaded => full.push(pod.clone()),
            _ => service.pod_failed(pod, self.registry.prober()),
        }
    }

    fn fail<B: From<Bytes>>(
        &self,
        service: Option<&Service>,
        err: &ActivatorError,
        kind: ClientKind,
    ) -> Response<B> {
        self.metrics.rejected(service.map(|s| &s.key), err);
        let name = service.map_or("", |s| s.name.as_str());
        err.log(name);
        error_response(err, kind, Answer { service: name, retry_after: self.options.retry_after })
    }

    /// `Ebb-Probe: activator` -> 200 `activator` (503 while draining); other components' probes are refused.
    fn probe_answer(&self, probe: &HeaderValue) -> Response<ActivatorBody> {
        let (status, body) = if probe.as_bytes() != PROBE_ACTIVATOR.as_bytes() {
            (StatusCode::BAD_REQUEST, "this is the activator; it answers only Ebb-Probe: activator")
        } else if self.is_ready() {
            (StatusCode::OK, PROBE_ACTIVATOR)
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        };
        let mut response = Response::new(ProxyBody::from(bytes::Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    }
}

/// What a request on the HTTP/1 fast path holds until its response ends: the service slot and stats interval of
/// a request the activator counts, the pod lease, and what a further attempt needs.
#[derive(Debug)]
pub struct FastHold {
    service: Arc<Service>,
    kind: ClientKind,
    settings: RequestSettings,
    arrived: Instant,
    cold_start: bool,
    _held: Option<Held>,
    lease: Lease,
    /// Pods that answered full for this request.
    full: Vec<Arc<str>>,
    attempts: usize,
}

impl BodyEnd for FastHold {}

/// The activator's pipeline on the HTTP/1 fast path: the same steps as [`Activator::handle`] for the requests
/// the fast path carries (a body of at most [`crate::retry::BUFFER_LIMIT`], read whole before the first attempt
/// so that any attempt can send it; probes, larger bodies and h2c upstreams stay on hyper's path).
impl Policy for Activator {
    type Hold = FastHold;

    fn admit<'s>(&'s self, req: &FastRequest<'_>) -> impl Future<Output = Admit<FastHold>> + Send + use<'s> {
        let arrived = Instant::now();
        let services =
            req.headers().filter(|(name, _)| name.eq_ignore_ascii_case(HEADER_SERVICE.as_bytes())).count();
        let fields = RouteFields {
            hosts: 1,
            host: req.header(HOST.as_str()),
            authority: None,
            services,
            service: req.header(HEADER_SERVICE),
        };
        let routed = self.registry.route_fields(&fields).map(|service| {
            let settings = service.request_settings();
            (service, settings)
        });
        let hyper = req.header(HEADER_PROBE).is_some()
            || req.content_length() > crate::retry::BUFFER_LIMIT
            || matches!(&routed, Ok((_, settings)) if settings.protocol == Some(Protocol::H2c));
        let kind = ClientKind::from_parts(req.path(), req.header(CONTENT_TYPE.as_str()));
        async move {
            if hyper {
                return Admit::Hyper;
            }
            self.drainer.touch(arrived);
            let (service, settings) = match routed {
                Ok(routed) => routed,
                Err(err) => return Admit::Answer(self.fail(None, &route_error(err), kind)),
            };
            let direct = service.is_serving() && service.status().ready > 0;
            let cold_start = !direct && service.waits_for_cold_start(arrived.into_std());
            let held = match direct {
                true => None,
                // The fast path keeps a waiting request's bytes compact itself.
                false => match self.hold(&service, arrived, settings, || {}).await {
                    Ok(held) => Some(held),
                    Err(err) => return Admit::Answer(self.fail(Some(&service), &err, kind)),
                },
            };
            let activation_deadline = arrived + settings.activation_timeout;
            let lease = loop {
                if let Some(lease) = service.pick(&[]) {
                    break lease;
                }
                if let Err(err) = wait_for_a_pod(&service, activation_deadline, settings).await {
                    return Admit::Answer(self.fail(Some(&service), &err, kind));
                }
            };
            let upstream = lease.endpoint().authority.clone();
            let backstop = settings.timeout + BACKSTOP;
            let hold = FastHold {
                service,
                kind,
                settings,
                arrived,
                cold_start,
                _held: held,
                lease,
                full: Vec::new(),
                attempts: 1,
            };
            // The client's own claims are never passed on: only the activator says a request went through it.
            let add = (!direct).then_some((HEADER_PROXIED, PROXIED_BY_ACTIVATOR));
            Admit::Forward(Forward {
                hold,
                upstream,
                start: Instant::now(),
                // The queue-proxy owns the real timeouts: the backstop bounds the wait for the response head
                // (as a response-start timeout), and, once more, its body.
                timeouts: Timeouts {
                    total: backstop + backstop,
                    response_start: backstop,
                    idle: None,
                    request_body: settings.request_body_timeout,
                },
                close: false,
                request: RequestEdit { remove: &[HEADER_KNATIVE_PROXIED, HEADER_PROXIED], add },
                response_remove: &[],
                replay: true,
            })
        }
    }

    fn responded(&self, hold: &mut FastHold, _status: StatusCode) -> Option<(&'static str, HeaderValue)> {
        hold.service.metrics.forwarded();
        let timeline = hold.service.cold_start().filter(|_| hold.cold_start)?;
        let phases = timeline.phases(hold.arrived.into_std(), std::time::Instant::now());
        hold.service.metrics.cold_start_answered(&phases);
        Some(("server-timing", phases.server_timing()))
    }

    fn failed(&self, hold: FastHold, err: &ProxyError) -> Response<Bytes> {
        let err = match err {
            ProxyError::Timeout(TimeoutKind::Total) => ProxyError::Timeout(TimeoutKind::ResponseStart),
            other => other.clone(),
        };
        self.fail(Some(&hold.service), &ActivatorError::Proxy(err), hold.kind)
    }

    fn unforwarded(&self, response: &ResponseView<'_>) -> Option<ProxyError> {
        ProxyError::unforwarded_by_value(response.header(HEADER_PROXY_ERROR)?)
    }

    fn retry<'s>(
        &'s self,
        hold: &'s mut FastHold,
        failure: &ProxyError,
    ) -> impl Future<Output = Retry> + Send + 's {
        let failure = failure.clone();
        async move {
            let service = hold.service.clone();
            let pod = hold.lease.endpoint().name.clone();
            self.leave_out(&service, &pod, &failure, &mut hold.full);
            tracing::info!(service = %service.key, %pod, "nothing reached the pod's container ({failure}); trying another");
            let activation_deadline = hold.arrived + hold.settings.activation_timeout;
            while hold.attempts < MAX_ATTEMPTS {
                hold.attempts += 1;
                match service.pick(&hold.full) {
                    Some(lease) => {
                        let next = lease.endpoint().authority.clone();
                        hold.lease = lease;
                        return Retry::To(next);
                    }
                    // Every usable pod is full: their 503 is the answer.
                    None if !hold.full.is_empty() => break,
                    None => {
                        if let Err(err) = wait_for_a_pod(&service, activation_deadline, hold.settings).await {
                            return Retry::Answer(self.fail(Some(&service), &err, hold.kind));
                        }
                    }
                }
            }
            Retry::Answer(self.fail(Some(&service), &ActivatorError::Proxy(failure), hold.kind))
        }
    }

    fn pool(&self) -> &Arc<Pool> {
        self.forwarder.pool()
    }
}

fn route_error(err: RouteError) -> ActivatorError {
    match err {
        RouteError::Unknown(_) => ActivatorError::UnknownService(err.to_string()),
        RouteError::BadHeader(_) | RouteError::Duplicate(_) | RouteError::Conflict { .. } => {
            ActivatorError::Misrouted(err.to_string())
        }
    }
}

fn activation_timeout(settings: RequestSettings) -> ActivatorError {
    ActivatorError::ActivationTimeout(format_duration(settings.activation_timeout))
}

fn is_connect_failure(err: &ProxyError) -> bool {
    matches!(err, ProxyError::UpstreamRefused | ProxyError::UpstreamConnect(_))
}

/// Resolves when the service is removed or its pods are found unable to start; never otherwise.
async fn unable_to_start(status: &mut tokio::sync::watch::Receiver<Status>) -> ActivatorError {
    let seen =
        status.wait_for(|s| s.removed || s.blocked.is_some()).await.map(|s| (s.removed, s.blocked.clone()));
    match seen {
        Ok((true, _)) => ActivatorError::ServiceRemoved,
        Ok((false, reason)) => ActivatorError::ServiceBlocked(reason.unwrap_or_default()),
        // The service's sender lives as long as the service, which the caller holds.
        Err(_) => std::future::pending().await,
    }
}

/// Waits until the service has a usable pod, failing like admission does.
async fn wait_for_a_pod(
    service: &Service,
    deadline: Instant,
    settings: RequestSettings,
) -> Result<(), ActivatorError> {
    let mut status = service.watch();
    let ready = async {
        let _ = status.wait_for(|s| s.ready > 0 || s.removed || s.blocked.is_some()).await;
    };
    tokio::time::timeout_at(deadline, ready).await.map_err(|_| activation_timeout(settings))?;
    match service.status() {
        Status { removed: true, .. } => Err(ActivatorError::ServiceRemoved),
        Status { ready: 0, blocked: Some(reason), .. } => Err(ActivatorError::ServiceBlocked(reason)),
        _ => Ok(()),
    }
}
