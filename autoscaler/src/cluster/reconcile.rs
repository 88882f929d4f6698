//! The pass that turns what the controller watches ([`super::stores`]) into the engine's services and pods,
//! and, on the leader, into writes. A pass runs after every watch event and every
//! [`super::options::Options::sync_interval`]; it is level-triggered (it compares what is wanted with what is
//! seen), so a missed event or a restart loses nothing. Every replica runs the pass up to the engine; only
//! the leader goes on to [`super::scale`] and [`super::path`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ebb_config::names::{CONFIG_MAP_NAME, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY_EBB};
use ebb_config::placement::template_only_keys;
use ebb_config::{GlobalConfig, ServiceId, resolve_service};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::ApiResource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;

use super::groups::{self, Groups};
use super::instance_pods::InstancePods;
use super::instances::{self, Views};
use super::metrics::{BlockedLabels, KubeMetrics};
use super::path::{self, PathContext, Prober};
use super::pods::{self, is_ready};
use super::scale::{self, ScaleContext};
use super::service_state::ServiceState;
use super::starting;
use super::state::{Activators, Context, GlobalInForce, OtherTargets, Signals, TargetSettings};
use super::stores::Stores;
use super::target_watches::TargetWatches;
use super::targets::{Target, one_per_name};
use super::{blocked, env_check, group_scale, instance_gate, status};
use crate::engine::{Autoscaler, PodTarget, ServiceStatus};

/// How many services the leader reconciles at once: enough that a slow API call for one does not hold up the
/// others, few enough not to flood the API server after a restart with many services.
const CONCURRENT_RECONCILES: usize = 16;

/// The global configuration in force.
struct Global {
    config: GlobalConfig,
    generation: u64,
    resource_version: Option<Option<String>>,
}

/// The pass, what it reads and what it remembers between passes.
pub(crate) struct Reconciler {
    context: Arc<Context>,
    signals: Arc<Signals>,
    activators: Arc<Activators>,
    autoscaler: Arc<Autoscaler>,
    stores: Stores,
    slices: ApiResource,
    prober: Prober,
    global: Global,
    /// The global configuration in force, shared with the admission webhook.
    in_force: Arc<GlobalInForce>,
    /// The scale targets other than Deployments.
    targets: TargetWatches,
    /// Those targets, published for the admission webhook.
    published: Arc<OtherTargets>,
    /// Every pod of the multi-pod instances (`instances`).
    instance_pods: InstancePods,
    services: HashMap<ServiceId, ServiceState>,
}

impl Reconciler {
    /// A reconciler of what `stores` show, acting through `autoscaler` and on EndpointSlices as `slices`,
    /// publishing the configuration in force and the targets of other kinds for the admission webhook.
    pub fn new(
        context: Arc<Context>,
        signals: Arc<Signals>,
        activators: Arc<Activators>,
        autoscaler: Arc<Autoscaler>,
        stores: Stores,
        slices: ApiResource,
        (in_force, published): (Arc<GlobalInForce>, Arc<OtherTargets>),
    ) -> Self {
        let targets = TargetWatches::new(
            context.client.clone(),
            &context.options.watch_namespaces,
            context.health.clone(),
            signals.clone(),
        );
        let instance_pods = InstancePods::new(
            context.client.clone(),
            &context.options.watch_namespaces,
            context.health.clone(),
            signals.clone(),
        );
        Self {
            instance_pods,
            context,
            signals,
            activators,
            autoscaler,
            stores,
            slices,
            prober: Prober::new(),
            global: Global { config: GlobalConfig::default(), generation: 0, resource_version: None },
            in_force,
            targets,
            published,
            services: HashMap::new(),
        }
    }

    /// Runs passes until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            ready = self.stores.ready() => if !ready { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        tracing::info!("watches synced");
        loop {
            if *stop.borrow() {
                return;
            }
            self.pass().await;
            tokio::select! {
                () = tokio::time::sleep(self.context.options.sync_interval) => {}
                () = self.signals.woken() => {
                    // Let a burst of events land before the next pass.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = stop.changed() => {}
            }
        }
    }

