//! The autoscaler as a Kubernetes controller (`autoscaler` binary, `ebb autoscaler`): the [`engine`]
//! (collection, ticks, decisions) fed from watches, acting through a Kubernetes [`Scaler`]. Called `cluster`
//! (and its entry point [`ClusterController`]) so that neither the module nor the type is taken for the `kube`
//! crate or its `Controller`.
//!
//! - [`watch`]: reflectors on labelled Deployments, their pods, the `config-autoscaler` ConfigMap, Services,
//!   EndpointSlices and the activator pods, and the pass that turns them into the engine's services and pods;
//! - [`leader`]: the Lease; only its holder writes anything, every replica collects and decides;
//! - [`scale`]: the [`Scaler`], replicas through `deployments/scale` (only on change), held scale-downs and
//!   other writers;
//! - [`path`]: the public Service and its one EndpointSlice, activator or pods;
//! - [`status`], [`deletion_cost`], [`blocked`], [`env_check`], [`events`]: what the controller writes besides
//!   replicas;
//! - [`auth`], [`ingest`]: the activators' authenticated stat streams;
//! - [`serve`], [`metrics`]: `/metrics`, `/healthz`, `/readyz` on port 9090;
//! - [`rbac`]: the permissions it needs, as data (docs/rbac.md explains them).
//!
//! [`engine`]: crate::engine
//! [`Scaler`]: crate::engine::Scaler

pub mod auth;
mod backoff;
pub mod blocked;
pub mod deletion_cost;
pub mod env_check;
pub mod events;
pub mod ingest;
pub mod leader;
pub mod metrics;
pub mod path;
pub mod rbac;
pub mod scale;
pub mod serve;
pub mod status;
pub mod watch;

use ebb_process::sync::Locked;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch as tokio_watch};
use tokio::task::JoinHandle;

use crate::engine::{Autoscaler, Options as EngineOptions};
use ebb_config::ServiceId;

/// The name the controller reports as (Events, field manager).
pub const CONTROLLER_NAME: &str = "ebb-autoscaler";

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The autoscaler's own namespace: `config-autoscaler`, the Lease and the activator pods live there.
    pub namespace: String,
    /// Namespaces whose Deployments are autoscaled; empty = all.
    pub watch_namespaces: Vec<String>,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    /// The Lease's name.
    pub lease_name: String,
    /// Lease timing.
    pub lease_duration: Duration,
    /// How often the leader renews the Lease.
    pub renew_interval: Duration,
    /// How often a follower looks at the Lease.
    pub retry_interval: Duration,
    /// The stat ingest's address (`:8080`).
    pub ingest_addr: SocketAddr,
    /// The metrics and health address (`:9090`).
    pub metrics_addr: SocketAddr,
    /// Identities allowed to send stats (`system:serviceaccount:NS:NAME`).
    pub ingest_identities: Vec<String>,
    /// Label selector of the activator pods in [`Self::namespace`].
    pub activator_selector: String,
    /// The activator's data port (probed, and the EndpointSlice's port).
    pub activator_port: u16,
    /// The queue-proxy's stats port on each pod.
    pub pod_stats_port: u16,
    /// The queue-proxy's data port on each pod (the EndpointSlice's port in serve mode).
    pub pod_data_port: u16,
    /// Whether the controller manages the public Service and its EndpointSlice.
    pub manage_request_path: bool,
    /// How often the watched state is turned into actions (also on every watch event).
    pub sync_interval: Duration,
    /// Scale-downs stop when the API server has not answered for this long.
    pub api_stale_after: Duration,
    /// The engine's tuning (scrape timeout, tick interval).
    pub engine: EngineOptions,
}

