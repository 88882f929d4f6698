//! What the controller's tasks share, in the parts that belong together: the handles to the API server and to
//! what the controller reports ([`Context`]), when the pass runs and whether it may act ([`Signals`]), and
//! what the activators have told the controller ([`Activators`]). The modules of `cluster` take these from
//! here, not from their parent, so that no module uses one that uses it back.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebb_config::ServiceId;
use ebb_process::sync::Locked;
use kube::Client;
use tokio::sync::{Notify, watch};

use super::buckets::Owned;
use super::dirty::{Dirty, Visit};
use super::events::Events;
use super::health::ApiHealth;
use super::metrics::KubeMetrics;
use super::options::Options;

/// The handles the pass and its reconcilers work with: the API server, this replica's options, and what it
/// reports. Nothing here changes after start.
pub(crate) struct Context {
    /// The API server.
    pub client: Client,
    /// How the controller runs.
    pub options: Options,
    /// Whether the API server answers.
    pub health: Arc<ApiHealth>,
    /// Kubernetes Events, deduplicated.
    pub events: Events,
    /// The controller's own metrics.
    pub metrics: KubeMetrics,
}

/// When the next pass runs and whether it may act: the nudge that runs it early (a watch event, a decision, a
/// change of leadership) and the Leases' verdicts (the leader's, and with buckets the buckets held).
pub(crate) struct Signals {
    wake: Notify,
    /// The services the next pass visits.
    dirty: Dirty,
    leading: watch::Receiver<bool>,
    /// With more than one bucket: the buckets this replica holds.
    owned: Option<watch::Receiver<Owned>>,
}

impl Signals {
    /// Signals that follow the leader election's `leading` and, with buckets, the buckets held (`owned`).
    pub fn new(leading: watch::Receiver<bool>, owned: Option<watch::Receiver<Owned>>) -> Self {
        Self { wake: Notify::new(), dirty: Dirty::default(), leading, owned }
    }

    /// Whether this replica acts on `id` (scale, request path, status): it holds `id`'s bucket, or without
    /// buckets the leader Lease.
    pub fn owns(&self, id: &ServiceId) -> bool {
        match &self.owned {
            Some(owned) => owned.borrow().owns(id),
            None => self.is_leader(),
        }
    }

    /// Whether this replica acts on any service: it holds a bucket, or without buckets the leader Lease.
    pub fn acts_on_any(&self) -> bool {
        match &self.owned {
            Some(owned) => owned.borrow().any(),
            None => self.is_leader(),
        }
    }

    /// Whether this replica collects and decides for `id`: with buckets only for its own; without, every
    /// replica does, so that its windows are warm when it becomes the leader.
    pub fn collects(&self, id: &ServiceId) -> bool {
        self.owned.as_ref().is_none_or(|owned| owned.borrow().owns(id))
    }

    /// The buckets held as they change, with buckets.
    pub fn ownership(&self) -> Option<watch::Receiver<Owned>> {
        self.owned.clone()
    }

    /// Runs the next pass soon.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the next pass soon, visiting `id`.
    pub fn touch(&self, id: ServiceId) {
        self.dirty.mark(id);
        self.wake();
    }

    /// Runs the next pass soon, visiting every service.
    pub fn touch_all(&self) {
        self.dirty.mark_all();
        self.wake();
    }

    /// Runs the next pass soon, sorting the role groups again and visiting their entries.
    pub fn touch_groups(&self) {
        self.dirty.mark_groups();
        self.wake();
    }

    /// What the next pass visits, and whether the role groups changed, since the last call.
    pub fn take_dirty(&self) -> (Visit, bool) {
        self.dirty.take()
    }

    /// Resolves at the next [`Self::wake`] (or at once if one came since the last).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// The leadership as it changes, for a task that follows it.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }
}

