//! One service as the activator holds it: its settings, its pods and their probe state, the usable endpoints,
//! the breaker that queues requests while there is no capacity, its request stats, and a status that waiting
//! requests watch (ready pods, why pods cannot start, removal).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use ebb_config::Mode;
use ebb_config::ServiceId;
use ebb_config::{DataPlaneSpec, Protocol};
use ebb_http::breaker::Breaker;
use ebb_http::stats::RequestStats;
use ebb_process::sync::{Locked, ReadWrite};
use http::uri::Authority;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::balancer::{self, Endpoint, Lease};
use crate::capacity::{pod_capacity, service_capacity};
use crate::cold_start::Timeline;
use crate::endpoints::PodInfo;
use crate::metrics::ServiceMetrics;
use crate::probe::Prober;

/// What requests waiting for a service need to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Pods that answered their probe and are not terminating.
    pub ready: usize,
    /// Why the service's pods cannot start, when none is ready and every one is blocked.
    pub blocked: Option<String>,
    /// The service is gone.
    pub removed: bool,
}

/// The settings one request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSettings {
    /// How long the request may wait for a pod.
    pub activation_timeout: Duration,
    /// The service's request timeout; the activator's backstop is this plus [`crate::handler::BACKSTOP`].
    pub timeout: Duration,
    /// Upstream protocol override.
    pub protocol: Option<Protocol>,
    /// Longest silence of a client sending its request body.
    pub request_body_timeout: Option<Duration>,
}

/// A service and everything the activator keeps for it.
#[derive(Debug)]
pub struct Service {
    /// `NAMESPACE/NAME`.
    pub key: ServiceId,
    /// The key as text, for error bodies and logs.
    pub name: String,
    /// Queues requests while there is no capacity; its capacity is this activator's share of the ready pods.
    pub breaker: Breaker,
    /// Requests queued or in flight at this activator, time-weighted (reported to the autoscaler).
    pub stats: RequestStats,
    /// The service's cached metric handles.
    pub metrics: ServiceMetrics,
    inner: Mutex<Inner>,
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    status: watch::Sender<Status>,
    /// Rotates ties in the balancer and seeds power-of-two choices.
    picks: AtomicU64,
    /// The per-pod limit, read on every request without taking the lock.
    container_concurrency: AtomicU32,
    /// Serve mode: requests bypass the activator's accounting and throttling.
    serving: AtomicBool,
    activators: Arc<AtomicUsize>,
    global_queue_cap: u32,
}

#[derive(Debug)]
struct Inner {
    config: DataPlaneSpec,
    pods: HashMap<Arc<str>, PodState>,
    /// The latest cold start, over or not.
    cold_start: Option<Timeline>,
}

#[derive(Debug)]
struct PodState {
    info: PodInfo,
    /// Set once the pod answered its probe.
    endpoint: Option<Arc<Endpoint>>,
    probe: Option<AbortHandle>,
}

impl Drop for PodState {
    fn drop(&mut self) {
        if let Some(probe) = &self.probe {
            probe.abort();
        }
    }
}

impl Service {
    /// A service with no pods yet: every request queues until one is ready.
    pub fn new(
        key: ServiceId,
        config: DataPlaneSpec,
        metrics: ServiceMetrics,
        activators: Arc<AtomicUsize>,
        global_queue_cap: u32,
    ) -> Self {
        let queue_depth = config.max_queued.min(global_queue_cap);
        Self {
            name: key.to_string(),
            key,
            breaker: Breaker::new(0, queue_depth),
            stats: RequestStats::new(std::time::Instant::now()),
            metrics,
            container_concurrency: AtomicU32::new(config.container_concurrency),
            serving: AtomicBool::new(false),
            inner: Mutex::new(Inner { config, pods: HashMap::new(), cold_start: None }),
            endpoints: RwLock::new(Arc::from([])),
            status: watch::Sender::new(Status::default()),
            picks: AtomicU64::new(0),
            activators,
            global_queue_cap,
        }
    }

    /// The service's current settings.
    pub fn config(&self) -> DataPlaneSpec {
        self.inner.locked().config.clone()
    }

    /// The settings one request needs, copied out without cloning the rest.
    pub fn request_settings(&self) -> RequestSettings {
        let inner = self.inner.locked();
        let config = &inner.config;
        RequestSettings {
            activation_timeout: config.activation_timeout,
            timeout: config.timeout,
            protocol: config.protocol,
            request_body_timeout: config.request_body_timeout,
        }
    }

    /// Applies new settings (concurrency, queue bounds, timeouts).
    pub fn set_config(&self, config: DataPlaneSpec) {
        self.breaker.set_queue_depth(config.max_queued.min(self.global_queue_cap));
        self.container_concurrency.store(config.container_concurrency, Ordering::Relaxed);
        self.inner.locked().config = config;
        self.rebuild();
    }

    /// Sets the request path the autoscaler chose.
    pub fn set_mode(&self, mode: Mode) {
        self.serving.store(mode == Mode::Serve, Ordering::Relaxed);
    }

    /// Whether requests go straight to the pods.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Watches the service's status.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The status now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A request arrived at `at` and will wait for a pod: returns whether it waits for a cold start (the
    /// service has no ready pod), which begins now unless one is under way.
    pub fn waits_for_cold_start(&self, at: std::time::Instant) -> bool {
        let mut inner = self.inner.locked();
        if self.status.borrow().ready > 0 {
            return false;
        }
        if inner.cold_start.as_ref().is_none_or(Timeline::is_over) {
            inner.cold_start = Some(Timeline::begin(at));
        }
        true
    }

    /// The latest cold start's timeline.
    pub fn cold_start(&self) -> Option<Timeline> {
        self.inner.locked().cold_start
    }

