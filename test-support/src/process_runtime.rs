//! A [`PodRuntime`] that runs pods for real: each container of an emulated pod is a process of the `ebb`
//! binary under test, as an image of it would run them:
//!
//! - images `ghcr.io/ebb-dev/ebb*` run; `command: [queue-proxy|activator|autoscaler, ...]` becomes
//!   `ebb <that> ...`, `command: [ebb, ...]` becomes `ebb ...`, no command is the image's entrypoint (`ebb`).
//!   A container of any other image cannot be pulled: it waits with `ErrImagePull` and the pod never becomes
//!   Ready;
//! - env is resolved like a kubelet does it: `value` with `$(VAR)` expansion of the variables before it,
//!   `fieldRef` (metadata.name/namespace/uid/labels/annotations, status.podIP/hostIP, spec.nodeName and
//!   spec.serviceAccountName); `command` and `args` are expanded too. Other sources are refused (the pod fails);
//! - the pod's network is imposed: its "network namespace" is its loopback address, so every listening
//!   address becomes the pod IP (`EBB_BIND_ADDRESS`, `EBB_INGEST_ADDRESS`, `EBB_METRICS_ADDRESS`,
//!   `EBB_WEBHOOK_ADDRESS`, `EBB_DEMO_LISTEN`, keeping the ports asked for) and `127.0.0.1`/`localhost` in `EBB_UPSTREAM` becomes
//!   the pod IP;
//! - a pod with `serviceAccountName` gets that account's token as a kubelet mounts it: a kubeconfig holding
//!   the token and the API server's address (`KUBECONFIG`, `EBB_KUBECONFIG`) and the token file
//!   (`EBB_TOKEN_FILE`, where the activator reads the token it shows the autoscalers), so the RBAC of the
//!   manifests is what the components get;
//! - readiness comes from each container's `startupProbe` and `readinessProbe` (httpGet with headers, port
//!   number or name; tcpSocket), with their thresholds and periods (a period may be shortened with
//!   [`ProcessRuntime::probe_period_cap`], never below 100 ms); the pod is Ready when every container is;
//! - on deletion each container's `preStop` httpGet hook runs, then SIGTERM, then SIGKILL once the grace
//!   period is over.
//!
//! Each container's stdout and stderr go to `DIR/NAMESPACE_POD_CONTAINER.log`; [`RuntimeLogs::tails`] prints
//! them (tests do so when they fail). Processes are spawned through a [`Supervisor`], so they die with the
//! test binary however it ends; they are killed when the runtime is dropped (with its emulator).
//! Containers that exit on their own are not restarted: they are recorded ([`RuntimeLogs::exits`]) and the
//! pod stops being Ready, so a test can assert that no component crashed.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, Probe, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Api, Client};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::k8s::{ControlPlane, kubeconfig_yaml};
use super::node::{BoxFuture, PodRuntime, RunningPod};
use super::supervisor::Supervisor;

/// Images whose containers run (as the `ebb` binary under test).
pub const EBB_IMAGE_PREFIX: &str = "ghcr.io/ebb-dev/ebb";
/// The thin binaries of the image, each run as `ebb <name>`.
const THIN_BINARIES: [&str; 3] = ["queue-proxy", "activator", "autoscaler"];
/// The shortest probe period.
const MIN_PROBE_PERIOD: Duration = Duration::from_millis(100);
/// How often the probe loop wakes up to see which probes are due and whether processes exited.
const TICK: Duration = Duration::from_millis(50);

/// See the module documentation.
pub struct ProcessRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    ebb: PathBuf,
    control_plane: &'static ControlPlane,
    dir: PathBuf,
    supervisor: Supervisor,
    probe_period_cap: Option<Duration>,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    /// The processes of each running pod.
    pods: Mutex<HashMap<PodKey, Arc<Vec<Proc>>>>,
    exits: Arc<Mutex<Vec<String>>>,
}

/// A pod's namespace and name.
type PodKey = (String, String);
/// Environment variables in the order they are defined.
type Env = Vec<(String, String)>;

/// One container's process.
struct Proc {
    container: Container,
    child: Mutex<Child>,
    /// Set once the process is known to have exited.
    exited: Mutex<Option<ExitStatus>>,
    /// Killed by the test ([`RuntimeLogs::kill`]): its exit is expected, not recorded as a crash.
    killed: std::sync::atomic::AtomicBool,
}