/// What the activators have told the controller: which are ready, in which services' request path they are
/// verified, and when each service last had requests queued in one. Written by the stat ingest and the pass,
/// read by the [`super::scale::KubeScaler`] and the leader's reconcilers.
#[derive(Default)]
pub(crate) struct Activators {
    /// Ready activator pod addresses.
    ready: Mutex<Vec<IpAddr>>,
    /// Services whose activator-only slice is verified in the path.
    in_path: Mutex<HashMap<ServiceId, bool>>,
    /// The last time an activator reported requests queued for a service (waiting for a pod).
    queued: Mutex<HashMap<ServiceId, Instant>>,
}

impl Activators {
    /// The ready activators, as the pass last saw them.
    pub fn set_ready(&self, ready: Vec<IpAddr>) {
        *self.ready.locked() = ready;
    }

    /// Whether at least one activator is ready.
    pub fn any_ready(&self) -> bool {
        !self.ready.locked().is_empty()
    }

    /// Whether the activator is verified in `id`'s request path.
    pub fn in_path(&self, id: &ServiceId) -> bool {
        self.in_path.locked().get(id).copied().unwrap_or(false)
    }

    /// Records whether the activator is verified in `id`'s request path.
    pub fn set_in_path(&self, id: &ServiceId, in_path: bool) {
        self.in_path.locked().insert(id.clone(), in_path);
    }

    /// Forgets `id`'s request path (the service is gone).
    pub fn forget_path(&self, id: &ServiceId) {
        self.in_path.locked().remove(id);
    }

    /// An activator reported requests queued for `id` now.
    pub fn note_queued(&self, id: ServiceId) {
        self.queued.locked().insert(id, Instant::now());
    }

    /// Whether an activator reported requests queued for `id` within the last `hold`.
    pub fn queued_within(&self, id: &ServiceId, hold: Duration) -> bool {
        self.queued.locked().get(id).is_some_and(|t| t.elapsed() < hold)
    }
}

/// The `config-autoscaler` in force: written by the pass when the ConfigMap changes and is valid, read by the
/// admission webhook, so a pod's sidecar and the autoscaler's checks use the same defaults.
#[derive(Default)]
pub(crate) struct GlobalInForce(Mutex<ebb_config::GlobalConfig>);

impl GlobalInForce {
    /// The configuration now.
    pub fn get(&self) -> ebb_config::GlobalConfig {
        self.0.locked().clone()
    }

    /// Puts `config` in force.
    pub fn set(&self, config: ebb_config::GlobalConfig) {
        *self.0.locked() = config;
    }
}

/// A scale target other than a Deployment as the admission webhook needs it: its kind and annotations.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TargetSettings {
    /// Its kind (`StatefulSet`), for messages.
    pub kind: String,
    /// Its annotations, which configure the sidecar.
    pub annotations: BTreeMap<String, String>,
    /// Whether its replica is an instance of several pods: its entry pods get the instance readiness gate.
    pub instances: bool,
}

/// The scale targets that are not Deployments, by service, as the pass last saw them: the admission webhook
/// finds a pod's target here by the pod's `ebb.dev/service` label (Deployments it finds through their
/// ReplicaSets, which says more).
#[derive(Default)]
pub(crate) struct OtherTargets(Mutex<HashMap<ServiceId, TargetSettings>>);

impl OtherTargets {
    /// The target named `id`, if the pass saw one.
    pub fn get(&self, id: &ServiceId) -> Option<TargetSettings> {
        self.0.locked().get(id).cloned()
    }

    /// Replaces what the pass saw.
    pub fn set(&self, targets: HashMap<ServiceId, TargetSettings>) {
        *self.0.locked() = targets;
    }

    /// Replaces what the pass saw of service `id`: its target's settings, or `None` when it has no target of
    /// another kind.
    pub fn put(&self, id: &ServiceId, settings: Option<TargetSettings>) {
        let mut targets = self.0.locked();
        match settings {
            Some(settings) => {
                targets.insert(id.clone(), settings);
            }
            None => {
                targets.remove(id);
            }
        }
    }
}