    /// One pass: observe, decide, act.
    async fn pass(&mut self) {
        let context = &*self.context;
        if update_global(context, &self.stores, &mut self.global) {
            self.in_force.set(self.global.config.clone());
        }
        for (kind, why) in self.targets.sync(&self.global.config.scale_target_kinds).await {
            let key = ObjectRef::new(CONFIG_MAP_NAME).within(&context.options.namespace);
            if let Some(config_map) = self.stores.config.get(&key) {
                let message = format!("scale-target-kinds: ebb cannot scale {kind}: {why}");
                context.events.warning(config_map.object_ref(&()), "ScaleTargetUnavailable", message);
            }
        }
        self.targets.refresh_scales().await;
        let config = &self.global.config;
        self.instance_pods.sync(
            config
                .scale_target_kinds
                .iter()
                .filter_map(|k| config.instance_shape(k))
                .collect::<Vec<_>>()
                .iter(),
        );
        let snapshot = self.observe();
        let work = self.decide(&snapshot);
        self.act(&snapshot, work).await;
    }

    /// Observe: what the watches show now. Also notes whether the API server answers and publishes the
    /// ready activators.
    fn observe(&mut self) -> Snapshot {
        let (context, stores) = (&*self.context, &self.stores);
        context.metrics.api_reachable.set(i64::from(context.health.reachable()));
        let kinds = &self.global.config.scale_target_kinds;

        // The scale targets of every listed kind, one per name.
        let (mut targets, unreadable) = self.targets.targets();
        if kinds.iter().any(|k| k.is_deployments()) {
            targets.extend(
                stores.deployments.iter().flat_map(Store::state).map(|d| Target::from_deployment(&d)),
            );
        }
        let (targets, clashes) = one_per_name(targets, kinds);
        self.published.set(
            targets
                .iter()
                .filter(|t| !t.kind.is_deployments())
                .map(|t| {
                    let settings = TargetSettings {
                        kind: t.kind_name().to_owned(),
                        annotations: t.annotations(),
                        instances: self.global.config.instance_shape(&t.kind).is_some(),
                    };
                    (t.id(), settings)
                })
                .collect(),
        );
        for (target, why) in &clashes {
            context.events.warning(target.reference(), "ServiceNameTaken", why.clone());
        }
        for (target, why) in &unreadable {
            context.events.warning(target.reference(), "ScaleUnreadable", why.clone());
        }
        // A target whose scale could not be read this time is kept as it was, not forgotten.
        let kept: HashSet<ServiceId> = unreadable.iter().map(|(t, _)| t.id()).collect();

        // Pods by service: labelled with its name and, when its scale subresource reports a selector,
        // matching it (a StatefulSet's or a custom resource's pods).
        let mut labelled: HashMap<ServiceId, Vec<Arc<Pod>>> = HashMap::new();
        for pod in stores.pods.iter().flat_map(Store::state) {
            let Some(service) = pod.labels().get(LABEL_SERVICE).cloned() else { continue };
            let id = ServiceId::new(pod.namespace().unwrap_or_default(), service);
            labelled.entry(id).or_default().push(pod);
        }
        let mut pods: HashMap<ServiceId, Vec<Arc<Pod>>> = HashMap::new();
        for target in &targets {
            let id = target.id();
            let Some(candidates) = labelled.remove(&id) else { continue };
            let selected = match &target.scale.selector {
                Some(selector) => candidates.into_iter().filter(|p| selector.matches(p.labels())).collect(),
                None => candidates,
            };
            pods.insert(id, selected);
        }

        // Ready activators.
        let activators: Vec<IpAddr> = stores
            .activators
            .state()
            .iter()
            .filter(|p| is_ready(p))
            .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
            .collect();
        self.activators.set_ready(activators.clone());
        let groups = groups::observe(stores);
        groups::report(context, &groups);
        let instances = instances::views(
            context,
            &self.global.config,
            &targets,
            (&self.targets, &self.instance_pods),
            &pods,
        );
        Snapshot { targets, kept, pods, activators, groups, instances, synced: self.targets.synced() }
    }

