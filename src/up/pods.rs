//! Local pods: each is an `ebb pod-supervisor` process (its own process group) running a queue-proxy on its
//! own loopback address 127.0.0.N and the service's command with `HOST=127.0.0.N` and `PORT`. The manager keeps
//! each service at the replicas the autoscaler asked for (replacing pods that die), tells the activator the
//! pods (probed before use) and tells the autoscaler which are ready and where their stats are.
//!
//! A pod that dies or cannot start is replaced after a delay ([`Backoff`]); while a service keeps failing, the
//! activator is told its pods are blocked, so waiting requests fail at once naming why. When a supervisor
//! exits, the process groups it reported are killed, so nothing outlives a supervisor killed with SIGKILL.
//!
//! The unit of scaling is the instance: the autoscaler's replicas are instances, and each instance runs
//! `count` pods of every role of its service (a plain service: one pod, its entry). Only the entry's pod has a
//! queue-proxy, takes traffic and reports load. The others are ready when their port accepts connections
//! (probed from here); the entry's pod is given to the activator only while every other pod of its instance is
//! ready, so requests held at zero wait for a whole instance, and an instance whose pod died leaves the
//! rotation until the replacement is ready. An instance keeps its pods' addresses for its whole life, so a
//! replaced pod comes back where its peers' `EBB_PEERS_*` say it is. Scaling down drains an instance's entry
//! first, then stops its other pods.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use ebb_activator::endpoints::{Change, ChangeSender, PodInfo};
use ebb_activator::registry::Registry;
use ebb_autoscaler::engine::{Autoscaler, PodTarget};
use ebb_config::ServiceId;
use ebb_config::sidecar::{self, env};
use ebb_process::sync::Locked;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::backoff::{Backoff, Failure};
use super::config::Service;
use super::supervisor::{ProxyAddrs, Report, Spec};

/// The namespace of every local service.
pub const NAMESPACE: &str = "default";

/// How pods are run.
#[derive(Debug, Clone)]
pub struct PodOptions {
    /// The `ebb` binary.
    pub exe: PathBuf,
    /// How long a terminating pod may drain before it is killed.
    pub grace_period: Duration,
    /// `--log-format` for the queue-proxies.
    pub log_format: &'static str,
}

#[derive(Debug)]
struct Pod {
    name: String,
    /// Its instance, role (an index into the service's roles) and place among that role's pods there.
    instance: u64,
    role: usize,
    slot: usize,
    entry: bool,
    ip: Ipv4Addr,
    pid: Option<u32>,
    addrs: Option<ProxyAddrs>,
    started: Instant,
    /// Since when it is ready: an entry pod, since the activator found it serving; another role's, since its
    /// port accepted a connection.
    ready_since: Option<Instant>,
    terminating: bool,
    /// The process groups its supervisor reported (the queue-proxy's and the command's).
    groups: Vec<i32>,
    /// Never written: dropping it (or `ebb up` dying) closes the supervisor's stdin, which stops the pod.
    _lifeline: Option<ChildStdin>,
}

/// One instance of a service: `count` pods of each role.
#[derive(Debug)]
struct Instance {
    id: u64,
    /// Scaled away: its entry drains, then its other pods stop.
    terminating: bool,
    /// The address of each role's pods (by role, then slot), held while the instance lives.
    ips: Vec<Vec<Ipv4Addr>>,
    /// Every pod of it was ready when last looked at (its entry is in the rotation).
    whole: bool,
}

#[derive(Debug)]
struct ServiceState {
    spec: Service,
    /// Instances wanted.
    want: u32,
    instances: Vec<Instance>,
    next_instance: u64,
    /// Pods being started, `(instance, role, slot)`: another reconcile running meanwhile leaves them be.
    starting: BTreeSet<(u64, usize, usize)>,
    pods: Vec<Pod>,
    next: u64,
    backoff: Backoff,
    /// A timer will reconcile the service when its backoff delay is over.
    retry_scheduled: bool,
}

impl ServiceState {
    fn live_instances(&self) -> u32 {
        self.instances.iter().filter(|i| !i.terminating).count() as u32
    }

    /// Entry pods not draining: the instances that have (or are starting) their entry.
    fn live_entries(&self) -> u32 {
        self.pods.iter().filter(|p| p.entry && !p.terminating).count() as u32
    }

    /// The pods of `instance`'s `role` in `slot` that are not draining.
    fn in_slot(&self, instance: u64, role: usize, slot: usize) -> usize {
        self.pods
            .iter()
            .filter(|p| (p.instance, p.role, p.slot) == (instance, role, slot) && !p.terminating)
            .count()
    }

    /// Live instances' pods that are not running (not started yet, or died): `(instance, role, slot)`, the
    /// entry's last in each instance so its peers start first.
    fn missing(&self) -> Vec<(u64, usize, usize)> {
        let mut roles: Vec<usize> = (0..self.spec.roles.len()).collect();
        roles.sort_by_key(|r| self.spec.roles[*r].entry);
        let mut missing = Vec::new();
        for instance in self.instances.iter().filter(|i| !i.terminating) {
            for &role in &roles {
                for slot in 0..self.spec.roles[role].count as usize {
                    let place = (instance.id, role, slot);
                    if self.in_slot(instance.id, role, slot) == 0 && !self.starting.contains(&place) {
                        missing.push(place);
                    }
                }
            }
        }
        missing
    }

