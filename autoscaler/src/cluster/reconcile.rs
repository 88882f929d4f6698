//! The pass that turns what the controller watches ([`super::stores`]) into the engine's services and pods,
//! and, on the leader, into writes. Every replica runs the pass up to the engine; only the leader goes on to
//! [`super::scale`] and [`super::path`].
//!
//! A pass visits only the services marked since the last ([`super::dirty`]): by a watch event that touches
//! them, by a decision of the engine that needs a write, or by a change that concerns every service (the
//! ConfigMap, a relist, leadership or buckets held, the ready activators), which marks them all. Each visit is
//! level-triggered (it compares what is wanted with what is seen). A service whose visit left work undone (a
//! held scale-down, a write waiting out its backoff, the activator not yet verified in its path) is visited
//! again every [`super::options::Options::sync_interval`] until it is settled, since only time changes those;
//! and every service is visited every [`super::options::Options::resync_interval`], so an edge that the marks
//! missed is caught up. That resync is spread over the retries (a share of the services each time): visiting
//! thousands of services in one pass holds up, for seconds, the decisions woken meanwhile.
//!
//! For the same reason a pass acts (writes) on at most [`ACT_PER_PASS`] services and starts none after
//! [`ACT_BUDGET`]: scale-ups first, then scale-downs, then the rest, each the longest waiting first
//! ([`Priority`]); the others wait in a backlog that the next passes take in turn, without waiting for a mark.
//! A new leader of 10,000 services has some 30,000 writes to make (Services, EndpointSlices, status
//! annotations): in one pass they took minutes, and no load step was scaled meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_config::names::{CONFIG_MAP_NAME, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY_EBB};
use ebb_config::placement::template_only_keys;
use ebb_config::{GlobalConfig, ServiceId, resolve_service};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ApiResource;
use tokio::sync::watch;

use super::cache::Cache;
use super::dirty::Visit;
use super::groups::{self, Groups};
use super::instance_pods::InstancePods;
use super::instances::{self, Views};
use super::metrics::{KubeMetrics, PassLabels};
use super::path::{self, PathContext, Prober};
use super::pods::{self, is_ready};
use super::scale::{self, ScaleContext};
use super::service_state::{ServiceState, fingerprint};
use super::starting;
use super::state::{Activators, Context, GlobalInForce, OtherTargets, Signals, TargetSettings};
use super::stores::Stores;
use super::target_watches::TargetWatches;
use super::targets::{Target, one_per_name};
use super::watched::WatchedPod;
use super::{blocked, env_check, group_scale, instance_gate, status};
use crate::engine::{Autoscaler, PodTarget, ServiceStatus};

/// How many services the leader reconciles at once: enough that a slow API call for one does not hold up the
/// others, few enough not to flood the API server after a restart with many services.
const CONCURRENT_RECONCILES: usize = 16;

/// How many services one pass acts on: a pass of this many writes takes well under a second on a healthy API
/// server, so a scale change waits at most that long behind a backlog.
const ACT_PER_PASS: usize = 8 * CONCURRENT_RECONCILES;

/// No service's writes start once a pass has acted this long; the rest wait for the next pass.
const ACT_BUDGET: Duration = Duration::from_secs(1);

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
    /// Boxed: a state is 504 bytes, and a hash table keeps up to half its slots empty after it grows.
    services: HashMap<ServiceId, Box<ServiceState>>,
    /// The role groups as last sorted.
    groups: Groups,
    /// Services whose last visit left work undone: visited again at the next retry.
    unsettled: HashSet<ServiceId>,
    /// When the unsettled services are visited again.
    next_retry: Instant,
    /// When the next resync starts.
    next_resync: Instant,
    /// The services the running resync has still to visit, and how many it visits at each retry.
    resync: (Vec<ServiceId>, usize),
    /// What concerned every service at the last pass.
    everywhere: Option<Everywhere>,
    /// Services decided for but not acted on (beyond [`ACT_PER_PASS`]): the next passes visit them in turn.
    backlog: Backlog,
}