    /// Decide: brings the engine's services and pods up to date with the snapshot (the engine decides on its
    /// own ticks), reports what is wrong, forgets services that are gone and, on the leader, picks the
    /// services to act on, each with the engine's decision in force.
    fn decide<'s>(&mut self, snapshot: &'s Snapshot) -> HashMap<ServiceId, Work<'s>> {
        let mut present: HashSet<ServiceId> =
            snapshot.kept.iter().filter(|id| self.signals.collects(id)).cloned().collect();
        for target in &snapshot.targets {
            // With buckets, another replica's services are left to it (and forgotten here below).
            if !self.signals.collects(&target.id()) {
                continue;
            }
            if let Some(id) = self.update_service(target, &snapshot.pods, &snapshot.instances) {
                present.insert(id);
            }
        }
        let (context, autoscaler, activators) = (&self.context, &self.autoscaler, &self.activators);
        let synced = snapshot.synced;
        self.services.retain(|id, _state| {
            // While a kind's watch has not listed yet, its targets are unseen, not gone.
            let keep = present.contains(id) || !synced;
            if !keep {
                autoscaler.remove_service(id);
                context.metrics.remove_service(&id.namespace, &id.name);
                activators.forget_path(id);
            }
            keep
        });

        if !self.signals.acts_on_any() {
            return HashMap::new();
        }
        let mut statuses: HashMap<ServiceId, ServiceStatus> = autoscaler
            .status()
            .into_iter()
            .map(|s| (ServiceId::new(s.namespace.clone(), s.name.clone()), s))
            .collect();
        let mut work = HashMap::new();
        for target in &snapshot.targets {
            let id = target.id();
            if !self.signals.owns(&id)
                || snapshot.groups.leaves_alone(target)
                || !self.services.get(&id).is_some_and(|state| state.valid)
            {
                continue;
            }
            let Some(status) = statuses.remove(&id) else { continue };
            let pods = snapshot.pods.get(&id).map(Vec::as_slice).unwrap_or_default();
            work.insert(id, Work { target, status, pods });
        }
        work
    }

    /// One target's part of [`Self::decide`]: its configuration and pods to the engine, its problems
    /// reported, its replicas noted. `None` when its label disqualifies it (ebb leaves it alone).
    fn update_service(
        &mut self,
        target: &Target,
        pods: &HashMap<ServiceId, Vec<Arc<Pod>>>,
        instances: &Views,
    ) -> Option<ServiceId> {
        let Self { context, signals, activators, autoscaler, stores, global, services, .. } = self;
        let (context, autoscaler, stores) = (&**context, &**autoscaler, &*stores);
        let id = target.id();
        let reference = target.reference();
        let annotations: BTreeMap<String, String> = target.annotations();
        let label = target.labels().get(LABEL_SERVICE).cloned().unwrap_or_default();
        if *label != *id.name {
            context.events.warning(
                reference,
                "ServiceLabelMismatch",
                format!(
                    "label {LABEL_SERVICE}={label:?} must equal the {}'s name {:?}; ebb leaves it alone",
                    target.kind_name(),
                    id.name
                ),
            );
            return None;
        }
        let template = target.template.as_ref().and_then(|t| t.metadata.as_ref());
        if let Some(template) = template.and_then(|m| m.annotations.as_ref()) {
            for (_key, message) in template_only_keys(&annotations, template) {
                context.events.warning(reference.clone(), "AnnotationOnPodTemplate", message);
            }
        }
        let state = services.entry(id.clone()).or_insert_with(|| {
            context.metrics.add_service(&id.namespace, &id.name);
            ServiceState::default()
        });
        let service_pods = pods.get(&id).map(Vec::as_slice).unwrap_or_default();
        let mut targets: Vec<PodTarget> =
            service_pods.iter().map(|p| pods::target(p, context.options.pod_stats_port)).collect();
        if let Some(view) = instances.get(&id) {
            view.restrict(&mut targets);
        }
        let ready = targets.iter().filter(|t| t.ready && !t.terminating).count() as u32;
        let replicas = target.scale.replicas;

        // Configuration, re-resolved only when the annotations or the global config changed.
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
                                // ebb's public Service rather than starting them from zero, so a failover
                                // does not keep an idle service's pods a whole grace period longer.
                                resume(context, stores, autoscaler, &id);
                            }
                            state.valid = true;
                        }
                        Err(err) => invalid(context, &reference, &id, state.valid, &err.to_string()),
                    }
                    for warning in resolved.warnings {
                        context.events.warning(
                            reference.clone(),
                            "ConfigurationWarning",
                            warning.to_string(),
                        );
                    }
                }
                Err(err) => invalid(context, &reference, &id, state.valid, &err.to_string()),
            }
        }
        if state.valid {
            autoscaler.set_pods(&id, targets);
        }
        report_blocked(context, &reference, &id, state, service_pods);
        state.starting_since = starting::since(service_pods).map(|t| t.to_string());
        let injected_at_creation = !template_has_queue_proxy(target);
        let outdated =
            report_mismatches(context, &reference, state, service_pods, target, injected_at_creation);
        let missing = report_missing_sidecars(context, &reference, state, service_pods, target);
        state.sidecar_note =
            sidecar_note(service_pods.len(), missing, outdated, target, injected_at_creation);
        let scale_ctx = ScaleContext { context, signals, activators, autoscaler };
        scale::observe_replicas(&scale_ctx, &id, state, target);
        Some(id)
    }

    /// Act (leader only): each picked service's replicas, then its request path. Services are reconciled
    /// concurrently, at most [`CONCURRENT_RECONCILES`] at once, so that one slow API call does not hold up
    /// every other service's writes.
    async fn act(&mut self, snapshot: &Snapshot, work: HashMap<ServiceId, Work<'_>>) {
        let Self { context, signals, activators, autoscaler, stores, slices, prober, services, .. } = self;
        let scale_ctx = &ScaleContext { context, signals, activators, autoscaler };
        let path_ctx = &PathContext {
            context,
            verified: activators,
            stores,
            slices,
            prober,
            activators: &snapshot.activators,
        };
        let manage_request_path = context.options.manage_request_path;
        // Collected first: a lazy iterator of futures held across the await fails the compiler's `Send`
        // check (a known limitation with closures).
        let reconciles: Vec<_> = services
            .iter_mut()
            .filter_map(|(id, state)| {
                let Work { target, status, pods } = work.get(id)?;
                let group = snapshot.groups.valid.get(id);
                let instances = snapshot.instances.get(id);
                let gate_ctx: &Context = scale_ctx.context;
                Some(async move {
                    if let Some(view) = instances {
                        instance_gate::reconcile(gate_ctx, id, view, pods).await;
                    }
                    group_scale::reconcile(scale_ctx, (id, state), target, status, pods, group).await;
                    if manage_request_path {
                        path::reconcile(path_ctx, id, state, target, status, pods).await;
                    }
                })
            })
            .collect();
        futures::stream::iter(reconciles).buffer_unordered(CONCURRENT_RECONCILES).collect::<()>().await;
        groups::write_notes(context, signals, &snapshot.groups).await;
    }
}