    /// Whether every pod of `instance` other than its entry is ready.
    fn peers_ready(&self, instance: u64) -> bool {
        self.spec.roles.iter().enumerate().filter(|(_, r)| !r.entry).all(|(role, r)| {
            let ready = self.pods.iter().filter(|p| {
                p.instance == instance && p.role == role && !p.terminating && p.ready_since.is_some()
            });
            ready.count() >= r.count as usize
        })
    }
}

/// A service's pods, for status.
#[derive(Debug, Clone, Default)]
pub struct PodCounts {
    /// Draining.
    pub terminating: u32,
    /// Pods that died or could not start, since `ebb up` started.
    pub restarts: u64,
    /// Why its pods cannot start, while it waits to retry after repeated failures.
    pub blocked: Option<String>,
    /// Each pod that has bound its queue-proxy: its name, data address, and whether it is draining.
    pub pods: Vec<(String, SocketAddr, bool)>,
    /// A service of roles: every pod, by instance.
    pub role_pods: Option<Vec<RolePod>>,
}

/// One pod of a service of roles, for status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RolePod {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its instance.
    pub instance: u64,
    /// Where its command listens.
    pub address: SocketAddr,
    /// Whether it is ready (an entry pod: the activator found it serving).
    pub ready: bool,
    /// Whether it is draining.
    pub terminating: bool,
}

/// A live pod's queue-proxy metrics endpoint, for Prometheus service discovery.
#[derive(Debug, Clone)]
pub struct MetricsTarget {
    /// The service.
    pub service: String,
    /// The pod.
    pub pod: String,
    /// Its queue-proxy's Prometheus address.
    pub addr: SocketAddr,
}

/// Every local pod.
pub struct PodManager {
    options: PodOptions,
    services: Mutex<BTreeMap<String, ServiceState>>,
    /// Addresses our pods hold, each with its reservation: an exclusive lock on a file named after the address,
    /// shared by every `ebb up` on this machine and released by the kernel when we exit, however we exit.
    ips: Mutex<BTreeMap<Ipv4Addr, std::fs::File>>,
    changes: ChangeSender,
    registry: Arc<Registry>,
    autoscaler: OnceLock<Weak<Autoscaler>>,
    me: Weak<PodManager>,
    stopping: std::sync::atomic::AtomicBool,
}

impl PodManager {
    /// A manager for `services` (none running yet).
    pub fn new(
        options: PodOptions,
        services: Vec<Service>,
        changes: ChangeSender,
        registry: Arc<Registry>,
    ) -> Arc<Self> {
        let services = services
            .into_iter()
            .map(|spec| {
                let state = ServiceState {
                    spec,
                    want: 0,
                    instances: Vec::new(),
                    next_instance: 1,
                    starting: BTreeSet::new(),
                    pods: Vec::new(),
                    next: 1,
                    backoff: Backoff::default(),
                    retry_scheduled: false,
                };
                (state.spec.name.clone(), state)
            })
            .collect();
        Arc::new_cyclic(|me| Self {
            options,
            services: Mutex::new(services),
            ips: Mutex::default(),
            changes,
            registry,
            autoscaler: OnceLock::new(),
            me: me.clone(),
            stopping: Default::default(),
        })
    }

    /// Connects the autoscaler that is told the pods.
    pub fn set_autoscaler(&self, autoscaler: &Arc<Autoscaler>) {
        let _ = self.autoscaler.set(Arc::downgrade(autoscaler));
    }

    /// Sets a service's replicas (instances) and starts or stops pods to match.
    pub fn scale(&self, service: &str, replicas: u32) {
        if let Some(state) = self.services.locked().get_mut(service) {
            state.want = replicas;
        }
        self.reconcile(service);
    }

    /// The live pods' queue-proxy metrics endpoints.
    pub fn metrics_targets(&self) -> Vec<MetricsTarget> {
        let services = self.services.locked();
        services
            .values()
            .flat_map(|s| {
                s.pods.iter().filter(|p| !p.terminating).filter_map(|p| {
                    p.addrs.map(|a| MetricsTarget {
                        service: s.spec.name.clone(),
                        pod: p.name.clone(),
                        addr: a.metrics,
                    })
                })
            })
            .collect()
    }