/// What every service's pass depends on: when it changes, every service is visited.
#[derive(Debug, PartialEq)]
struct Everywhere {
    /// Whether this replica holds the leader Lease.
    leading: bool,
    /// The buckets it holds (with buckets).
    buckets: Vec<u32>,
    /// The ready activators' addresses.
    activators: Vec<IpAddr>,
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
        // The first pass visits every service (nothing is known yet): the first resync is one interval on.
        let next_resync = Instant::now() + context.options.resync_interval;
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
            groups: Groups::default(),
            unsettled: HashSet::new(),
            next_retry: Instant::now(),
            next_resync,
            resync: (Vec::new(), 0),
            everywhere: None,
            backlog: Backlog::default(),
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
            if !self.backlog.is_empty() {
                // More to write: the next pass at once (its visits are the backlog's next share).
                tokio::task::yield_now().await;
                continue;
            }
            let due = self.next_retry;
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = self.signals.woken() => {
                    // Let a burst of events land before the next pass.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = stop.changed() => {}
            }
        }
    }

    /// One pass: observe, decide, act, for the services marked since the last pass (or every one).
    async fn pass(&mut self) {
        let started = Instant::now();
        let options = &self.context.options;
        let (mut visit, groups_changed) = self.signals.take_dirty();
        // Only time settles these services (a backoff, a hold, a probe): again at the next retry.
        let retry = started >= self.next_retry;
        if retry {
            visit.extend(std::mem::take(&mut self.unsettled));
            self.next_retry = started + options.sync_interval;
            if started >= self.next_resync && self.resync.0.is_empty() {
                let all = self.known_services();
                let retries = options.resync_interval.as_secs_f64() / options.sync_interval.as_secs_f64();
                let share = (all.len() as f64 / retries.max(1.0)).ceil() as usize;
                self.resync = (all, share.max(1));
                self.next_resync = started + options.resync_interval;
            }
            let (queue, share) = &mut self.resync;
            let take = (*share).min(queue.len());
            visit.extend(queue.drain(..take));
        }
        visit.extend(self.backlog.take(ACT_PER_PASS));
        let context = &*self.context;
        if update_global(context, &self.stores, &mut self.global) {
            self.in_force.set(self.global.config.clone());
            visit = Visit::All;
        }
        for (kind, why) in self.targets.sync(&self.global.config.scale_target_kinds).await {
            if let Some(config_map) = self.stores.config_map(&context.options.namespace) {
                let message = format!("scale-target-kinds: ebb cannot scale {kind}: {why}");
                context.events.warning(
                    config_map.meta.reference::<ConfigMap>(),
                    "ScaleTargetUnavailable",
                    message,
                );
            }
        }
        visit.extend(self.targets.refresh_scales().await);
        let config = &self.global.config;
        self.instance_pods.sync(
            config
                .scale_target_kinds
                .iter()
                .filter_map(|k| config.instance_shape(k))
                .collect::<Vec<_>>()
                .iter(),
        );
        let activators = self.ready_activators();
        let everywhere = Everywhere {
            leading: self.signals.is_leader(),
            buckets: self.signals.ownership().map(|o| o.borrow().buckets()).unwrap_or_default(),
            activators: activators.clone(),
        };
        if self.everywhere.as_ref() != Some(&everywhere) {
            self.activators.set_ready(activators.clone());
            self.everywhere = Some(everywhere);
            visit = Visit::All;
        }
        let sort_groups = groups_changed || retry || visit.is_all();
        if sort_groups {
            let groups = groups::observe(&self.stores);
            groups::report(context, &groups);
            if groups_changed {
                // Entries of groups that changed, went or came: their scaling or their refusal changes.
                let entries = |g: &Groups| g.valid.keys().chain(&g.refused).cloned().collect::<Vec<_>>();
                visit.extend(entries(&self.groups));
                visit.extend(entries(&groups));
            }
            self.groups = groups;
        }

        let snapshot = self.observe(&visit, activators);
        let visited = snapshot.visited;
        let mut work = self.decide(&visit, &snapshot);
        let priorities = self.prioritise(&work, started);
        for id in beyond(&priorities, ACT_PER_PASS) {
            work.remove(&id);
            self.backlog.push(id);
        }
        let unstarted = self.act(&snapshot, work, &priorities).await;
        self.backlog.extend(unstarted);
        if sort_groups {
            groups::write_notes(&self.context, &self.signals, &self.groups).await;
        }
        let metrics = &self.context.metrics;
        let kind = if visit.is_all() { "all" } else { "dirty" };
        metrics.reconcile_passes.get_or_create(&PassLabels { kind }).inc();
        metrics.reconcile_services.inc_by(visited as u64);
        metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
        metrics.reconcile_unsettled.set(self.unsettled.len() as i64);
    }

    /// Every service the watches or this pass know of: the labelled Deployments, the targets of other kinds,
    /// and the services that have state here (one whose target went without an event is found gone).
    fn known_services(&self) -> Vec<ServiceId> {
        let mut ids: HashSet<ServiceId> = self.services.keys().cloned().collect();
        ids.extend(self.stores.deployment_ids());
        ids.extend(self.targets.ids());
        ids.into_iter().collect()
    }

    /// The ready activators' addresses.
    fn ready_activators(&self) -> Vec<IpAddr> {
        let mut ready: Vec<IpAddr> = self
            .stores
            .activators
            .state()
            .iter()
            .filter(|p| is_ready(p))
            .filter_map(|p| p.status.as_ref()?.pod_ip)
            .collect();
        ready.sort();
        ready
    }

    /// Observe: what the watches show now of the services in `visit`. Also notes whether the API server
    /// answers.
    fn observe(&mut self, visit: &Visit, activators: Vec<IpAddr>) -> Snapshot {
        let (context, stores) = (&*self.context, &self.stores);
        context.metrics.api_reachable.set(i64::from(context.health.reachable()));
        let kinds = &self.global.config.scale_target_kinds;
        let deployments = kinds.iter().any(|k| k.is_deployments());

        // The scale targets of every listed kind, one per name.
        let (targets, unreadable) = match visit {
            Visit::All => {
                let (mut targets, unreadable) = self.targets.targets();
                if deployments {
                    targets.extend(
                        stores.deployments.iter().flat_map(Cache::state).map(|d| Target::from_deployment(&d)),
                    );
                }
                (targets, unreadable)
            }
            Visit::Some(ids) => {
                let (mut targets, mut unreadable) = (Vec::new(), Vec::new());
                for id in ids {
                    let (found, failed) = self.targets.targets_of(id);
                    targets.extend(found);
                    unreadable.extend(failed);
                    if deployments && let Some(d) = stores.deployment(id) {
                        targets.push(Target::from_deployment(&d));
                    }
                }
                (targets, unreadable)
            }
        };
        let (targets, clashes) = one_per_name(targets, kinds);
        let settings = |t: &Target| {
            (!t.kind.is_deployments()).then(|| TargetSettings {
                kind: t.kind_name().to_owned(),
                annotations: t.annotations().clone(),
                instances: self.global.config.instance_shape(&t.kind).is_some(),
            })
        };
        match visit {
            Visit::All => {
                self.published.set(targets.iter().filter_map(|t| Some((t.id(), settings(t)?))).collect())
            }
            Visit::Some(ids) => {
                let by_id: HashMap<ServiceId, &Target> = targets.iter().map(|t| (t.id(), t)).collect();
                for id in ids {
                    self.published.put(id, by_id.get(id).and_then(|t| settings(t)));
                }
            }
        }
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
        let mut pods: HashMap<ServiceId, Vec<Arc<WatchedPod>>> = HashMap::new();
        for target in &targets {
            let id = target.id();
            let candidates = stores.labelled_pods(&id);
            if candidates.is_empty() {
                continue;
            }
            let selected = match &target.scale.selector {
                Some(selector) => {
                    candidates.into_iter().filter(|p| selector.matches(|key| p.labels().get(key))).collect()
                }
                None => candidates,
            };
            pods.insert(id, selected);
        }
        let instances = instances::views(
            context,
            &self.global.config,
            &targets,
            (&self.targets, &self.instance_pods),
            &pods,
        );
        let visited = match visit {
            Visit::All => targets.len(),
            Visit::Some(ids) => ids.len(),
        };
        Snapshot { targets, kept, pods, activators, instances, synced: self.targets.synced(), visited }
    }

    /// Decide: brings the engine's services and pods up to date with the snapshot (the engine decides on its
    /// own ticks), reports what is wrong, forgets services that are gone and, on the leader, picks the
    /// services to act on, each with the engine's decision in force.
    fn decide<'s>(&mut self, visit: &Visit, snapshot: &'s Snapshot) -> HashMap<ServiceId, Work<'s>> {
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
        // While a kind's watch has not listed yet, its targets are unseen, not gone; a service not visited is
        // as it was.
        if snapshot.synced {
            let gone: Vec<ServiceId> = match visit {
                Visit::All => self.services.keys().filter(|id| !present.contains(*id)).cloned().collect(),
                Visit::Some(ids) => ids
                    .iter()
                    .filter(|id| !present.contains(*id) && self.services.contains_key(*id))
                    .cloned()
                    .collect(),
            };
            for id in gone {
                self.services.remove(&id);
                autoscaler.remove_service(&id);
                context.metrics.remove_service(&id);
                activators.forget_path(&id);
            }
        }

        if !self.signals.acts_on_any() {
            return HashMap::new();
        }
        let mut work = HashMap::new();
        for target in &snapshot.targets {
            let id = target.id();
            if !self.signals.owns(&id)
                || self.groups.leaves_alone(target)
                || !self.services.get(&id).is_some_and(|state| state.valid)
            {
                continue;
            }
            let Some(status) = autoscaler.status_of(&id) else { continue };
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
        pods: &HashMap<ServiceId, Vec<Arc<WatchedPod>>>,
        instances: &Views,
    ) -> Option<ServiceId> {
        let Self { context, signals, activators, autoscaler, stores, global, services, .. } = self;
        let (context, autoscaler, stores) = (&**context, &**autoscaler, &*stores);
        let id = target.id();
        let reference = target.reference();
        let annotations: &BTreeMap<String, String> = target.annotations();
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
        if let Some(template) = target.template.as_ref().and_then(|t| t.annotations.as_ref()) {
            for (_key, message) in template_only_keys(annotations, template) {
                context.events.warning(reference.clone(), "AnnotationOnPodTemplate", message);
            }
        }
        let state = services.entry(id.clone()).or_insert_with(|| {
            context.metrics.add_service(&id);
            Box::<ServiceState>::default()
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
        let config_key = (fingerprint(annotations), global.generation);
        if state.config_key != Some(config_key) {
            state.config_key = Some(config_key);
            match resolve_service(annotations, &global.config) {
                Ok(resolved) => {
                    let data_plane = resolved.value.data_plane.clone();
                    // A paused service's replicas belong to someone else; otherwise start from the last
                    // leader's decision (if any), which ebb enforces over other writers anyway.
                    let in_force = if resolved.value.paused {
                        replicas
                    } else {
                        status::leader_desired(annotations).unwrap_or(replicas)
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
        let injected_at_creation = !target.template.as_ref().is_some_and(|t| t.has_queue_proxy);
        let outdated =
            report_mismatches(context, &reference, state, service_pods, target, injected_at_creation);
        let missing = report_missing_sidecars(context, &reference, state, service_pods, target);
        state.sidecar_note =
            sidecar_note(service_pods.len(), missing, outdated, target, injected_at_creation);
        let scale_ctx = ScaleContext { context, signals, activators, autoscaler };
        scale::observe_replicas(&scale_ctx, &id, state, target);
        Some(id)
    }

    /// Each service's place in the pass's order ([`Priority`]), noting since when its scale has waited.
    fn prioritise(
        &mut self,
        work: &HashMap<ServiceId, Work<'_>>,
        now: Instant,
    ) -> HashMap<ServiceId, Priority> {
        work.iter()
            .map(|(id, w)| {
                let (desired, observed) = (w.status.desired, w.target.scale.replicas);
                let class = match desired.cmp(&observed) {
                    std::cmp::Ordering::Greater => Urgency::ScaleUp,
                    std::cmp::Ordering::Less => Urgency::ScaleDown,
                    std::cmp::Ordering::Equal => Urgency::Other,
                };
                let since = self.services.get_mut(id).map_or(now, |state| {
                    let waiting = &mut state.scale_waiting_since;
                    *waiting = if class == Urgency::Other { None } else { Some(waiting.unwrap_or(now)) };
                    waiting.unwrap_or(now)
                });
                (id.clone(), Priority { class, since })
            })
            .collect()
    }

    /// Act (leader only): each picked service's replicas, then its request path. Services are reconciled
    /// concurrently, at most [`CONCURRENT_RECONCILES`] at once, so that one slow API call does not hold up
    /// every other service's writes. They start in [`Priority`] order, and none starts after [`ACT_BUDGET`] (a
    /// slow API server makes a pass of 128 services take many seconds, and a scale change decided meanwhile
    /// waits for the pass to end). Returns the services not started.
    async fn act(
        &mut self,
        snapshot: &Snapshot,
        work: HashMap<ServiceId, Work<'_>>,
        priorities: &HashMap<ServiceId, Priority>,
    ) -> Vec<ServiceId> {
        let Self {
            context,
            signals,
            activators,
            autoscaler,
            stores,
            slices,
            prober,
            services,
            groups,
            unsettled,
            ..
        } = self;
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
        // A service not started by the deadline answers its id, for the next pass.
        let deadline = Instant::now() + ACT_BUDGET;
        let mut reconciles: Vec<_> = services
            .iter_mut()
            .filter_map(|(id, state)| {
                let Work { target, status, pods } = work.get(id)?;
                let group = groups.valid.get(id);
                let instances = snapshot.instances.get(id);
                let gate_ctx: &Context = scale_ctx.context;
                let priority = priorities.get(id).copied();
                Some((priority, id, async move {
                    if Instant::now() >= deadline {
                        return Some(id.clone());
                    }
                    if let Some(view) = instances {
                        instance_gate::reconcile(gate_ctx, id, view, pods).await;
                    }
                    group_scale::reconcile(scale_ctx, (id, state), target, status, pods, group).await;
                    if manage_request_path {
                        path::reconcile(path_ctx, id, state, target, status, pods).await;
                    }
                    None
                }))
            })
            .collect();
        reconciles.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let reconciles: Vec<_> = reconciles.into_iter().map(|(_, _, reconcile)| reconcile).collect();
        let unstarted: Vec<Option<ServiceId>> =
            futures::stream::iter(reconciles).buffer_unordered(CONCURRENT_RECONCILES).collect().await;
        for (id, Work { target, status, .. }) in &work {
            let Some(state) = services.get(id) else { continue };
            let in_path = activators.in_path(id);
            let proxy = manage_request_path && !snapshot.activators.is_empty();
            if !settled(state, target.scale.replicas, status, proxy && !in_path) {
                unsettled.insert(id.clone());
            }
        }
        unstarted.into_iter().flatten().collect()
    }
}

/// What a service's pass has to do, most pressing first: a scale-up is a request waiting, a scale-down is
/// cost, the rest (its request path, status annotations) is bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Urgency {
    ScaleUp,
    ScaleDown,
    Other,
}

/// A service's place in a pass's order: by [`Urgency`], then the longest waiting first (so a burst of
/// scale-downs cannot keep one service's scale-up waiting), then by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Priority {
    class: Urgency,
    since: Instant,
}

/// The services a pass leaves for later when it could act on more than `limit`: the last in [`Priority`]
/// order.
fn beyond(priorities: &HashMap<ServiceId, Priority>, limit: usize) -> Vec<ServiceId> {
    if priorities.len() <= limit {
        return Vec::new();
    }
    let mut ordered: Vec<(Priority, &ServiceId)> = priorities.iter().map(|(id, p)| (*p, id)).collect();
    ordered.sort_unstable();
    ordered.split_off(limit).into_iter().map(|(_, id)| id.clone()).collect()
}

/// Services left for later passes, each once, in the order they were left.
#[derive(Debug, Default)]
struct Backlog {
    order: VecDeque<ServiceId>,
    queued: HashSet<ServiceId>,
}

impl Backlog {
    fn push(&mut self, id: ServiceId) {
        if self.queued.insert(id.clone()) {
            self.order.push_back(id);
        }
    }

    fn extend(&mut self, ids: impl IntoIterator<Item = ServiceId>) {
        for id in ids {
            self.push(id);
        }
    }

    /// The `n` left longest ago.
    fn take(&mut self, n: usize) -> Vec<ServiceId> {
        let taken: Vec<ServiceId> = self.order.drain(..n.min(self.order.len())).collect();
        for id in &taken {
            self.queued.remove(id);
        }
        taken
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
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
    pods: HashMap<ServiceId, Vec<Arc<WatchedPod>>>,
    /// The ready activators' addresses.
    activators: Vec<IpAddr>,
    /// How many services the pass visited.
    visited: usize,
    /// The services with multi-pod instances.
    instances: Views,
}

/// One service the leader acts on: its target and pods as observed, and the engine's decision in force.
struct Work<'s> {
    target: &'s Target,
    status: ServiceStatus,
    pods: &'s [Arc<WatchedPod>],
}

/// Resumes a just-added service's clocks from its public Service's annotations, when ebb manages it.
fn resume(context: &Context, stores: &Stores, autoscaler: &Autoscaler, id: &ServiceId) {
    if !context.options.manage_request_path {
        return;
    }
    let Some(service) = stores.service(&id.namespace, &id.name) else { return };
    if service.labels().get(LABEL_MANAGED_BY) != Some(MANAGED_BY_EBB) {
        return;
    }
    let Some(resumed) = path::resumed(&service.annotations().to_map(), Timestamp::now()) else { return };
    let phase = resumed.phase_at(|ago| autoscaler.ago(ago));
    autoscaler.resume_service(id, phase, resumed.mode, autoscaler.ago(resumed.mode_for));
}

/// Applies a changed `config-autoscaler`; `true` when a new configuration is in force.
fn update_global(context: &Context, stores: &Stores, global: &mut Global) -> bool {
    let config_map = stores.config_map(&context.options.namespace);
    let version = config_map.as_ref().map(|c| c.object.resource_version().unwrap_or_default());
    if global.resource_version.as_ref() == Some(&version) {
        return false;
    }
    global.resource_version = Some(version);
    let data = config_map.as_ref().and_then(|c| c.object.data.clone()).unwrap_or_default();
    match GlobalConfig::from_data(&data) {
        Ok(resolved) => {
            tracing::info!("global configuration applied ({} keys)", data.len());
            global.config = resolved.value;
            global.generation += 1;
            if let Some(cm) = &config_map {
                for warning in resolved.warnings {
                    context.events.warning(
                        cm.meta.reference::<ConfigMap>(),
                        "ConfigurationWarning",
                        warning.to_string(),
                    );
                }
            }
            true
        }
        Err(err) => {
            context
                .metrics
                .config_errors
                .get_or_create(&KubeMetrics::labels(&ServiceId::new(
                    &context.options.namespace,
                    CONFIG_MAP_NAME,
                )))
                .inc();
            if let Some(cm) = &config_map {
                context.events.warning(
                    cm.meta.reference::<ConfigMap>(),
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
    context.metrics.config_errors.get_or_create(&KubeMetrics::labels(id)).inc();
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

/// Stuck pods: a Warning Event (deduplicated) and the `blocked_pods` gauge.
fn report_blocked(
    context: &Context,
    reference: &ObjectReference,
    id: &ServiceId,
    state: &mut ServiceState,
    pods: &[Arc<WatchedPod>],
) {
    let mut now: HashMap<String, &'static str> = HashMap::new();
    for pod in pods {
        if let Some(b) = blocked::blocked(pod) {
            let name = pod.name().to_owned();
            context.events.warning(reference.clone(), "PodBlocked", format!("pod {name}: {}", b.message));
            now.insert(name, b.kind);
        }
    }
    for (name, kind) in &now {
        if state.blocked.get(name) != Some(kind) {
            if let Some(old) = state.blocked.get(name) {
                context.metrics.blocked_pods.get_or_create(&KubeMetrics::blocked_labels(id, old)).dec();
            }
            context.metrics.blocked_pods.get_or_create(&KubeMetrics::blocked_labels(id, kind)).inc();
        }
    }
    for (name, kind) in &state.blocked {
        if !now.contains_key(name) {
            context.metrics.blocked_pods.get_or_create(&KubeMetrics::blocked_labels(id, kind)).dec();
        }
    }
    state.blocked = now;
}

/// Whether a service the leader acted on is settled: nothing left that only time would let it do. Not settled
/// while a write waits out its backoff, while its replicas differ from the engine's (a held scale-down, or a
/// write the watch has not shown yet), or while it is in proxy mode without the activator verified in its
/// path (`unverified`; the probe is tried again).
fn settled(state: &ServiceState, replicas: u32, status: &ServiceStatus, unverified: bool) -> bool {
    let backing_off = !state.deployment_writes.ready() || !state.path_writes.ready();
    let replicas_differ = !status.paused && replicas != status.desired;
    !(backing_off || replicas_differ || (status.mode == "proxy" && unverified))
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
    pods: &[Arc<WatchedPod>],
    target: &Target,
) -> usize {
    let mut missing: Vec<String> = pods
        .iter()
        .filter(|p| p.meta.deleting.is_none() && p.queue_proxy().is_none())
        .map(|p| p.name().to_owned())
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
    pods: &[Arc<WatchedPod>],
    target: &Target,
    injected_at_creation: bool,
) -> usize {
    let Some(spec) = state.data_plane.as_ref().filter(|_| state.valid) else {
        state.mismatched.clear();
        return 0;
    };
    let mut now = HashMap::new();
    for pod in pods.iter().filter(|p| p.meta.deleting.is_none()) {
        let found = env_check::mismatches(pod, spec);
        if found.is_empty() {
            continue;
        }
        let name = pod.name().to_owned();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_scales_up_first_then_down_each_longest_waiting_first() {
        let id = |n: usize| ServiceId::new("m", format!("s{n:02}"));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut priorities = HashMap::new();
        for n in 0..6 {
            priorities.insert(id(n), Priority { class: Urgency::Other, since: at(10) });
        }
        // Scale-downs waiting longer than the scale-up, and named before it.
        priorities.insert(id(0), Priority { class: Urgency::ScaleDown, since: at(1) });
        priorities.insert(id(1), Priority { class: Urgency::ScaleDown, since: at(0) });
        priorities.insert(id(5), Priority { class: Urgency::ScaleUp, since: at(9) });
        assert_eq!(beyond(&priorities, 6), [] as [ServiceId; 0]);
        let mut later = beyond(&priorities, 2);
        later.sort();
        assert_eq!(later, [0, 2, 3, 4].map(id), "the scale-up and the longest-waiting scale-down go first");
        assert_eq!(beyond(&priorities, 0).len(), 6);
    }

    #[test]
    fn the_backlog_keeps_each_service_once_in_the_order_it_was_left() {
        let id = |n: usize| ServiceId::new("m", format!("s{n}"));
        let mut backlog = Backlog::default();
        backlog.extend([3, 1, 3, 2, 1].map(id));
        assert_eq!(backlog.take(2), [3, 1].map(id));
        backlog.push(id(3));
        assert_eq!(backlog.take(5), [2, 3].map(id));
        assert!(backlog.is_empty());
    }
}