impl Options {
    /// Defaults for a replica named `identity` in `namespace`.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        use ebb_config::names::*;
        let namespace = namespace.into();
        Self {
            ingest_identities: vec![format!("system:serviceaccount:{namespace}:ebb-activator")],
            namespace,
            watch_namespaces: Vec::new(),
            identity: identity.into(),
            lease_name: CONTROLLER_NAME.to_owned(),
            lease_duration: Duration::from_secs(10),
            renew_interval: Duration::from_secs(2),
            retry_interval: Duration::from_secs(1),
            ingest_addr: SocketAddr::from(([0, 0, 0, 0], AUTOSCALER_INGEST_PORT)),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], AUTOSCALER_METRICS_PORT)),
            activator_selector: format!(
                "{LABEL_PART_OF}={PART_OF_EBB},{LABEL_COMPONENT}={COMPONENT_ACTIVATOR}"
            ),
            activator_port: ACTIVATOR_DATA_PORT,
            pod_stats_port: QUEUE_PROXY_STATS_PORT,
            pod_data_port: QUEUE_PROXY_DATA_PORT,
            manage_request_path: true,
            sync_interval: Duration::from_millis(500),
            api_stale_after: Duration::from_secs(10),
            engine: EngineOptions::default(),
        }
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port could not be bound.
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Whether the API server answers: the last success is recent and no failure came after it. Scale-downs
/// wait while it does not (design: nothing is scaled down while the API server is unreachable).
#[derive(Debug)]
pub struct ApiHealth {
    last_ok: Mutex<Option<Instant>>,
    last_failure: Mutex<Option<Instant>>,
    stale_after: Duration,
}

impl ApiHealth {
    /// Unreachable until the first success.
    pub fn new(stale_after: Duration) -> Self {
        Self { last_ok: Mutex::new(None), last_failure: Mutex::new(None), stale_after }
    }

    /// A request or watch event succeeded.
    pub fn ok(&self) {
        *self.last_ok.locked() = Some(Instant::now());
    }

    /// A request or watch failed.
    pub fn failed(&self) {
        *self.last_failure.locked() = Some(Instant::now());
    }

    /// Whether the API server answered recently and has not failed since.
    pub fn reachable(&self) -> bool {
        let ok = *self.last_ok.locked();
        let failure = *self.last_failure.locked();
        match ok {
            Some(ok) => ok.elapsed() < self.stale_after && failure.is_none_or(|f| f <= ok),
            None => false,
        }
    }
}

/// What the controller shares between its tasks.
pub(crate) struct Shared {
    client: Client,
    options: Options,
    autoscaler: OnceLock<Weak<Autoscaler>>,
    leading: tokio_watch::Receiver<bool>,
    health: Arc<ApiHealth>,
    events: events::Events,
    metrics: metrics::KubeMetrics,
    wake: Notify,
    /// The last time an activator reported requests queued for a service (waiting for a pod).
    activator_queued: Mutex<HashMap<ServiceId, Instant>>,
    /// Ready activator pod addresses.
    activators: Mutex<Vec<std::net::IpAddr>>,
    /// Services whose activator-only slice is verified in the path.
    in_path: Mutex<HashMap<ServiceId, bool>>,
}

impl Shared {
    fn autoscaler(&self) -> Option<Arc<Autoscaler>> {
        self.autoscaler.get().and_then(Weak::upgrade)
    }

    fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }
}

/// A running controller.
pub struct ClusterController {
    /// Where the stat ingest listens.
    pub ingest_addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    autoscaler: Arc<Autoscaler>,
    shared: Arc<Shared>,
    stop: tokio_watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    election: JoinHandle<()>,
}

impl std::fmt::Debug for ClusterController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterController").field("ingest_addr", &self.ingest_addr).finish_non_exhaustive()
    }
}