    fn reconcile(&self, service: &str) {
        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut to_start = Vec::new();
        let mut released = Vec::new();
        {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return };
            let live = state.live_instances();
            if live < state.want {
                for _ in live..state.want {
                    let id = state.next_instance;
                    state.next_instance += 1;
                    state.instances.push(Instance { id, terminating: false, ips: Vec::new(), whole: false });
                }
            } else if live > state.want {
                // Stop the youngest instances first: not yet ready ones are the cheapest to lose.
                let excess = (live - state.want) as usize;
                for instance in state.instances.iter_mut().rev().filter(|i| !i.terminating).take(excess) {
                    instance.terminating = true;
                }
            }
            // A terminating instance drains its entry first (requests in flight there may still need its
            // peers), then stops the rest; once its last pod is gone, its addresses are free.
            let ServiceState { instances, pods, starting, .. } = state;
            instances.retain(|instance| {
                if !instance.terminating {
                    return true;
                }
                let busy = starting.iter().any(|(i, _, _)| *i == instance.id);
                if !busy && !pods.iter().any(|p| p.instance == instance.id) {
                    released.extend(instance.ips.iter().flatten().copied());
                    return false;
                }
                let entry_left = pods.iter().any(|p| p.instance == instance.id && p.entry);
                for pod in pods.iter_mut().filter(|p| p.instance == instance.id && (p.entry || !entry_left)) {
                    terminate(pod);
                }
                true
            });
            // After a failure, new pods wait for the backoff delay (a timer reconciles then).
            if state.backoff.waiting(Instant::now()).is_none() {
                to_start = state.missing();
                state.starting.extend(to_start.iter().copied());
            }
        }
        for ip in released {
            self.release_ip(ip);
        }
        for &(instance, role, slot) in &to_start {
            if let Err(reason) = self.start_pod(service, instance, role, slot) {
                tracing::error!(service, "cannot start a pod: {reason}");
                if let Some(state) = self.services.locked().get_mut(service) {
                    let delay = state.backoff.failed(Instant::now(), Failure::StartFailed, reason, None);
                    tracing::warn!(service, "next start in {delay:?}");
                }
                break;
            }
        }
        // Started pods are in `pods` now; the others are missing again, for the retry. A pod started for an
        // instance that was scaled away meanwhile is stopped by reconciling again.
        let again = match self.services.locked().get_mut(service) {
            Some(state) => {
                for place in &to_start {
                    state.starting.remove(place);
                }
                let instances = &state.instances;
                to_start.iter().any(|(id, _, _)| instances.iter().any(|i| i.id == *id && i.terminating))
            }
            None => false,
        };
        if again {
            return self.reconcile(service);
        }
        self.schedule_retry(service);
        self.publish(service);
    }

    /// Reconciles `service` again when its backoff delay is over, if pods are missing then.
    fn schedule_retry(&self, service: &str) {
        let at = {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return };
            if state.retry_scheduled || state.missing().is_empty() {
                return;
            }
            let Some(at) = state.backoff.waiting(Instant::now()) else { return };
            state.retry_scheduled = true;
            at
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(service, "no runtime to retry starting pods on");
            return;
        };
        let (me, service) = (self.me.clone(), service.to_owned());
        runtime.spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            let Some(me) = me.upgrade() else { return };
            if let Some(state) = me.services.locked().get_mut(&service) {
                state.retry_scheduled = false;
            }
            me.reconcile(&service);
        });
    }

    /// A free loopback address: one that no pod of any `ebb up` on this machine holds (a lock file per address,
    /// held while the pod lives, so two instances never share one), and where the service's port can be bound
    /// (no other process listens there). Binding alone was not enough: two instances could both find the port
    /// free and then start their workloads on the same address, and a queue-proxy would forward to the other
    /// instance's workload.
    fn pick_ip(&self, port: u16) -> Option<Ipv4Addr> {
        let mut held = self.ips.locked();
        let locks = std::env::temp_dir().join("ebb-up-addresses");
        if let Err(err) = std::fs::create_dir_all(&locks) {
            tracing::error!(dir = %locks.display(), "cannot create the address reservation folder: {err}");
            return None;
        }
        // Start at an offset of our own so that several `ebb up`s rarely contend for the same address.
        let offset = (std::process::id() % 16) as u16 * 15;
        for i in 0..253u16 {
            let n = 2 + (offset + i) % 253;
            let ip = Ipv4Addr::new(127, 0, 0, n as u8);
            if held.contains_key(&ip) {
                continue;
            }
            let Ok(file) = std::fs::File::create(locks.join(format!("{ip}.lock"))) else { continue };
            if file.try_lock().is_err() {
                continue; // another `ebb up` holds it
            }
            if TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), port)).is_ok() {
                held.insert(ip, file);
                return Some(ip);
            }
        }
        None
    }

    fn release_ip(&self, ip: Ipv4Addr) {
        // Dropping the file releases its lock.
        self.ips.locked().remove(&ip);
    }

    /// The addresses of `instance`'s pods, by role and slot, reserved on first use and kept while it lives.
    fn instance_ips(&self, service: &str, instance: u64) -> Result<Vec<Vec<Ipv4Addr>>, String> {
        let roles = {
            let services = self.services.locked();
            let Some(state) = services.get(service) else { return Err("the service is gone".into()) };
            let Some(i) = state.instances.iter().find(|i| i.id == instance) else {
                return Err(format!("instance {instance} is gone"));
            };
            if !i.ips.is_empty() {
                return Ok(i.ips.clone());
            }
            state.spec.roles.clone()
        };
        let mut ips: Vec<Vec<Ipv4Addr>> = Vec::new();
        let mut failure: Option<String> = None;
        'roles: for role in &roles {
            let mut slots = Vec::new();
            for _ in 0..role.count {
                match self.pick_ip(role.port) {
                    Some(ip) => slots.push(ip),
                    None => {
                        failure = Some(format!(
                            "no free loopback address 127.0.0.N where port {} can be bound",
                            role.port
                        ));
                        ips.push(slots);
                        break 'roles;
                    }
                }
            }
            ips.push(slots);
        }
        if let Some(failure) = failure {
            ips.into_iter().flatten().for_each(|ip| self.release_ip(ip));
            return Err(failure);
        }
        let kept = {
            let mut services = self.services.locked();
            let found =
                services.get_mut(service).and_then(|s| s.instances.iter_mut().find(|i| i.id == instance));
            match found {
                // Another start reserved them meanwhile: those are the instance's.
                Some(found) if !found.ips.is_empty() => Ok(found.ips.clone()),
                Some(found) if !found.terminating => {
                    found.ips = ips.clone();
                    return Ok(ips);
                }
                _ => Err(format!("instance {instance} is gone")),
            }
        };
        ips.into_iter().flatten().for_each(|ip| self.release_ip(ip));
        kept
    }

    /// Starts the pod of `role` in `slot` of `instance`; `Err` says why it could not.
    fn start_pod(&self, service: &str, instance: u64, role: usize, slot: usize) -> Result<(), String> {
        let ips = self.instance_ips(service, instance)?;
        let (spec, name) = {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return Ok(()) };
            let name = if state.spec.has_roles {
                format!("{}-{instance}-{}-{}", state.spec.name, state.spec.roles[role].name, state.next)
            } else {
                format!("{}-{}", state.spec.name, state.next)
            };
            state.next += 1;
            (state.spec.clone(), name)
        };
        let ip = ips[role][slot];
        let place = Place { instance, role, slot, ips: &ips };
        let supervisor = supervisor_spec(&self.options, &spec, &name, ip, &place);
        let child = spawn_supervisor(&self.options.exe, &supervisor)?;
        let this = &spec.roles[role];
        let probe = (!this.entry).then(|| SocketAddr::new(IpAddr::V4(ip), this.port));
        self.follow(service, name, ip, child, &place, probe);
        Ok(())
    }

    /// Records a started pod and follows its supervisor: its reports, then its exit. `probe` is the address
    /// whose connections make it ready (a role other than the entry), probed until the pod is gone.
    fn follow(
        &self,
        service: &str,
        name: String,
        ip: Ipv4Addr,
        mut child: Child,
        place: &Place<'_>,
        probe: Option<SocketAddr>,
    ) {
        let pid = child.id();
        tracing::info!(service, pod = name, %ip, pid, "pod started");
        {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return };
            state.pods.push(Pod {
                name: name.clone(),
                instance: place.instance,
                role: place.role,
                slot: place.slot,
                entry: probe.is_none(),
                ip,
                pid,
                addrs: None,
                started: Instant::now(),
                ready_since: None,
                terminating: false,
                groups: Vec::new(),
                _lifeline: child.stdin.take(),
            });
        }
        if let Some(addr) = probe {
            tokio::spawn(probe_role_pod(self.me.clone(), service.to_owned(), name.clone(), addr));
        }
        let reports = child.stdout.take().map(|stdout| {
            tokio::spawn(read_reports(stdout, self.me.clone(), service.to_owned(), name.clone()))
        });
        let me = self.me.clone();
        let service = service.to_owned();
        tokio::spawn(async move {
            let status = child.wait().await;
            // First of all, whatever the supervisor left running (it was killed, or it failed to).
            if let Some(me) = me.upgrade() {
                me.kill_groups(&service, &name);
            }
            // Its last words (why the pod ended) come before its stdout closes, which is at once now that its
            // processes are gone; a process that escaped the groups may hold it open, hence the timeout.
            let mut reason = None;
            if let Some(mut reports) = reports {
                match tokio::time::timeout(Duration::from_secs(1), &mut reports).await {
                    Ok(Ok(last)) => reason = last,
                    _ => reports.abort(),
                }
            }
            if let Some(me) = me.upgrade() {
                me.pod_exited(&service, &name, status, reason);
            }
        });
    }

    /// A role pod's probe changed its verdict: records it and tells the activator. `false` when the pod is gone
    /// or draining (the probe ends).
    fn role_pod_ready(&self, service: &str, name: &str, ready: bool) -> bool {
        {
            let mut services = self.services.locked();
            let Some(pod) =
                services.get_mut(service).and_then(|s| s.pods.iter_mut().find(|p| p.name == name))
            else {
                return false;
            };
            if pod.terminating {
                return false;
            }
            pod.ready_since = if ready { pod.ready_since.or(Some(Instant::now())) } else { None };
            if ready {
                tracing::info!(service, pod = name, instance = pod.instance, "role pod ready");
            } else {
                tracing::warn!(
                    service,
                    pod = name,
                    instance = pod.instance,
                    "role pod not ready (its port refuses)"
                );
            }
        }
        self.publish(service);
        true
    }

    /// Whether pod `name` still runs and is not draining.
    fn pod_live(&self, service: &str, name: &str) -> bool {
        let services = self.services.locked();
        services.get(service).is_some_and(|s| s.pods.iter().any(|p| p.name == name && !p.terminating))
    }

    fn pod_group(&self, service: &str, name: &str, group: i32) {
        let mut services = self.services.locked();
        let pod = services.get_mut(service).and_then(|s| s.pods.iter_mut().find(|p| p.name == name));
        match pod {
            Some(pod) => pod.groups.push(group),
            // The pod is already gone: so must its processes be.
            None => kill_group(group),
        }
    }

    /// SIGKILL to the process groups a pod's supervisor reported.
    fn kill_groups(&self, service: &str, name: &str) {
        let services = self.services.locked();
        let pod = services.get(service).and_then(|s| s.pods.iter().find(|p| p.name == name));
        for group in pod.map(|p| p.groups.as_slice()).unwrap_or_default() {
            kill_group(*group);
        }
    }

    fn pod_bound(&self, service: &str, name: &str, addrs: ProxyAddrs) {
        {
            let mut services = self.services.locked();
            let Some(pod) =
                services.get_mut(service).and_then(|s| s.pods.iter_mut().find(|p| p.name == name))
            else {
                return;
            };
            pod.addrs = Some(addrs);
            tracing::info!(service, pod = name, data = %addrs.data, "queue-proxy listening");
        }
        self.publish(service);
    }

    fn pod_exited(
        &self,
        service: &str,
        name: &str,
        status: std::io::Result<std::process::ExitStatus>,
        reason: Option<String>,
    ) {
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        let now = Instant::now();
        let delay = {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return };
            let Some(i) = state.pods.iter().position(|p| p.name == name) else { return };
            // Its address stays with its instance, for its replacement.
            let pod = state.pods.remove(i);
            let stopping = self.stopping.load(std::sync::atomic::Ordering::Relaxed);
            (!pod.terminating && !stopping).then(|| {
                let reason = reason.clone().unwrap_or_else(|| format!("its supervisor ended ({status})"));
                let ready_for = pod.ready_since.map(|t| now.saturating_duration_since(t));
                state.backoff.failed(now, Failure::Crashed, reason, ready_for)
            })
        };
        let reason = reason.unwrap_or_default();
        match delay {
            None => tracing::info!(service, pod = name, %status, reason, "pod stopped"),
            Some(delay) => {
                tracing::warn!(service, pod = name, %status, reason, ?delay, "pod died; replacing it")
            }
        }
        self.reconcile(service);
    }

    /// Tells the activator and the autoscaler a service's pods: the entry pods, each with its address only
    /// while every other pod of its instance is ready.
    pub fn publish(&self, service: &str) {
        let infos: Vec<PodInfo> = {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return };
            let blocked = state.backoff.blocked(Instant::now());
            let whole: BTreeMap<u64, bool> =
                state.instances.iter().map(|i| (i.id, !i.terminating && state.peers_ready(i.id))).collect();
            for instance in state.instances.iter_mut() {
                let now_whole = whole[&instance.id];
                if state.spec.has_roles && now_whole != instance.whole {
                    if now_whole {
                        tracing::info!(
                            service,
                            instance = instance.id,
                            "instance ready: every pod of it is ready, its entry joins the rotation"
                        );
                    } else if !instance.terminating {
                        tracing::warn!(
                            service,
                            instance = instance.id,
                            "instance not ready: a pod of it is not ready, its entry leaves the rotation until it is"
                        );
                    }
                }
                instance.whole = now_whole;
            }
            let mut infos: Vec<PodInfo> = state
                .pods
                .iter()
                .filter(|p| p.entry)
                .filter_map(|p| {
                    let addrs = p.addrs?;
                    let info = PodInfo { terminating: p.terminating, ..PodInfo::live(&p.name, addrs.data) };
                    if p.terminating || whole.get(&p.instance).copied().unwrap_or(false) {
                        return Some(info);
                    }
                    // Its peers are not ready: known to the activator, but with no address to send to (and
                    // blocked, so that waiting requests fail at once, while the service's pods crash).
                    Some(PodInfo { addr: None, blocked: blocked.clone(), ..info })
                })
                .collect();
            // The pods waiting out a crash loop, as a cluster's pods in CrashLoopBackOff: blocked, no address.
            if let Some(reason) = &blocked {
                for i in state.live_entries()..state.want {
                    let name = format!("{service}-backoff-{i}");
                    infos.push(PodInfo {
                        name: name.into(),
                        addr: None,
                        terminating: false,
                        blocked: Some(reason.clone()),
                        ready: None,
                        held: false,
                    });
                }
            }
            infos
        };
        let key = ServiceId::new(NAMESPACE, service);
        let _ = self.changes.send(Change::Pods { key, pods: infos });
        self.publish_ready(service);
    }

    /// Tells the autoscaler which entry pods are ready (those the activator's probe found serving): its ready
    /// instances.
    pub fn publish_ready(&self, service: &str) {
        let Some(autoscaler) = self.autoscaler.get().and_then(Weak::upgrade) else { return };
        let key = ServiceId::new(NAMESPACE, service);
        let serving: Vec<Arc<str>> = self.registry.get(&key).map(|s| s.endpoint_names()).unwrap_or_default();
        let now = Instant::now();
        let targets = {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return };
            state
                .pods
                .iter_mut()
                .filter(|p| p.entry)
                .map(|p| {
                    let ready = !p.terminating && serving.iter().any(|s| **s == *p.name);
                    p.ready_since = if ready { p.ready_since.or(Some(now)) } else { None };
                    PodTarget {
                        name: p.name.clone(),
                        stats: p.addrs.map(|a| a.stats),
                        ready,
                        terminating: p.terminating,
                        started: p.started,
                    }
                })
                .collect()
        };
        autoscaler.set_pods(&ServiceId::new(NAMESPACE, service), targets);
    }

    /// Stops every pod (drain, then kill after the grace period) and waits until all are gone or `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        {
            let mut services = self.services.locked();
            for state in services.values_mut() {
                state.want = 0;
                state.instances.iter_mut().for_each(|i| i.terminating = true);
                for pod in state.pods.iter_mut() {
                    terminate(pod);
                }
            }
        }
        let until = Instant::now() + deadline;
        while Instant::now() < until && self.services.locked().values().any(|s| !s.pods.is_empty()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill_remaining();
    }

    /// Kills every pod's processes at once (the grace period is over, or a second Ctrl-C).
    pub fn kill_remaining(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        for state in self.services.locked().values_mut() {
            for pod in state.pods.iter_mut() {
                pod._lifeline = None;
                for group in &pod.groups {
                    kill_group(*group);
                }
                // The supervisor leads its own group.
                if let Some(pid) = pod.pid {
                    kill_group(pid as i32);
                }
            }
        }
    }

    /// What a service's autoscaling measures.
    pub fn metric(&self, service: &str) -> Option<ebb_config::Metric> {
        self.services.locked().get(service).map(|s| s.spec.config.scaling.metric)
    }

    /// The services' names.
    pub fn service_names(&self) -> Vec<String> {
        self.services.locked().keys().cloned().collect()
    }

    /// Pod counts by service, for status.
    pub fn counts(&self) -> HashMap<String, PodCounts> {
        let now = Instant::now();
        self.services
            .locked()
            .iter()
            .map(|(name, s)| {
                let role_pods = s.spec.has_roles.then(|| {
                    s.pods
                        .iter()
                        .map(|p| {
                            let role = &s.spec.roles[p.role];
                            RolePod {
                                name: p.name.clone(),
                                role: role.name.clone(),
                                instance: p.instance,
                                address: SocketAddr::new(IpAddr::V4(p.ip), role.port),
                                ready: p.ready_since.is_some(),
                                terminating: p.terminating,
                            }
                        })
                        .collect()
                });
                let counts = PodCounts {
                    terminating: s.pods.iter().filter(|p| p.terminating).count() as u32,
                    restarts: s.backoff.restarts(),
                    blocked: s.backoff.blocked(now).filter(|_| !s.missing().is_empty()),
                    pods: s
                        .pods
                        .iter()
                        .filter_map(|p| Some((p.name.clone(), p.addrs?.data, p.terminating)))
                        .collect(),
                    role_pods,
                };
                (name.clone(), counts)
            })
            .collect()
    }
}

