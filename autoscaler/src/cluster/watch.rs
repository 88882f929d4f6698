//! What the controller watches, and the pass that turns it into the engine's services and pods.
//!
//! Reflectors keep the labelled Deployments and their pods (all namespaces, or the configured ones), the
//! `config-autoscaler` ConfigMap and the activator pods (own namespace), and the Services and ebb's
//! EndpointSlices. A pass runs after every watch event and every [`super::Options::sync_interval`]; it is
//! level-triggered (it compares what is wanted with what is seen), so a missed event or a restart loses
//! nothing. Every replica runs the pass up to the engine; only the leader goes on to [`super::scale`] and
//! [`super::path`].

use ebb_process::sync::Locked;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_config::names::{CONFIG_MAP_NAME, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY_EBB};
use ebb_config::placement::template_only_keys;
use ebb_config::{GlobalConfig, resolve_service};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::{Shared, blocked, env_check, path, scale, status};
use crate::engine::PodTarget;
use ebb_config::ServiceId;

/// The reflectors' stores.
pub(crate) struct Stores {
    pub deployments: Vec<Store<Deployment>>,
    pub pods: Vec<Store<Pod>>,
    pub services: Vec<Store<Service>>,
    pub slices: Vec<Store<DynamicObject>>,
    pub config: Store<ConfigMap>,
    pub activators: Store<Pod>,
    tasks: Vec<JoinHandle<()>>,
}

impl Stores {
    /// Starts every reflector.
    pub fn start(shared: &Arc<Shared>, slices: ApiResource) -> Self {
        let client = &shared.client;
        let options = &shared.options;
        let mut tasks = Vec::new();
        let namespaces: Vec<Option<&str>> = if options.watch_namespaces.is_empty() {
            vec![None]
        } else {
            options.watch_namespaces.iter().map(|n| Some(n.as_str())).collect()
        };
        let labelled = watcher::Config::default().labels(LABEL_SERVICE);
        let ours = watcher::Config::default().labels(&path::slice_selector());
        let mut stores = Self {
            deployments: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            slices: Vec::new(),
            config: reflect(
                shared,
                &mut tasks,
                Api::namespaced(client.clone(), &options.namespace),
                watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP_NAME}")),
                (),
            ),
            activators: reflect(
                shared,
                &mut tasks,
                Api::namespaced(client.clone(), &options.namespace),
                watcher::Config::default().labels(&options.activator_selector),
                (),
            ),
            tasks: Vec::new(),
        };
        for ns in namespaces {
            let c = client.clone();
            let api = |c: kube::Client| match ns {
                Some(ns) => {
                    (Api::namespaced(c.clone(), ns), Api::namespaced(c.clone(), ns), Api::namespaced(c, ns))
                }
                None => (Api::all(c.clone()), Api::all(c.clone()), Api::all(c)),
            };
            let (deployments, pods, services) = api(c.clone());
            stores.deployments.push(reflect(shared, &mut tasks, deployments, labelled.clone(), ()));
            stores.pods.push(reflect(shared, &mut tasks, pods, labelled.clone(), ()));
            stores.services.push(reflect(shared, &mut tasks, services, watcher::Config::default(), ()));
            let slice_api = match ns {
                Some(ns) => Api::namespaced_with(c, ns, &slices),
                None => Api::all_with(c, &slices),
            };
            stores.slices.push(reflect(shared, &mut tasks, slice_api, ours.clone(), slices.clone()));
        }
        stores.tasks = tasks;
        stores
    }

    async fn ready(&self) -> bool {
        for s in &self.deployments {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        for s in self.pods.iter().chain([&self.activators]) {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        for s in &self.services {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        for s in &self.slices {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        self.config.wait_until_ready().await.is_ok()
    }

    /// The Service `namespace/name`, if any.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        let key = ObjectRef::new(name).within(namespace);
        self.services.iter().find_map(|s| s.get(&key))
    }

    /// ebb's EndpointSlice `namespace/name`, if any.
    pub fn slice(&self, namespace: &str, name: &str, resource: &ApiResource) -> Option<Arc<DynamicObject>> {
        let key = ObjectRef::new_with(name, resource.clone()).within(namespace);
        self.slices.iter().find_map(|s| s.get(&key))
    }
}

impl Drop for Stores {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A reflector whose every event wakes the pass and tells [`super::ApiHealth`] the API server answered.
fn reflect<K>(
    shared: &Arc<Shared>,
    tasks: &mut Vec<JoinHandle<()>>,
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let weak = Arc::downgrade(shared);
    tasks.push(tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let Some(shared) = weak.upgrade() else { return };
            match item {
                Ok(_) => {
                    shared.health.ok();
                    shared.wake.notify_one();
                }
                Err(err) => {
                    shared.health.failed();
                    tracing::warn!("watch failed (retrying with backoff): {err}");
                }
            }
        }
    }));
    reader
}