/// What a test keeps of a [`ProcessRuntime`] once the runtime went into its emulator: the logs and the
/// unexpected exits.
#[derive(Clone)]
pub struct RuntimeLogs {
    dir: PathBuf,
    exits: Arc<Mutex<Vec<String>>>,
    /// The runtime's pods, for [`RuntimeLogs::kill`] (weak: the emulator owns the runtime).
    inner: std::sync::Weak<Inner>,
}

impl RuntimeLogs {
    /// The directory of the containers' logs (removed at the end unless `EBB_KUBE_KEEP=1`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Containers that exited while their pod was not being deleted: `NS/POD/CONTAINER exited (STATUS)`.
    pub fn exits(&self) -> Vec<String> {
        self.exits.lock().unwrap().clone()
    }

    /// Kills container `container` of pod `namespace/name` with SIGKILL, as a crash of the process (or of
    /// its node) would: no preStop hook, no SIGTERM, the pod stays as it is until its probes fail. Like
    /// every container here it is not restarted. Its exit is not counted in [`RuntimeLogs::exits`]. Returns
    /// the pid killed.
    pub fn kill(&self, namespace: &str, name: &str, container: &str) -> Result<u32, String> {
        let inner = self.inner.upgrade().ok_or("the runtime is gone (its emulator was dropped)")?;
        let procs = inner
            .pods
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| format!("pod {namespace}/{name} does not run on this runtime"))?;
        let proc = procs
            .iter()
            .find(|p| p.container.name == container)
            .ok_or_else(|| format!("pod {namespace}/{name} has no container {container}"))?;
        proc.killed.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut child = proc.child.lock().unwrap();
        let pid = child.id();
        child.kill().map_err(|e| format!("killing {namespace}/{name}/{container} (pid {pid}): {e}"))?;
        let status = child.wait().map_err(|e| format!("waiting for pid {pid}: {e}"))?;
        *proc.exited.lock().unwrap() = Some(status);
        Ok(pid)
    }

    /// The last `lines` lines of every container's log whose file name contains `filter`, each under a
    /// header naming the file.
    pub fn tails(&self, filter: &str, lines: usize) -> String {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| {
            p.extension().is_some_and(|e| e == "log")
                && p.file_name().is_some_and(|n| n.to_string_lossy().contains(filter))
        });
        files.sort();
        let mut out = String::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let all: Vec<_> = text.lines().collect();
            out += &format!("--- last lines of {}:\n", file.display());
            for line in &all[all.len().saturating_sub(lines)..] {
                out += line;
                out += "\n";
            }
        }
        out
    }
}

impl ProcessRuntime {
    /// A runtime running `ebb` (the binary under test: [`crate::paths::ebb`]) against `control_plane`, whose admin kubeconfig and ServiceAccount tokens it uses. Logs go to
    /// a fresh directory, printed on stderr.
    pub fn new(ebb: impl Into<PathBuf>, control_plane: &'static ControlPlane) -> ProcessRuntime {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = control_plane.dir().join(format!("pods-{n}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        eprintln!("pod logs in {}", dir.display());
        let supervisor = Supervisor::start(None).expect("start a supervisor (bash) for the pods' processes");
        ProcessRuntime {
            inner: Arc::new(Inner {
                ebb: ebb.into(),
                control_plane,
                dir,
                supervisor,
                probe_period_cap: None,
                http: HttpClient::builder(TokioExecutor::new()).build_http(),
                pods: Mutex::new(HashMap::new()),
                exits: Arc::default(),
            }),
        }
    }

    /// Probes at most every `cap` (at least 100 ms), however long the probes' `periodSeconds`: pods become
    /// Ready sooner than in a cluster, which keeps the tests short. Call before the runtime is shared.
    pub fn probe_period_cap(mut self, cap: Duration) -> ProcessRuntime {
        Arc::get_mut(&mut self.inner).expect("configured before use").probe_period_cap =
            Some(cap.max(MIN_PROBE_PERIOD));
        self
    }

    /// The logs and unexpected exits, for the test to read later.
    pub fn logs(&self) -> RuntimeLogs {
        RuntimeLogs {
            dir: self.inner.dir.clone(),
            exits: self.inner.exits.clone(),
            inner: Arc::downgrade(&self.inner),
        }
    }
}