/// The queue-proxy's flags for pod `name` of `service` on `ip`: the pod's addresses and names, the local drain
/// and probe settings, and the service's data-plane settings.
fn queue_proxy_args(options: &PodOptions, service: &Service, name: &str, ip: Ipv4Addr) -> Vec<String> {
    let upstream = format!("{ip}:{}", service.entry().port);
    let grace = options.grace_period;
    let flag = |env: &str, value: String| [sidecar::flag(env), value];
    let mut qp: Vec<String> = [
        flag(env::UPSTREAM, upstream),
        flag(env::BIND_ADDRESS, ip.to_string()),
        flag(env::DATA_PORT, "0".into()),
        flag(env::ADMIN_PORT, "0".into()),
        flag(env::STATS_PORT, "0".into()),
        flag(env::METRICS_PORT, "0".into()),
        flag(env::POD_NAME, name.to_owned()),
        flag(env::SERVICE_NAMESPACE, NAMESPACE.into()),
        flag(env::SERVICE_NAME, service.name.clone()),
        // The activator stops sending to a terminating pod at once: a short quiet period suffices.
        flag(env::DRAIN_QUIET_PERIOD, "1s".into()),
        flag(env::DRAIN_DEADLINE, format!("{}ms", grace.as_millis())),
        // On loopback a probe costs microseconds: probing the workload every 2 ms (not the cluster
        // default of 10 ms) sees a fast start sooner, which is most of a local cold start's overhead.
        flag(env::PROBE_PERIOD, "2ms".into()),
        flag(env::LOG_FORMAT, options.log_format.into()),
    ]
    .into_iter()
    .flatten()
    .collect();
    qp.extend(sidecar::data_plane_args(&service.config.data_plane));
    qp
}