/// What one pass observed.
struct Snapshot {
    /// The scale targets, one per service name.
    targets: Vec<Target>,
    /// Services whose target could not be read this time: kept as they are.
    kept: HashSet<ServiceId>,
    /// Whether every target kind's watch has listed once.
    synced: bool,
    pods: HashMap<ServiceId, Vec<Arc<Pod>>>,
    /// The ready activators' addresses.
    activators: Vec<IpAddr>,
    /// The role groups.
    groups: Groups,
    /// The services with multi-pod instances.
    instances: Views,
}

/// One service the leader acts on: its target and pods as observed, and the engine's decision in force.
struct Work<'s> {
    target: &'s Target,
    status: ServiceStatus,
    pods: &'s [Arc<Pod>],
}

/// Resumes a just-added service's clocks from its public Service's annotations, when ebb manages it.
fn resume(context: &Context, stores: &Stores, autoscaler: &Autoscaler, id: &ServiceId) {
    if !context.options.manage_request_path {
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

/// Applies a changed `config-autoscaler`; `true` when a new configuration is in force.
fn update_global(context: &Context, stores: &Stores, global: &mut Global) -> bool {
    let key = ObjectRef::new(CONFIG_MAP_NAME).within(&context.options.namespace);
    let config_map = stores.config.get(&key);
    let version = config_map.as_ref().map(|c| c.resource_version().unwrap_or_default());
    if global.resource_version.as_ref() == Some(&version) {
        return false;
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
                    context.events.warning(cm.object_ref(&()), "ConfigurationWarning", warning.to_string());
                }
            }
            true
        }
        Err(err) => {
            context
                .metrics
                .config_errors
                .get_or_create(&KubeMetrics::labels(&context.options.namespace, CONFIG_MAP_NAME))
                .inc();
            if let Some(cm) = &config_map {
                context.events.warning(
                    cm.object_ref(&()),
                    "InvalidConfiguration",
                    format!(
                        "{CONFIG_MAP_NAME} is invalid; the previous configuration stays in force: {}",
                        oneline(&err.to_string())
                    ),
                );
            }
            false
        }
    }
}

fn invalid(context: &Context, reference: &ObjectReference, id: &ServiceId, valid: bool, err: &str) {
    context.metrics.config_errors.get_or_create(&KubeMetrics::labels(&id.namespace, &id.name)).inc();
    let consequence = if valid {
        "the last valid configuration stays in force"
    } else {
        "ebb leaves it untouched until they are fixed"
    };
    context.events.warning(
        reference.clone(),
        "InvalidConfiguration",
        format!("invalid annotations ({consequence}): {}", oneline(err)),
    );
}

fn oneline(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join("; ")
}

fn blocked_labels(id: &ServiceId, kind: &str) -> BlockedLabels {
    KubeMetrics::blocked_labels(&id.namespace, &id.name, kind)
}