impl ClusterController {
    /// Binds the ports, discovers the EndpointSlice version and starts every task.
    pub async fn start(client: Client, options: Options) -> Result<Self, Error> {
        let ingest =
            TcpListener::bind(options.ingest_addr).await.map_err(|e| Error::Bind(options.ingest_addr, e))?;
        let http = TcpListener::bind(options.metrics_addr)
            .await
            .map_err(|e| Error::Bind(options.metrics_addr, e))?;
        let ingest_addr = ingest.local_addr().map_err(|e| Error::Bind(options.ingest_addr, e))?;
        let metrics_addr = http.local_addr().map_err(|e| Error::Bind(options.metrics_addr, e))?;
        // An API server that is down at start is waited for, never a crash loop.
        let mut backoff = Duration::from_millis(200);
        let slice_resource = loop {
            match path::discover_endpoint_slices(&client).await {
                Ok(resource) => break resource,
                Err(err) => {
                    tracing::warn!("cannot reach the API server yet (retrying in {backoff:?}): {err}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        tracing::info!(version = %slice_resource.version, "EndpointSlices through discovery.k8s.io/{}", slice_resource.version);

        let (stop, stop_rx) = tokio_watch::channel(false);
        let (leading_tx, leading) = tokio_watch::channel(false);
        let health = Arc::new(ApiHealth::new(options.api_stale_after));
        let shared = Arc::new(Shared {
            events: events::Events::new(client.clone(), CONTROLLER_NAME, &options.identity),
            client: client.clone(),
            options: options.clone(),
            autoscaler: OnceLock::new(),
            leading,
            health: health.clone(),
            metrics: metrics::KubeMetrics::new(),
            wake: Notify::new(),
            activator_queued: Mutex::default(),
            activators: Mutex::default(),
            in_path: Mutex::default(),
        });
        let scaler = Arc::new(scale::KubeScaler::new(shared.clone()));
        let autoscaler = Autoscaler::new(scaler, options.engine.clone());
        let _ = shared.autoscaler.set(Arc::downgrade(&autoscaler));

        let mut tasks = Vec::new();
        let (frames_tx, frames_rx) = mpsc::channel(4096);
        let observer: ingest::Observer = {
            let shared = shared.clone();
            Arc::new(move |frame| {
                // A version-1 activator does not say what is queued: any load it reports counts as queued.
                let stat = &frame.stat;
                let load = stat.average_concurrency > 0.0 || stat.request_count > 0.0;
                if stat.average_queued.map_or(load, |queued| queued > 0.0) {
                    let id = ServiceId::new(frame.namespace.clone(), frame.name.clone());
                    shared.activator_queued.locked().insert(id, Instant::now());
                }
            })
        };
        let auth = Arc::new(auth::Authenticator::new(client.clone(), options.ingest_identities.clone()));
        let server = ingest::Ingest::new(auth, frames_tx, observer);
        tasks.push(tokio::spawn(server.serve(ingest, stop_rx.clone())));
        {
            let autoscaler = autoscaler.clone();
            let mut stop_rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                autoscaler
                    .run(frames_rx, async move {
                        let _ = stop_rx.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }
        tasks.push(tokio::spawn(serve::serve(http, shared.clone(), autoscaler.clone(), stop_rx.clone())));
        let stores = watch::Stores::start(&shared, slice_resource.clone());
        tasks.push(tokio::spawn(watch::run(shared.clone(), stores, slice_resource, stop_rx.clone())));
        let lease_config = leader::LeaseConfig {
            lease_duration: options.lease_duration,
            renew_interval: options.renew_interval,
            renew_deadline: options
                .lease_duration
                .saturating_sub(options.renew_interval + options.retry_interval),
            retry_interval: options.retry_interval,
            ..leader::LeaseConfig::new(&options.lease_name, &options.identity)
        };
        {
            let shared = shared.clone();
            let mut leading = shared.leading.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let now = *leading.borrow_and_update();
                    shared.metrics.leader.set(i64::from(now));
                    shared.wake.notify_one();
                    if leading.changed().await.is_err() {
                        return;
                    }
                }
            }));
        }
        let election = tokio::spawn(leader::run(
            Api::<Lease>::namespaced(client, &options.namespace),
            lease_config,
            leading_tx,
            health,
            stop_rx,
        ));
        Ok(Self { ingest_addr, metrics_addr, autoscaler, shared, stop, tasks, election })
    }

    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        self.shared.is_leader()
    }

    /// The engine (status, decisions).
    pub fn autoscaler(&self) -> &Arc<Autoscaler> {
        &self.autoscaler
    }

    /// Stops every task and releases the Lease if held.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.election).await;
        for task in self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_unreachable_until_it_answers_after_a_failure_and_when_silent_too_long() {
        let health = ApiHealth::new(Duration::from_millis(200));
        assert!(!health.reachable(), "unknown at start: no scale-down");
        health.ok();
        assert!(health.reachable());
        health.failed();
        assert!(!health.reachable(), "a failure after the last success");
        health.ok();
        assert!(health.reachable());
        std::thread::sleep(Duration::from_millis(250));
        assert!(!health.reachable(), "silent for longer than stale_after");
    }
}