/// What the pass remembers about one service between passes.
#[derive(Debug, Default)]
pub(crate) struct ServiceState {
    /// The annotations and global config generation last resolved.
    pub config_key: Option<(String, u64)>,
    /// Whether a valid configuration was ever applied (the service is in the engine).
    pub valid: bool,
    /// `spec.replicas` last seen.
    pub seen_replicas: Option<u32>,
    /// When [`Self::seen_replicas`] was first seen at its value.
    pub seen_replicas_at: Timestamp,
    /// The replicas this replica last wrote.
    pub last_written: Option<u32>,
    /// The reason of the last change this replica applied, until written as an annotation.
    pub reason_pending: Option<String>,
    /// Writes of the Deployment (scale, status annotations) after an error.
    pub deployment_writes: Backoff,
    /// Writes of the request path (public Service, EndpointSlice) after an error.
    pub path_writes: Backoff,
    /// Stuck pods already counted.
    pub blocked: HashMap<String, &'static str>,
    /// The data-plane settings of the configuration in force (set while [`Self::valid`]).
    pub data_plane: Option<ebb_config::DataPlaneSpec>,
    /// Pods whose queue-proxy env disagrees with the annotations, with what was reported.
    pub mismatched: HashMap<String, Vec<env_check::Mismatch>>,
    /// The request path's state.
    pub path: path::PathState,
}

/// The global configuration in force.
struct Global {
    config: GlobalConfig,
    generation: u64,
    resource_version: Option<Option<String>>,
}