/// Where a pod belongs: its instance, role and slot, and the addresses of its instance's pods.
struct Place<'a> {
    instance: u64,
    role: usize,
    slot: usize,
    ips: &'a [Vec<Ipv4Addr>],
}

/// The environment variable that lists the addresses of `role`'s pods in an instance: `EBB_PEERS_PREFILL`.
pub fn peers_variable(role: &str) -> String {
    format!("EBB_PEERS_{}", role.to_ascii_uppercase().replace('-', "_"))
}

/// What the supervisor of pod `name` of `service` on `ip` runs: for the entry role, the queue-proxy and the
/// role's command; for another role, its command alone. The command gets `HOST` and `PORT`, and in a service
/// of roles its instance and peers: `EBB_SERVICE`, `EBB_INSTANCE`, `EBB_ROLE`, `EBB_POD`, and for every role
/// `EBB_PEERS_<ROLE>` (upper case, `-` as `_`), the `HOST:PORT` of that role's pods in the same instance,
/// comma-separated.
fn supervisor_spec(
    options: &PodOptions,
    service: &Service,
    name: &str,
    ip: Ipv4Addr,
    place: &Place<'_>,
) -> Spec {
    let role = &service.roles[place.role];
    let mut env = service.env.clone();
    env.extend(role.env.clone());
    env.insert("HOST".into(), ip.to_string());
    env.insert("PORT".into(), role.port.to_string());
    if service.has_roles {
        env.insert("EBB_SERVICE".into(), service.name.clone());
        env.insert("EBB_INSTANCE".into(), place.instance.to_string());
        env.insert("EBB_ROLE".into(), role.name.clone());
        env.insert("EBB_POD".into(), name.to_owned());
        for (peer, ips) in service.roles.iter().zip(place.ips) {
            let addrs: Vec<String> = ips.iter().map(|ip| format!("{ip}:{}", peer.port)).collect();
            env.insert(peers_variable(&peer.name), addrs.join(","));
        }
    }
    Spec {
        exe: options.exe.display().to_string(),
        queue_proxy: role.entry.then(|| queue_proxy_args(options, service, name, ip)),
        command: role.command.clone(),
        env,
        grace_ms: options.grace_period.as_millis() as u64,
    }
}