impl PodRuntime for ProcessRuntime {
    fn start(&self, pod: RunningPod) -> BoxFuture<Result<(), String>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.start(pod).await })
    }

    fn stop(&self, pod: RunningPod, grace: Duration) -> BoxFuture<()> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.stop(pod, grace).await })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut *self.pods.lock().unwrap());
        let mut children: Vec<Child> = Vec::new();
        for procs in pods.into_values() {
            if let Ok(procs) = Arc::try_unwrap(procs) {
                children.extend(procs.into_iter().map(|p| p.child.into_inner().unwrap()));
            }
        }
        self.supervisor.shutdown(&mut children);
    }
}

impl Inner {
    async fn start(self: Arc<Self>, pod: RunningPod) -> Result<(), String> {
        let spec = pod.pod.spec.clone().ok_or("the pod has no spec")?;
        let (namespace, name) = (pod.namespace().to_string(), pod.name().to_string());
        // Images that cannot be "pulled": nothing of the pod runs, and it never becomes Ready.
        let foreign: Vec<_> = spec
            .containers
            .iter()
            .filter(|c| !c.image.as_deref().unwrap_or_default().starts_with(EBB_IMAGE_PREFIX))
            .collect();
        if !foreign.is_empty() {
            for c in foreign {
                let image = c.image.clone().unwrap_or_default();
                let message = format!(
                    "Failed to pull image \"{image}\": the node emulator runs only {EBB_IMAGE_PREFIX} images"
                );
                pod.set_waiting(&c.name, "ErrImagePull", &message).await?;
            }
            return Ok(());
        }
        // The ServiceAccount's token, as a kubelet mounts it.
        let mut mounted: Vec<(String, String)> = Vec::new();
        if let Some(account) = spec.service_account_name.clone().filter(|a| !a.is_empty()) {
            let token =
                service_account_token(pod.client().clone(), namespace.clone(), account.clone()).await?;
            let token_file = self.dir.join(format!("{namespace}_{name}.token"));
            std::fs::write(&token_file, &token)
                .map_err(|e| format!("writing {}: {e}", token_file.display()))?;
            let kubeconfig = self.dir.join(format!("{namespace}_{name}.kubeconfig"));
            let user = format!("system:serviceaccount:{namespace}:{account}");
            let yaml = kubeconfig_yaml(self.control_plane.server(), &user, &token);
            std::fs::write(&kubeconfig, yaml)
                .map_err(|e| format!("writing {}: {e}", kubeconfig.display()))?;
            let path = kubeconfig.display().to_string();
            mounted.push(("KUBECONFIG".into(), path.clone()));
            mounted.push(("EBB_KUBECONFIG".into(), path));
            mounted.push(("EBB_TOKEN_FILE".into(), token_file.display().to_string()));
        }
        let mut procs = Vec::new();
        for container in &spec.containers {
            let (argv, env) = container_command(&pod, container)?;
            let log_path = self.dir.join(format!("{namespace}_{name}_{}.log", container.name));
            let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
            let err = log.try_clone().map_err(|e| e.to_string())?;
            let mut command = Command::new(&self.ebb);
            command.args(&argv).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
            command.env("HOSTNAME", &name);
            for (k, v) in &mounted {
                if !env.iter().any(|(key, _)| key == k) {
                    command.env(k, v);
                }
            }
            command.envs(env.iter().map(|(k, v)| (k, v)));
            command.stdin(Stdio::null()).stdout(log).stderr(err).current_dir(&self.dir);
            let child = self.supervisor.spawn(&mut command).map_err(|e| {
                format!("cannot run {} {argv:?} for container {}: {e}", self.ebb.display(), container.name)
            })?;
            procs.push(Proc {
                container: container.clone(),
                child: Mutex::new(child),
                exited: Mutex::new(None),
                killed: Default::default(),
            });
        }
        let procs = Arc::new(procs);
        self.pods.lock().unwrap().insert((namespace, name), procs.clone());
        pod.spawn(self.clone().probe_loop(pod.clone(), procs));
        Ok(())
    }