    /// Replaces the set of pods. New pods with an address are probed; pods that left or are terminating stop
    /// receiving requests at once (requests already sent to them finish).
    pub fn set_pods(self: &Arc<Self>, pods: Vec<PodInfo>, prober: &Prober) {
        {
            let mut inner = self.inner.locked();
            let mut next = HashMap::with_capacity(pods.len());
            for info in pods {
                let mut state = inner.pods.remove(&info.name).unwrap_or(PodState {
                    info: info.clone(),
                    endpoint: None,
                    probe: None,
                });
                if state.info.addr != info.addr || info.terminating {
                    // A new address is a new process; a terminating pod takes nothing new.
                    state.endpoint = None;
                    if let Some(probe) = state.probe.take() {
                        probe.abort();
                    }
                } else if state.info.ready == Some(true) && info.ready == Some(false) {
                    // The kubelet's probe failed (a drain, a sick container): out of the rotation until our
                    // own probe passes again.
                    state.endpoint = None;
                }
                state.info = info;
                if let (Some(addr), false, None, None) =
                    (state.info.addr, state.info.terminating, &state.endpoint, &state.probe)
                {
                    state.probe = Some(self.spawn_probe(state.info.name.clone(), addr, prober));
                }
                next.insert(state.info.name.clone(), state);
            }
            // Whatever is left in `inner.pods` is gone: dropping it aborts its probe.
            inner.pods = next;
        }
        self.rebuild();
    }

    fn spawn_probe(self: &Arc<Self>, name: Arc<str>, addr: SocketAddr, prober: &Prober) -> AbortHandle {
        let (service, prober) = (Arc::downgrade(self), prober.clone());
        tokio::spawn(async move {
            prober.wait_until_serving(addr).await;
            if let Some(service) = Weak::upgrade(&service) {
                service.pod_serving(&name, addr);
            }
        })
        .abort_handle()
    }

    /// A pod answered its probe: it takes requests from now on.
    fn pod_serving(&self, name: &Arc<str>, addr: SocketAddr) {
        {
            let mut inner = self.inner.locked();
            let Some(state) = inner.pods.get_mut(name) else { return };
            if state.info.addr != Some(addr) || state.info.terminating {
                return;
            }
            state.probe = None;
            let authority: Authority = match addr.to_string().parse() {
                Ok(authority) => authority,
                Err(_) => return,
            };
            state.endpoint = Some(Arc::new(Endpoint::new(name.clone(), authority)));
        }
        self.rebuild();
    }

    /// A pod refused a connection: stop using it and probe it again until it answers.
    pub fn pod_failed(self: &Arc<Self>, name: &Arc<str>, prober: &Prober) {
        {
            let mut inner = self.inner.locked();
            let Some(state) = inner.pods.get_mut(name) else { return };
            if state.endpoint.take().is_none() {
                return;
            }
            if let (Some(addr), false) = (state.info.addr, state.info.terminating) {
                state.probe = Some(self.spawn_probe(name.clone(), addr, prober));
            }
        }
        self.rebuild();
    }

    /// Recomputes the usable endpoints, the breaker's capacity and the status after any change.
    pub fn rebuild(&self) {
        let mut inner = self.inner.locked();
        let mut endpoints: Vec<Arc<Endpoint>> = inner
            .pods
            .values()
            .filter(|pod| !pod.info.terminating && !pod.info.held)
            .filter_map(|pod| pod.endpoint.clone())
            .collect();
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        let ready = endpoints.len();
        let waiting: Vec<&PodState> = inner.pods.values().filter(|pod| !pod.info.terminating).collect();
        let blocked = if ready == 0
            && !waiting.is_empty()
            && waiting.iter().all(|pod| pod.info.blocked.is_some())
        {
            waiting.iter().filter_map(|pod| pod.info.blocked.as_ref()).min().map(|reason| reason.to_string())
        } else {
            None
        };
        let has_pods = !waiting.is_empty();
        if let Some(cold_start) = inner.cold_start.as_mut().filter(|c| !c.is_over()) {
            let now = std::time::Instant::now();
            if has_pods && cold_start.pod_seen.is_none() {
                cold_start.pod_seen = Some(now);
            }
            if ready > 0 {
                cold_start.ready = Some(now);
                self.metrics.cold_start_ended(cold_start);
            }
        }
        let activators = self.activators.load(Ordering::Relaxed);
        self.breaker.set_capacity(service_capacity(inner.config.container_concurrency, ready, activators));
        *self.endpoints.write_locked() = endpoints.into();
        drop(inner);
        self.status.send_if_modified(|status| {
            let next = Status { ready, blocked, removed: status.removed };
            let changed = *status != next;
            *status = next;
            changed
        });
    }

    /// The service is gone: waiting requests are refused.
    pub fn remove(&self) {
        self.inner.locked().pods.clear();
        self.rebuild();
        self.status.send_modify(|status| status.removed = true);
    }

    /// Chooses a pod for a request, skipping pods that already failed it.
    pub fn pick(&self, exclude: &[Arc<str>]) -> Option<Lease> {
        let endpoints = self.endpoints.read_locked().clone();
        let cc = self.container_concurrency.load(Ordering::Relaxed);
        let per_pod = pod_capacity(cc, self.activators.load(Ordering::Relaxed));
        let seed = self.picks.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        balancer::pick(&endpoints, per_pod, exclude, seed)
    }

    /// The pods that answered their probe, by name.
    pub fn endpoint_names(&self) -> Vec<Arc<str>> {
        self.endpoints.read_locked().iter().map(|e| e.name.clone()).collect()
    }
}