/// Runs `ebb pod-supervisor` for `spec` in its own process group, with pipes on its stdin (the lifeline) and
/// its stdout (its reports).
fn spawn_supervisor(exe: &Path, spec: &Spec) -> Result<Child, String> {
    let spec_json =
        serde_json::to_string(spec).map_err(|err| format!("cannot encode the pod's spec: {err}"))?;
    let mut command = Command::new(exe);
    command
        .arg("pod-supervisor")
        .arg("--spec")
        .arg(spec_json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0);
    command.spawn().map_err(|err| format!("cannot run {}: {err}", exe.display()))
}

/// Reads a supervisor's reports until its stdout closes; returns the last reason it gave for the pod's end.
async fn read_reports(
    stdout: ChildStdout,
    me: Weak<PodManager>,
    service: String,
    name: String,
) -> Option<String> {
    let mut lines = BufReader::new(stdout).lines();
    let mut reason = None;
    while let Ok(Some(line)) = lines.next_line().await {
        // Anything else is the command's own output.
        let Ok(report) = serde_json::from_str::<Report>(&line) else { continue };
        let Some(me) = me.upgrade() else { break };
        match report {
            Report::Group { ebb_group } => me.pod_group(&service, &name, ebb_group),
            Report::Addrs(addrs) => me.pod_bound(&service, &name, addrs),
            Report::Exit { ebb_exit } => reason = Some(ebb_exit),
        }
    }
    reason
}