/// Stuck pods: a Warning Event (deduplicated) and the `blocked_pods` gauge.
fn report_blocked(
    context: &Context,
    reference: &ObjectReference,
    id: &ServiceId,
    state: &mut ServiceState,
    pods: &[Arc<Pod>],
) {
    let mut now: HashMap<String, &'static str> = HashMap::new();
    for pod in pods {
        if let Some(b) = blocked::blocked(pod) {
            let name = pod.name_any();
            context.events.warning(reference.clone(), "PodBlocked", format!("pod {name}: {}", b.message));
            now.insert(name, b.kind);
        }
    }
    for (name, kind) in &now {
        if state.blocked.get(name) != Some(kind) {
            if let Some(old) = state.blocked.get(name) {
                context.metrics.blocked_pods.get_or_create(&blocked_labels(id, old)).dec();
            }
            context.metrics.blocked_pods.get_or_create(&blocked_labels(id, kind)).inc();
        }
    }
    for (name, kind) in &state.blocked {
        if !now.contains_key(name) {
            context.metrics.blocked_pods.get_or_create(&blocked_labels(id, kind)).dec();
        }
    }
    state.blocked = now;
}

/// Whether the target's own pod template carries the queue-proxy (`ebb inject`'s), rather than the
/// admission webhook adding it to each pod when it is created.
fn template_has_queue_proxy(target: &Target) -> bool {
    let Some(spec) = target.template.as_ref().and_then(|t| t.spec.as_ref()) else { return false };
    let pod = Pod { spec: Some(spec.clone()), ..Default::default() };
    env_check::has_queue_proxy(&pod)
}

/// What to do about pods whose queue-proxy runs with other settings than the annotations ask for.
fn remedy(target: &Target, injected_at_creation: bool) -> String {
    if injected_at_creation {
        // The webhook injects at pod creation: running pods keep the settings they were created with.
        target.restart_hint(" to apply")
    } else {
        "re-run ebb inject or restart the pod".to_owned()
    }
}

/// Pods running without a queue-proxy (the webhook is not installed, or injection is off for them): ebb can
/// neither measure nor route to them. A Warning Event when the set changes; the count.
fn report_missing_sidecars(
    context: &Context,
    reference: &ObjectReference,
    state: &mut ServiceState,
    pods: &[Arc<Pod>],
    target: &Target,
) -> usize {
    let mut missing: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !env_check::has_queue_proxy(p))
        .map(|p| p.name_any())
        .collect();
    missing.sort();
    if !missing.is_empty() && missing != state.without_sidecar {
        context.events.warning(
            reference.clone(),
            "QueueProxyMissing",
            format!(
                "{} pod(s) run without the queue-proxy sidecar ({}), so ebb can neither measure nor route to them: \
                 is the admission webhook installed (kubectl get mutatingwebhookconfiguration \
                 ebb-queue-proxy-injector) and does it reach this namespace? Then {}",
                missing.len(),
                missing.join(", "),
                target.restart_hint(""),
            ),
        );
    }
    let count = missing.len();
    state.without_sidecar = missing;
    count
}

/// The `status.ebb.dev/sidecar` sentence, or `None` when every pod runs the sidecar its annotations ask for.
fn sidecar_note(
    pods: usize,
    missing: usize,
    outdated: usize,
    target: &Target,
    injected_at_creation: bool,
) -> Option<String> {
    let mut parts = Vec::new();
    if missing > 0 {
        parts.push(format!("{missing} of {pods} pods without the queue-proxy (is the webhook installed?)"));
    }
    if outdated > 0 {
        parts.push(format!(
            "{outdated} of {pods} pods with outdated queue-proxy settings: {}",
            remedy(target, injected_at_creation)
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Pods whose queue-proxy env disagrees with the configuration in force: one Warning Event per pod, again
/// only when its mismatches change. Returns how many pods disagree.
fn report_mismatches(
    context: &Context,
    reference: &ObjectReference,
    state: &mut ServiceState,
    pods: &[Arc<Pod>],
    target: &Target,
    injected_at_creation: bool,
) -> usize {
    let Some(spec) = state.data_plane.as_ref().filter(|_| state.valid) else {
        state.mismatched.clear();
        return 0;
    };
    let mut now = HashMap::new();
    for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let found = env_check::mismatches(pod, spec);
        if found.is_empty() {
            continue;
        }
        let name = pod.name_any();
        if state.mismatched.get(&name) != Some(&found) {
            let note = if injected_at_creation {
                env_check::describe_with(&found, &remedy(target, true))
            } else {
                env_check::describe(&found)
            };
            context.events.warning(reference.clone(), "ConfigMismatch", note);
        }
        now.insert(name, found);
    }
    state.mismatched = now;
    state.mismatched.len()
}