    /// Probes the containers until the pod is deleted, writing Ready whenever the pod's readiness changes.
    async fn probe_loop(self: Arc<Self>, pod: RunningPod, procs: Arc<Vec<Proc>>) {
        let started = Instant::now();
        let mut states: Vec<ContainerProbes> = procs
            .iter()
            .map(|p| ContainerProbes::new(&p.container, started, self.probe_period_cap))
            .collect();
        let mut written: Option<bool> = None;
        loop {
            let now = Instant::now();
            let checks = procs.iter().zip(states.iter_mut()).map(|(proc, state)| {
                let this = &self;
                let pod = &pod;
                async move {
                    if proc.exited.lock().unwrap().is_some() {
                        state.ready = false;
                        return;
                    }
                    if let Some(status) = proc.child.lock().unwrap().try_wait().ok().flatten() {
                        *proc.exited.lock().unwrap() = Some(status);
                        if proc.killed.load(std::sync::atomic::Ordering::SeqCst) {
                            state.ready = false;
                            return;
                        }
                        this.exits.lock().unwrap().push(format!(
                            "{}/{}/{} exited ({status})",
                            pod.namespace(),
                            pod.name(),
                            proc.container.name
                        ));
                        state.ready = false;
                        return;
                    }
                    state.tick(now, |probe| this.probe(pod, &proc.container, probe)).await;
                }
            });
            futures::future::join_all(checks).await;
            let ready = states.iter().all(|s| s.ready);
            if written != Some(ready) {
                match pod.set_ready(ready).await {
                    Ok(()) => written = Some(ready),
                    Err(e) => {
                        eprintln!("process runtime: readiness of {}/{}: {e}", pod.namespace(), pod.name())
                    }
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// Runs one probe of `container`: httpGet (2xx and 3xx pass) or tcpSocket; anything else passes.
    async fn probe(&self, pod: &RunningPod, container: &Container, probe: Probe) -> bool {
        let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        let attempt = async {
            if let Some(get) = &probe.http_get {
                let addr = http_address(pod, container, get.host.as_deref(), &get.port)?;
                let status = self.http_get(addr, get).await?;
                Some((200..400).contains(&status))
            } else if let Some(tcp) = &probe.tcp_socket {
                let addr = http_address(pod, container, tcp.host.as_deref(), &tcp.port)?;
                Some(tokio::net::TcpStream::connect(addr).await.is_ok())
            } else {
                Some(true)
            }
        };
        tokio::time::timeout(timeout, attempt).await.ok().flatten().unwrap_or(false)
    }

    /// GETs `action` at `addr` and returns the status code; `None` if no answer came.
    async fn http_get(&self, addr: SocketAddr, action: &HTTPGetAction) -> Option<u16> {
        let path = action.path.as_deref().unwrap_or("/");
        let mut request = http::Request::get(format!("http://{addr}{path}"));
        for header in action.http_headers.iter().flatten() {
            request = request.header(&header.name, &header.value);
        }
        let response = self.http.request(request.body(Empty::new()).ok()?).await.ok()?;
        let status = response.status().as_u16();
        // Read the body so the connection can be reused.
        let _ = response.into_body().collect().await;
        Some(status)
    }

    /// Stops a pod's processes: each container's preStop hook, SIGTERM, then SIGKILL when `grace` is over.
    async fn stop(self: Arc<Self>, pod: RunningPod, grace: Duration) {
        let key = (pod.namespace().to_string(), pod.name().to_string());
        let Some(procs) = self.pods.lock().unwrap().remove(&key) else { return };
        let deadline = tokio::time::Instant::now() + grace;
        let stops = procs.iter().map(|proc| {
            let (this, pod) = (&self, &pod);
            async move {
                let hook = proc.container.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
                if let Some(get) = hook.and_then(|h| h.http_get.as_ref())
                    && let Some(addr) = http_address(pod, &proc.container, get.host.as_deref(), &get.port)
                {
                    let _ = tokio::time::timeout_at(deadline, this.http_get(addr, get)).await;
                }
                let pid = proc.child.lock().unwrap().id();
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                loop {
                    if proc.exited.lock().unwrap().is_some() {
                        break;
                    }
                    if let Some(status) = proc.child.lock().unwrap().try_wait().ok().flatten() {
                        *proc.exited.lock().unwrap() = Some(status);
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        let mut child = proc.child.lock().unwrap();
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    tokio::time::sleep(TICK).await;
                }
            }
        });
        futures::future::join_all(stops).await;
    }
}

/// A container's probes and what they found so far.
struct ContainerProbes {
    startup: Option<ProbeState>,
    readiness: Option<ProbeState>,
    started: bool,
    ready: bool,
}

/// One probe's schedule and counters.
struct ProbeState {
    probe: Probe,
    next: Instant,
    period: Duration,
    successes: i32,
    failures: i32,
}

impl ProbeState {
    fn new(probe: &Probe, started: Instant, cap: Option<Duration>) -> ProbeState {
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        let period = cap.map_or(period, |cap| period.min(cap)).max(MIN_PROBE_PERIOD);
        let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        ProbeState { probe: probe.clone(), next: started + delay, period, successes: 0, failures: 0 }
    }

    /// Runs the probe if due; `Some(passing)` when its result changes what it says.
    async fn run<F>(&mut self, now: Instant, current: bool, probe: impl FnOnce(Probe) -> F) -> Option<bool>
    where
        F: Future<Output = bool>,
    {
        if now < self.next {
            return None;
        }
        self.next = now + self.period;
        if probe(self.probe.clone()).await {
            self.successes += 1;
            self.failures = 0;
            (!current && self.successes >= self.probe.success_threshold.unwrap_or(1).max(1)).then_some(true)
        } else {
            self.failures += 1;
            self.successes = 0;
            (current && self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1)).then_some(false)
        }
    }
}

impl ContainerProbes {
    fn new(container: &Container, started: Instant, cap: Option<Duration>) -> ContainerProbes {
        let startup = container.startup_probe.as_ref().map(|p| ProbeState::new(p, started, cap));
        let readiness = container.readiness_probe.as_ref().map(|p| ProbeState::new(p, started, cap));
        let started_already = startup.is_none();
        ContainerProbes {
            ready: started_already && readiness.is_none(),
            started: started_already,
            startup,
            readiness,
        }
    }

    /// One round: the startup probe until it passes, then the readiness probe (none: Ready once started).
    async fn tick<F>(&mut self, now: Instant, probe: impl Fn(Probe) -> F)
    where
        F: Future<Output = bool>,
    {
        if !self.started {
            if let Some(state) = &mut self.startup
                && let Some(true) = state.run(now, false, &probe).await
            {
                self.started = true;
                if self.readiness.is_none() {
                    self.ready = true;
                }
            }
            return;
        }
        if let Some(state) = &mut self.readiness
            && let Some(ready) = state.run(now, self.ready, &probe).await
        {
            self.ready = ready;
        }
    }
}

/// The address a probe or hook of `container` reaches: `host` or the pod IP, and the port by number or by
/// the name of one of the container's ports.
fn http_address(
    pod: &RunningPod,
    container: &Container,
    host: Option<&str>,
    port: &IntOrString,
) -> Option<SocketAddr> {
    let port = match port {
        IntOrString::Int(n) => u16::try_from(*n).ok()?,
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok())?,
        },
    };
    let ip: IpAddr = match host.filter(|h| !h.is_empty()) {
        Some(host) => host.parse().ok()?,
        None => IpAddr::V4(pod.ip),
    };
    Some(SocketAddr::new(ip, port))
}

/// How long a pod waits for its ServiceAccount's token Secret (the controller manager issues it).
const TOKEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The token of ServiceAccount `namespace/account`, from the Secret the controller manager made for it
/// (Kubernetes 1.20), waiting for it to exist as a kubelet waits for a volume to be mountable.
async fn service_account_token(client: Client, namespace: String, account: String) -> Result<String, String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let deadline = Instant::now() + TOKEN_TIMEOUT;
    let mut last;
    loop {
        last = match accounts.get_opt(&account).await {
            Err(e) => e.to_string(),
            Ok(None) => "no such ServiceAccount".into(),
            Ok(Some(sa)) => match sa.secrets.unwrap_or_default().into_iter().find_map(|s| s.name) {
                None => "no token Secret yet".into(),
                Some(secret) => match secrets.get_opt(&secret).await {
                    Err(e) => e.to_string(),
                    Ok(secret) => {
                        match secret.and_then(|s| s.data?.remove("token")).map(|t| String::from_utf8(t.0)) {
                            Some(Ok(token)) => return Ok(token),
                            _ => "the token Secret has no token yet".into(),
                        }
                    }
                },
            },
        };
        if Instant::now() >= deadline {
            return Err(format!("no token for ServiceAccount {namespace}/{account}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `ebb` arguments and the environment of `container`, resolved as a kubelet does, with the pod's
/// network imposed (module documentation).
pub fn container_command(pod: &RunningPod, container: &Container) -> Result<(Vec<String>, Env), String> {
    let what = format!("{}/{} container {}", pod.namespace(), pod.name(), container.name);
    let mut env: Vec<(String, String)> = Vec::new();
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(format!("{what}: envFrom is not supported by the node emulator"));
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let field = from.field_ref.as_ref().ok_or_else(|| {
                    format!(
                        "{what}: env {}: only value and fieldRef are supported by the node emulator",
                        var.name
                    )
                })?;
                field_value(&pod.pod, pod.ip.into(), &field.field_path).ok_or_else(|| {
                    format!("{what}: env {}: unsupported fieldRef {}", var.name, field.field_path)
                })?
            }
            (Some(value), None) => expand(value, &env),
            (None, None) => String::new(),
        };
        set(&mut env, &var.name, value);
    }
    let expand_all = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter().flatten().map(|s| expand(s, &env)).collect()
    };
    let command = expand_all(&container.command);
    let args = expand_all(&container.args);
    let mut argv: Vec<String> = match command.split_first() {
        None => args,
        Some((program, rest)) => {
            let program = program.rsplit('/').next().unwrap_or(program);
            let mut argv = match program {
                "ebb" => Vec::new(),
                p if THIN_BINARIES.contains(&p) => vec![p.to_string()],
                other => return Err(format!("{what}: the image has no program {other:?}")),
            };
            argv.extend(rest.iter().cloned());
            argv.extend(args);
            argv
        }
    };
    if argv.is_empty() {
        argv.push("--help".into());
    }
    let ip = pod.ip;
    let port_of = |env: &[(String, String)], key: &str, default: u16| -> u16 {
        get(env, key).and_then(|v| v.rsplit(':').next()?.parse().ok()).unwrap_or(default)
    };
    match argv[0].as_str() {
        "queue-proxy" | "activator" => set(&mut env, "EBB_BIND_ADDRESS", ip.to_string()),
        "autoscaler" => {
            let ingest = port_of(&env, "EBB_INGEST_ADDRESS", ebb_config::names::AUTOSCALER_INGEST_PORT);
            let metrics = port_of(&env, "EBB_METRICS_ADDRESS", ebb_config::names::AUTOSCALER_METRICS_PORT);
            set(&mut env, "EBB_INGEST_ADDRESS", format!("{ip}:{ingest}"));
            set(&mut env, "EBB_METRICS_ADDRESS", format!("{ip}:{metrics}"));
            if get(&env, "EBB_WEBHOOK_ADDRESS").is_some() {
                let webhook = port_of(&env, "EBB_WEBHOOK_ADDRESS", 8443);
                set(&mut env, "EBB_WEBHOOK_ADDRESS", format!("{ip}:{webhook}"));
            }
        }
        "demo-model" => {
            let first_port = container.ports.iter().flatten().next().map(|p| p.container_port as u16);
            let port = port_of(&env, "EBB_DEMO_LISTEN", first_port.unwrap_or(8080));
            set(&mut env, "EBB_DEMO_LISTEN", format!("{ip}:{port}"));
        }
        _ => {}
    }
    if let Some(upstream) = get(&env, "EBB_UPSTREAM") {
        let rewritten = match upstream.rsplit_once(':') {
            Some(("127.0.0.1" | "localhost", port)) => format!("{ip}:{port}"),
            _ if upstream == "127.0.0.1" || upstream == "localhost" => ip.to_string(),
            _ => upstream.to_string(),
        };
        set(&mut env, "EBB_UPSTREAM", rewritten);
    }
    Ok((argv, env))
}

fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Sets `key` (a later definition replaces an earlier one, as in a kubelet).
fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value));
}

/// A kubelet's `$(VAR)` expansion: defined variables are replaced, undefined references are kept as they
/// are, and `$$` is a literal `$`.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out += &rest[..at];
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match get(env, name) {
                Some(value) => out += value,
                None => out += &format!("$({name})"),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out + rest
}

/// The value of a Downward API `fieldPath` for `pod` at `ip`.
fn field_value(pod: &Pod, ip: IpAddr, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(key.to_string())
    };
    Some(match path {
        "metadata.name" => meta.name.clone()?,
        "metadata.namespace" => meta.namespace.clone()?,
        "metadata.uid" => meta.uid.clone()?,
        "status.podIP" => ip.to_string(),
        "status.hostIP" => "127.0.0.1".into(),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone()?,
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone().unwrap_or_default(),
        _ => {
            if let Some(key) = keyed("metadata.labels['") {
                meta.labels.as_ref()?.get(&key).cloned().unwrap_or_default()
            } else if let Some(key) = keyed("metadata.annotations['") {
                meta.annotations.as_ref()?.get(&key).cloned().unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expansion_is_a_kubelets() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("a=$(A) b=$(B) $$(A) $ $(", &env), "a=x b=$(B) $(A) $ $(");
    }
}