/// How often a role pod's port is tried while it starts: loopback connections cost microseconds, and this is
/// most of the delay between a prefill pod listening and its instance joining the rotation.
const ROLE_PROBE_STARTING: Duration = Duration::from_millis(5);

/// How often a ready role pod's port is tried, to notice one that stopped listening without exiting.
const ROLE_PROBE_READY: Duration = Duration::from_secs(1);

/// Probes a role pod's port until the pod is gone: ready while it accepts connections.
async fn probe_role_pod(me: Weak<PodManager>, service: String, name: String, addr: SocketAddr) {
    let mut ready = false;
    loop {
        let connected = tokio::time::timeout(ROLE_PROBE_READY, tokio::net::TcpStream::connect(addr))
            .await
            .is_ok_and(|c| c.is_ok());
        let Some(manager) = me.upgrade() else { return };
        let live = if connected == ready {
            manager.pod_live(&service, &name)
        } else {
            ready = connected;
            manager.role_pod_ready(&service, &name, ready)
        };
        drop(manager);
        if !live {
            return;
        }
        tokio::time::sleep(if ready { ROLE_PROBE_READY } else { ROLE_PROBE_STARTING }).await;
    }
}

/// SIGKILL to a process group; ESRCH (already gone) is fine. Groups are killed as soon as their supervisor
/// exits, far too soon for the kernel to have handed their ids to new processes.
fn kill_group(group: i32) {
    if group > 1 {
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
}

/// Asks a pod's supervisor to drain and stop it.
fn terminate(pod: &mut Pod) {
    if pod.terminating {
        return;
    }
    pod.terminating = true;
    if let Some(pid) = pod.pid {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    tracing::info!(pod = pod.name, "pod terminating (draining)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_supervisor_runs_the_queue_proxy_and_the_command_on_the_pods_address() {
        let service = super::super::config::default_demo(Path::new("/bin/ebb")).services.remove(0);
        let options =
            PodOptions { exe: "/bin/ebb".into(), grace_period: Duration::from_secs(3), log_format: "json" };
        let ip = Ipv4Addr::new(127, 0, 0, 7);
        let ips = [vec![ip]];
        let place = Place { instance: 1, role: 0, slot: 0, ips: &ips };
        let spec = supervisor_spec(&options, &service, "demo-1", ip, &place);
        assert_eq!((spec.exe.as_str(), spec.grace_ms), ("/bin/ebb", 3000));
        assert_eq!(spec.env["HOST"], "127.0.0.7");
        let port = service.entry().port;
        assert_eq!(spec.env["PORT"], port.to_string());
        assert!(
            !spec.env.contains_key("EBB_ROLE"),
            "a plain service's pods are not told roles: {:?}",
            spec.env
        );
        let qp = spec.queue_proxy.as_ref().unwrap();
        let after = |flag: &str| qp.iter().position(|a| a == flag).map(|i| &qp[i + 1]);
        assert_eq!(after("--upstream").unwrap(), &format!("127.0.0.7:{port}"));
        assert_eq!(after("--bind-address").unwrap(), "127.0.0.7");
        assert_eq!(after("--pod-name").unwrap(), "demo-1");
        assert_eq!(after("--drain-deadline").unwrap(), "3000ms");
        assert!(after("--container-concurrency").is_some(), "the data-plane settings follow");
    }

    #[test]
    fn a_role_pod_runs_its_command_alone_and_is_told_its_instance_and_peers() {
        let text = "services:\n  - name: chat\n    port: 8000\n    env: {A: service}\n    roles:\n      - name: \
                    prefill-x\n        command: p\n        count: 2\n        env: {A: role}\n      - name: decode\n        \
                    command: d\n        entry: true\n        port: 9000\n";
        let service = super::super::config::parse("ebb.yaml", text).unwrap().services.remove(0);
        let options =
            PodOptions { exe: "/bin/ebb".into(), grace_period: Duration::from_secs(3), log_format: "json" };
        let ip = |n| Ipv4Addr::new(127, 0, 0, n);
        let ips = [vec![ip(2), ip(3)], vec![ip(4)]];
        let prefill = supervisor_spec(
            &options,
            &service,
            "chat-1-prefill-x-2",
            ip(3),
            &Place { instance: 1, role: 0, slot: 1, ips: &ips },
        );
        assert!(prefill.queue_proxy.is_none(), "no queue-proxy for a role other than the entry");
        assert_eq!(prefill.command, super::super::config::Command::Shell("p".into()));
        let env = |k: &str| prefill.env.get(k).map(String::as_str);
        assert_eq!((env("HOST"), env("PORT"), env("A")), (Some("127.0.0.3"), Some("8000"), Some("role")));
        assert_eq!(
            (env("EBB_SERVICE"), env("EBB_INSTANCE"), env("EBB_ROLE")),
            (Some("chat"), Some("1"), Some("prefill-x"))
        );
        assert_eq!(env("EBB_POD"), Some("chat-1-prefill-x-2"));
        assert_eq!(env("EBB_PEERS_PREFILL_X"), Some("127.0.0.2:8000,127.0.0.3:8000"));
        assert_eq!(env("EBB_PEERS_DECODE"), Some("127.0.0.4:9000"));

        let decode = supervisor_spec(
            &options,
            &service,
            "chat-1-decode-3",
            ip(4),
            &Place { instance: 1, role: 1, slot: 0, ips: &ips },
        );
        let qp = decode.queue_proxy.expect("the entry has the queue-proxy");
        assert_eq!(qp[qp.iter().position(|a| a == "--upstream").unwrap() + 1], "127.0.0.4:9000");
        assert_eq!(decode.env["EBB_PEERS_PREFILL_X"], "127.0.0.2:8000,127.0.0.3:8000");
        assert_eq!(decode.env["A"], "service");
    }
}
