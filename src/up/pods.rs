//! Local pods: each is an `ebb pod-supervisor` process (its own process group) running a queue-proxy on its
//! own loopback address 127.0.0.N and the service's command with `HOST=127.0.0.N` and `PORT`. The manager keeps
//! each service at the replicas the autoscaler asked for (replacing pods that die), tells the activator the
//! pods (probed before use) and tells the autoscaler which are ready and where their stats are.
//!
//! A pod that dies or cannot start is replaced after a delay ([`Backoff`]); while a service keeps failing, the
//! activator is told its pods are blocked, so waiting requests fail at once naming why. When a supervisor
//! exits, the process groups it reported are killed, so nothing outlives a supervisor killed with SIGKILL.

use std::collections::{BTreeMap, HashMap};
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
    ip: Ipv4Addr,
    pid: Option<u32>,
    addrs: Option<ProxyAddrs>,
    started: Instant,
    /// Since when the activator has found it serving.
    ready_since: Option<Instant>,
    terminating: bool,
    /// The process groups its supervisor reported (the queue-proxy's and the command's).
    groups: Vec<i32>,
    /// Never written: dropping it (or `ebb up` dying) closes the supervisor's stdin, which stops the pod.
    _lifeline: Option<ChildStdin>,
}

#[derive(Debug)]
struct ServiceState {
    spec: Service,
    want: u32,
    pods: Vec<Pod>,
    next: u64,
    backoff: Backoff,
    /// A timer will reconcile the service when its backoff delay is over.
    retry_scheduled: bool,
}

impl ServiceState {
    fn live(&self) -> u32 {
        self.pods.iter().filter(|p| !p.terminating).count() as u32
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

    /// Sets a service's replicas and starts or stops pods to match.
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
        let mut to_start = 0;
        {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return };
            let live = state.live();
            if live < state.want {
                // After a failure, new pods wait for the backoff delay (a timer reconciles then).
                if state.backoff.waiting(Instant::now()).is_none() {
                    to_start = state.want - live;
                }
            } else if live > state.want {
                // Stop the youngest pods first: not yet ready ones are the cheapest to lose.
                let mut excess = live - state.want;
                for pod in state.pods.iter_mut().rev().filter(|p| !p.terminating) {
                    if excess == 0 {
                        break;
                    }
                    terminate(pod);
                    excess -= 1;
                }
            }
        }
        for _ in 0..to_start {
            if let Err(reason) = self.start_pod(service) {
                tracing::error!(service, "cannot start a pod: {reason}");
                if let Some(state) = self.services.locked().get_mut(service) {
                    let delay = state.backoff.failed(Instant::now(), Failure::StartFailed, reason, None);
                    tracing::warn!(service, "next start in {delay:?}");
                }
                break;
            }
        }
        self.schedule_retry(service);
        self.publish(service);
    }

    /// Reconciles `service` again when its backoff delay is over, if pods are missing then.
    fn schedule_retry(&self, service: &str) {
        let at = {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return };
            if state.retry_scheduled || state.live() >= state.want {
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

    /// Starts one pod of `service`; `Err` says why it could not.
    fn start_pod(&self, service: &str) -> Result<(), String> {
        let (spec, name) = {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return Ok(()) };
            let name = format!("{}-{}", state.spec.name, state.next);
            state.next += 1;
            (state.spec.clone(), name)
        };
        let Some(ip) = self.pick_ip(spec.port) else {
            return Err(format!("no free loopback address 127.0.0.N where port {} can be bound", spec.port));
        };
        let supervisor = supervisor_spec(&self.options, &spec, &name, ip);
        match spawn_supervisor(&self.options.exe, &supervisor) {
            Ok(child) => {
                self.follow(service, name, ip, child);
                Ok(())
            }
            Err(err) => {
                self.release_ip(ip);
                Err(err)
            }
        }
    }

    /// Records a started pod and follows its supervisor: its reports, then its exit.
    fn follow(&self, service: &str, name: String, ip: Ipv4Addr, mut child: Child) {
        let pid = child.id();
        tracing::info!(service, pod = name, %ip, pid, "pod started");
        {
            let mut services = self.services.locked();
            let Some(state) = services.get_mut(service) else { return };
            state.pods.push(Pod {
                name: name.clone(),
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
            let pod = state.pods.remove(i);
            self.release_ip(pod.ip);
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

    /// Tells the activator and the autoscaler a service's pods.
    pub fn publish(&self, service: &str) {
        let infos: Vec<PodInfo> = {
            let services = self.services.locked();
            let Some(state) = services.get(service) else { return };
            let mut infos: Vec<PodInfo> = state
                .pods
                .iter()
                .filter_map(|p| {
                    p.addrs.map(|a| PodInfo { terminating: p.terminating, ..PodInfo::live(&p.name, a.data) })
                })
                .collect();
            // The pods waiting out a crash loop, as a cluster's pods in CrashLoopBackOff: blocked, no address.
            if let Some(reason) = state.backoff.blocked(Instant::now()) {
                for i in state.live()..state.want {
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

    /// Tells the autoscaler which pods are ready: those the activator's probe found serving.
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
                let live = s.live();
                let counts = PodCounts {
                    terminating: s.pods.len() as u32 - live,
                    restarts: s.backoff.restarts(),
                    blocked: s.backoff.blocked(now).filter(|_| live < s.want),
                    pods: s
                        .pods
                        .iter()
                        .filter_map(|p| Some((p.name.clone(), p.addrs?.data, p.terminating)))
                        .collect(),
                };
                (name.clone(), counts)
            })
            .collect()
    }
}

/// The queue-proxy's flags for pod `name` of `service` on `ip`: the pod's addresses and names, the local drain
/// and probe settings, and the service's data-plane settings.
fn queue_proxy_args(options: &PodOptions, service: &Service, name: &str, ip: Ipv4Addr) -> Vec<String> {
    let upstream = format!("{ip}:{}", service.port);
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

/// What the supervisor of pod `name` of `service` on `ip` runs: the queue-proxy, and the service's command
/// with `HOST` and `PORT`.
fn supervisor_spec(options: &PodOptions, service: &Service, name: &str, ip: Ipv4Addr) -> Spec {
    let mut env = service.env.clone();
    env.insert("HOST".into(), ip.to_string());
    env.insert("PORT".into(), service.port.to_string());
    Spec {
        exe: options.exe.display().to_string(),
        queue_proxy: queue_proxy_args(options, service, name, ip),
        command: service.command.clone(),
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
        let spec = supervisor_spec(&options, &service, "demo-1", Ipv4Addr::new(127, 0, 0, 7));
        assert_eq!((spec.exe.as_str(), spec.grace_ms), ("/bin/ebb", 3000));
        assert_eq!(spec.env["HOST"], "127.0.0.7");
        assert_eq!(spec.env["PORT"], service.port.to_string());
        let after =
            |flag: &str| spec.queue_proxy.iter().position(|a| a == flag).map(|i| &spec.queue_proxy[i + 1]);
        assert_eq!(after("--upstream").unwrap(), &format!("127.0.0.7:{}", service.port));
        assert_eq!(after("--bind-address").unwrap(), "127.0.0.7");
        assert_eq!(after("--pod-name").unwrap(), "demo-1");
        assert_eq!(after("--drain-deadline").unwrap(), "3000ms");
        assert!(after("--container-concurrency").is_some(), "the data-plane settings follow");
    }
}