/// Runs passes until `stop` turns true.
pub(crate) async fn run(
    shared: Arc<Shared>,
    stores: Stores,
    slices: ApiResource,
    mut stop: tokio_watch::Receiver<bool>,
) {
    tokio::select! {
        ready = stores.ready() => if !ready { return },
        _ = stop.wait_for(|s| *s) => return,
    }
    tracing::info!("watches synced");
    let mut global = Global { config: GlobalConfig::default(), generation: 0, resource_version: None };
    let mut services: HashMap<ServiceId, ServiceState> = HashMap::new();
    let prober = path::Prober::new();
    loop {
        if *stop.borrow() {
            return;
        }
        pass(&shared, &stores, &slices, &mut global, &mut services, &prober).await;
        tokio::select! {
            () = tokio::time::sleep(shared.options.sync_interval) => {}
            () = shared.wake.notified() => {
                // Let a burst of events land before the next pass.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ = stop.changed() => {}
        }
    }
}

async fn pass(
    shared: &Arc<Shared>,
    stores: &Stores,
    slices: &ApiResource,
    global: &mut Global,
    services: &mut HashMap<ServiceId, ServiceState>,
    prober: &path::Prober,
) {
    let Some(autoscaler) = shared.autoscaler() else { return };
    shared.metrics.api_reachable.set(i64::from(shared.health.reachable()));
    update_global(shared, stores, global);

    // Pods by service.
    let mut pods: HashMap<ServiceId, Vec<Arc<Pod>>> = HashMap::new();
    for pod in stores.pods.iter().flat_map(Store::state) {
        let Some(service) = pod.labels().get(LABEL_SERVICE).cloned() else { continue };
        let id = ServiceId::new(pod.namespace().unwrap_or_default(), service);
        pods.entry(id).or_default().push(pod);
    }

    let deployments: Vec<Arc<Deployment>> = stores.deployments.iter().flat_map(Store::state).collect();
    let mut present = HashSet::new();
    for deployment in &deployments {
        let id = ServiceId::new(deployment.namespace().unwrap_or_default(), deployment.name_any());
        let reference = deployment.object_ref(&());
        let label = deployment.labels().get(LABEL_SERVICE).cloned().unwrap_or_default();
        if *label != *id.name {
            shared.events.warning(
                reference,
                "ServiceLabelMismatch",
                format!(
                    "label {LABEL_SERVICE}={label:?} must equal the Deployment's name {:?}; ebb leaves it alone",
                    id.name
                ),
            );
            continue;
        }
        present.insert(id.clone());
        let template = deployment.spec.as_ref().and_then(|s| s.template.metadata.as_ref());
        if let Some(template) = template.and_then(|m| m.annotations.as_ref()) {
            for (_key, message) in template_only_keys(deployment.annotations(), template) {
                shared.events.warning(reference.clone(), "AnnotationOnPodTemplate", message);
            }
        }
        let state = services.entry(id.clone()).or_insert_with(|| {
            shared.metrics.add_service(&id.namespace, &id.name);
            ServiceState::default()
        });
        let service_pods = pods.get(&id).map(Vec::as_slice).unwrap_or_default();
        let targets: Vec<PodTarget> =
            service_pods.iter().map(|p| target(p, shared.options.pod_stats_port)).collect();
        let ready = targets.iter().filter(|t| t.ready && !t.terminating).count() as u32;
        let replicas = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;

        // Configuration, re-resolved only when the annotations or the global config changed.
        let annotations: BTreeMap<String, String> = deployment.annotations().clone();
        let key = (serde_json::to_string(&annotations).unwrap_or_default(), global.generation);
        if state.config_key.as_ref() != Some(&key) {
            state.config_key = Some(key);
            match resolve_service(&annotations, &global.config) {
                Ok(resolved) => {
                    let data_plane = resolved.value.data_plane.clone();
                    // A paused service's replicas belong to someone else; otherwise start from the last
                    // leader's decision (if any), which ebb enforces over other writers anyway.
                    let in_force = if resolved.value.paused {
                        replicas
                    } else {
                        status::leader_desired(&annotations).unwrap_or(replicas)
                    };
                    match autoscaler.set_service_with_ready(id.clone(), resolved.value, in_force, ready) {
                        Ok(()) => {
                            state.data_plane = Some(data_plane);
                            if !state.valid {
                                // Just added: resume the scale-to-zero clocks a previous leader left on
                                // ebb's public Service (design.md), rather than starting them from zero.
                                resume(shared, stores, &autoscaler, &id);
                            }
                            state.valid = true;
                        }
                        Err(err) => invalid(shared, &reference, &id, state.valid, &err.to_string()),
                    }
                    for warning in resolved.warnings {
                        shared.events.warning(reference.clone(), "ConfigurationWarning", warning.to_string());
                    }
                }
                Err(err) => invalid(shared, &reference, &id, state.valid, &err.to_string()),
            }
        }
        if state.valid {
            autoscaler.set_pods(&id, targets);
        }
        report_blocked(shared, &reference, &id, state, service_pods);
        report_mismatches(shared, &reference, state, service_pods);
        scale::observe_replicas(shared, &reference, &id, state, deployment, replicas);
    }
    services.retain(|id, _state| {
        let keep = present.contains(id);
        if !keep {
            autoscaler.remove_service(id);
            shared.metrics.remove_service(&id.namespace, &id.name);
            shared.in_path.locked().remove(id);
        }
        keep
    });

    // Ready activators.
    let activators: Vec<IpAddr> = stores
        .activators
        .state()
        .iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .collect();
    *shared.activators.locked() = activators.clone();

    if !shared.is_leader() {
        return;
    }
    let statuses: HashMap<ServiceId, crate::engine::ServiceStatus> = autoscaler
        .status()
        .into_iter()
        .map(|s| (ServiceId::new(s.namespace.clone(), s.name.clone()), s))
        .collect();
    for deployment in &deployments {
        let id = ServiceId::new(deployment.namespace().unwrap_or_default(), deployment.name_any());
        let (Some(state), Some(status)) = (services.get_mut(&id), statuses.get(&id)) else { continue };
        if !state.valid {
            continue;
        }
        let service_pods = pods.get(&id).map(Vec::as_slice).unwrap_or_default();
        scale::reconcile(shared, &autoscaler, &id, state, deployment, status, service_pods).await;
        if shared.options.manage_request_path {
            let ctx = path::Context { shared, stores, slices, prober, activators: &activators };
            path::reconcile(&ctx, &id, state, deployment, status, service_pods).await;
        }
    }
}

/// Resumes a just-added service's clocks from its public Service's annotations, when ebb manages it.
fn resume(shared: &Arc<Shared>, stores: &Stores, autoscaler: &crate::engine::Autoscaler, id: &ServiceId) {
    if !shared.options.manage_request_path {
        return;
    }
    let Some(service) = stores.service(&id.namespace, &id.name) else { return };
    if service.labels().get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_EBB) {
        return;
    }
    let Some(resumed) = path::resumed(service.annotations(), Timestamp::now()) else { return };
    let phase = resumed.phase_at(|ago| autoscaler.ago(ago));
    autoscaler.resume_service(id, phase, resumed.mode, autoscaler.ago(resumed.mode_for));
}

fn update_global(shared: &Arc<Shared>, stores: &Stores, global: &mut Global) {
    let key = ObjectRef::new(CONFIG_MAP_NAME).within(&shared.options.namespace);
    let config_map = stores.config.get(&key);
    let version = config_map.as_ref().map(|c| c.resource_version().unwrap_or_default());
    if global.resource_version.as_ref() == Some(&version) {
        return;
    }
    global.resource_version = Some(version);
    let data = config_map.as_ref().and_then(|c| c.data.clone()).unwrap_or_default();
    match GlobalConfig::from_data(&data) {
        Ok(resolved) => {
            tracing::info!("global configuration applied ({} keys)", data.len());
            global.config = resolved.value;
            global.generation += 1;
            if let Some(cm) = &config_map {
                for warning in resolved.warnings {
                    shared.events.warning(cm.object_ref(&()), "ConfigurationWarning", warning.to_string());
                }
            }
        }
        Err(err) => {
            shared
                .metrics
                .config_errors
                .get_or_create(&super::metrics::KubeMetrics::labels(
                    &shared.options.namespace,
                    CONFIG_MAP_NAME,
                ))
                .inc();
            if let Some(cm) = &config_map {
                shared.events.warning(
                    cm.object_ref(&()),
                    "InvalidConfiguration",
                    format!(
                        "{CONFIG_MAP_NAME} is invalid; the previous configuration stays in force: {}",
                        oneline(&err.to_string())
                    ),
                );
            }
        }
    }
}

fn invalid(
    shared: &Shared,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    id: &ServiceId,
    valid: bool,
    err: &str,
) {
    shared
        .metrics
        .config_errors
        .get_or_create(&super::metrics::KubeMetrics::labels(&id.namespace, &id.name))
        .inc();
    let consequence = if valid {
        "the last valid configuration stays in force"
    } else {
        "ebb leaves this Deployment untouched until they are fixed"
    };
    shared.events.warning(
        reference.clone(),
        "InvalidConfiguration",
        format!("invalid annotations ({consequence}): {}", oneline(err)),
    );
}

fn oneline(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join("; ")
}

fn blocked_labels(id: &ServiceId, kind: &str) -> super::metrics::BlockedLabels {
    super::metrics::KubeMetrics::blocked_labels(&id.namespace, &id.name, kind)
}

/// Stuck pods: a Warning Event (deduplicated) and the `blocked_pods` gauge.
fn report_blocked(
    shared: &Shared,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    id: &ServiceId,
    state: &mut ServiceState,
    pods: &[Arc<Pod>],
) {
    let mut now: HashMap<String, &'static str> = HashMap::new();
    for pod in pods {
        if let Some(b) = blocked::blocked(pod) {
            let name = pod.name_any();
            shared.events.warning(reference.clone(), "PodBlocked", format!("pod {name}: {}", b.message));
            now.insert(name, b.kind);
        }
    }
    for (name, kind) in &now {
        if state.blocked.get(name) != Some(kind) {
            if let Some(old) = state.blocked.get(name) {
                shared.metrics.blocked_pods.get_or_create(&blocked_labels(id, old)).dec();
            }
            shared.metrics.blocked_pods.get_or_create(&blocked_labels(id, kind)).inc();
        }
    }
    for (name, kind) in &state.blocked {
        if !now.contains_key(name) {
            shared.metrics.blocked_pods.get_or_create(&blocked_labels(id, kind)).dec();
        }
    }
    state.blocked = now;
}

/// Pods whose queue-proxy env disagrees with the configuration in force: one Warning Event per pod, again
/// only when its mismatches change.
fn report_mismatches(
    shared: &Shared,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    state: &mut ServiceState,
    pods: &[Arc<Pod>],
) {
    let Some(spec) = state.data_plane.as_ref().filter(|_| state.valid) else {
        state.mismatched.clear();
        return;
    };
    let mut now = HashMap::new();
    for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let found = env_check::mismatches(pod, spec);
        if found.is_empty() {
            continue;
        }
        let name = pod.name_any();
        if state.mismatched.get(&name) != Some(&found) {
            shared.events.warning(reference.clone(), "ConfigMismatch", env_check::describe(&found));
        }
        now.insert(name, found);
    }
    state.mismatched = now;
}

/// Ready condition true, not being deleted.
pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The engine's view of a pod.
fn target(pod: &Pod, stats_port: u16) -> PodTarget {
    let status = pod.status.as_ref();
    let ip: Option<IpAddr> = status.and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok());
    let age = status
        .and_then(|s| s.start_time.as_ref())
        .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or_default();
    PodTarget {
        name: pod.name_any(),
        stats: ip.map(|ip| SocketAddr::new(ip, stats_port)),
        ready: is_ready(pod),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
    }
}
