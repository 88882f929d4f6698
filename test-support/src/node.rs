//! A node emulator: the scheduler and kubelet of one fake Node, for a control plane that has neither.
//!
//! It creates the Node, watches pods (in given namespaces, optionally with a label selector), binds each
//! Pending one to its Node (`POST pods/NAME/binding`), gives it a loopback address 127.0.S.N of its own, and
//! writes the status a kubelet would: Running with that `podIP`, then Ready when the test says so
//! ([`Readiness`]) and, as a kubelet, only while every readiness gate of the pod's spec has its condition
//! True (conditions that others write, such as ebb's `ebb.dev/instance-ready`, are kept: the status is
//! written as a strategic merge patch, which merges conditions by type). When a pod is being deleted it stops it and finalizes it (delete with grace 0) after an
//! optional delay, and the address goes back to the pool.
//!
//! Containers are run by a [`PodRuntime`], told when a pod starts and stops. The default ([`NoopRuntime`])
//! runs nothing; [`super::process_runtime::ProcessRuntime`] runs each container as a real process bound to
//! the pod's address (spawned through a [`super::supervisor::Supervisor`], so none outlives the test) and
//! reports readiness from the containers' probes.
//!
//! The emulator's tasks run on the runtime of the test that starts it, and stop when it is dropped.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::task::AbortHandle;

use super::k8s::{ControlPlane, cleanup_blocking};

/// A boxed `Send` future, as [`PodRuntime`] and [`Readiness::Hook`] return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The first and last N of the loopback addresses 127.0.S.N given to pods.
const POOL_FIRST: u8 = 1;
const POOL_LAST: u8 = 254;

/// The third octet S of this process's pod addresses: one of 150 subnets picked by the process id, away from
/// 127.0.0.x (the control plane's, the tests' own and `ebb up`'s pods), so that test binaries running at the
/// same time (two checkouts on one machine) rarely hand out the same address.
fn pool_subnet() -> u8 {
    100 + (std::process::id() % 150) as u8
}

/// The free pod addresses of this test binary, shared by all its emulators (tests run in parallel and pods
/// of different tests must not share an address). Least recently freed first, so an address is reused as
/// late as possible.
static POOL: Mutex<Option<VecDeque<u8>>> = Mutex::new(None);

/// A pod address taken from the pool; it goes back when dropped.
#[derive(Debug)]
pub struct IpLease(Ipv4Addr);

impl IpLease {
    /// Takes the least recently used free address, if any is left.
    pub fn take() -> Option<IpLease> {
        let mut pool = POOL.lock().unwrap();
        let free = pool.get_or_insert_with(|| (POOL_FIRST..=POOL_LAST).collect());
        free.pop_front().map(|n| IpLease(Ipv4Addr::new(127, 0, pool_subnet(), n)))
    }

    /// The address.
    pub fn ip(&self) -> Ipv4Addr {
        self.0
    }
}

impl Drop for IpLease {
    fn drop(&mut self) {
        if let Some(free) = POOL.lock().unwrap().as_mut() {
            free.push_back(self.0.octets()[3]);
        }
    }
}

/// A pod the emulator has bound and started, as its [`PodRuntime`] and [`Readiness`] hooks see it.
#[derive(Clone)]
pub struct RunningPod {
    /// The pod as it was when it started.
    pub pod: Arc<Pod>,
    /// Its address (`status.podIP`).
    pub ip: Ipv4Addr,
    emulator: Arc<Inner>,
}

impl RunningPod {
    /// `metadata.namespace`.
    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    /// Writes Ready (or not Ready) into the pod's status, as a kubelet does after a readiness probe.
    pub async fn set_ready(&self, ready: bool) -> Result<(), String> {
        self.emulator.set_ready(self.namespace(), self.name(), ready).await
    }

    /// Marks a container as not running, `waiting` with `reason` (say `ErrImagePull`) and `message`, as a
    /// kubelet does when it cannot start it; the pod is Pending and never Ready while a container waits.
    pub async fn set_waiting(&self, container: &str, reason: &str, message: &str) -> Result<(), String> {
        let key = (self.namespace().to_string(), self.name().to_string());
        {
            let mut pods = self.emulator.pods.lock().unwrap();
            let tracked =
                pods.get_mut(&key).ok_or_else(|| format!("{}/{} is not on this node", key.0, key.1))?;
            tracked.waiting.insert(container.to_string(), (reason.to_string(), message.to_string()));
            tracked.ready = false;
        }
        self.emulator
            .write_status(&key, None)
            .await
            .map_err(|e| format!("status of {}/{}: {e}", key.0, key.1))
    }

    /// The emulator's (admin) client, bound to the runtime of the test that started the emulator.
    pub fn client(&self) -> &Client {
        &self.emulator.client
    }

    /// Runs `task` for as long as the pod runs: it is aborted when the pod's deletion is requested (before
    /// [`PodRuntime::stop`] is called), when the pod is gone, or when the emulator is dropped. For a
    /// runtime's per-pod loops (readiness probes). Does nothing if the pod is no longer held.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let key = (self.namespace().to_string(), self.name().to_string());
        let mut pods = self.emulator.pods.lock().unwrap();
        match pods.get_mut(&key) {
            Some(tracked)
                if !tracked.terminating
                    && tracked.uid == self.pod.metadata.uid.clone().unwrap_or_default() =>
            {
                tracked.tasks.push(tokio::spawn(task).abort_handle());
            }
            _ => {}
        }
    }
}

/// The emulator's extension point for running a pod's containers. Both methods have no-op
/// defaults.
pub trait PodRuntime: Send + Sync + 'static {
    /// Starts the pod, once it is bound and its status says Running with its address (not Ready yet).
    /// `Err` marks the pod Failed with the message. Readiness follows [`Readiness`]; with
    /// [`Readiness::Manual`] the runtime may call [`RunningPod::set_ready`] itself (say, when a readiness
    /// probe passes), at any time and as often as the state changes.
    fn start(&self, pod: RunningPod) -> BoxFuture<Result<(), String>> {
        let _ = pod;
        Box::pin(async { Ok(()) })
    }

    /// Stops the pod: called once its deletion was requested, before it is finalized, with the deletion
    /// grace period. The pod is deleted when this returns (after the emulator's finalize delay). When the
    /// emulator is dropped, this is not called: a runtime must stop what it runs when it is dropped too.
    fn stop(&self, pod: RunningPod, grace: Duration) -> BoxFuture<()> {
        let _ = (pod, grace);
        Box::pin(async {})
    }
}

/// A runtime that runs nothing: pods exist only as API objects with addresses.
pub struct NoopRuntime;

impl PodRuntime for NoopRuntime {}

/// When a started pod becomes Ready.
#[derive(Clone)]
pub enum Readiness {
    /// As soon as it has started.
    Immediate,
    /// When the test (or the runtime) says so: [`NodeEmulator::set_ready`] or [`RunningPod::set_ready`].
    Manual,
    /// When the future returned for the pod resolves to `true` (`false`: stays not Ready).
    Hook(Arc<dyn Fn(RunningPod) -> BoxFuture<bool> + Send + Sync>),
}

impl Readiness {
    /// Ready when `hook(pod)` resolves to `true`; for instance, when the test sends on a channel.
    pub fn hook<F, Fut>(hook: F) -> Readiness
    where
        F: Fn(RunningPod) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        Readiness::Hook(Arc::new(move |pod| Box::pin(hook(pod))))
    }

    /// Ready `delay` after starting (a slow model load).
    pub fn after(delay: Duration) -> Readiness {
        Readiness::hook(move |_| async move {
            tokio::time::sleep(delay).await;
            true
        })
    }
}

/// What the emulator currently holds for a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatedPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Its address, once it has one.
    pub ip: Option<Ipv4Addr>,
    pub ready: bool,
    /// Its deletion was requested and it is being finalized.
    pub terminating: bool,
}

/// Configures and starts a [`NodeEmulator`].
pub struct NodeEmulatorBuilder {
    node_name: Option<String>,
    namespaces: Vec<String>,
    label_selector: Option<String>,
    readiness: Readiness,
    finalize_delay: Duration,
    runtime: Arc<dyn PodRuntime>,
    cleanup: Option<PathBuf>,
}

impl NodeEmulatorBuilder {
    /// The control plane whose Node is deleted when the emulator is dropped (default: the shared one).
    pub fn control_plane(mut self, cp: &ControlPlane) -> Self {
        self.cleanup = Some(cp.kubeconfig_path().to_path_buf());
        self
    }

    /// Handles pods of this namespace (may be repeated). Without any, pods of all namespaces are handled,
    /// which only one emulator at a time in a control plane can do.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespaces.push(namespace.to_string());
        self
    }

    /// Handles only pods matching this label selector (`key=value,...`).
    pub fn label_selector(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_string());
        self
    }

    /// When started pods become Ready (default: [`Readiness::Immediate`]).
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// How long a pod being deleted stays after the runtime stopped it, before it is finalized (default 0).
    pub fn finalize_delay(mut self, delay: Duration) -> Self {
        self.finalize_delay = delay;
        self
    }

    /// Runs pods with `runtime` (default: [`NoopRuntime`]).
    pub fn runtime(mut self, runtime: impl PodRuntime) -> Self {
        self.runtime = Arc::new(runtime);
        self
    }

    /// The Node's name (default: `ebb-node-N`, unique in this test binary).
    pub fn node_name(mut self, name: &str) -> Self {
        self.node_name = Some(name.to_string());
        self
    }

    /// Creates the Node (Ready, address 127.0.0.1) and starts handling pods.
    pub async fn start(self, client: &Client) -> NodeEmulator {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let node_name =
            self.node_name.unwrap_or_else(|| format!("ebb-node-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        create_node(client, &node_name).await;
        let inner = Arc::new(Inner {
            client: client.clone(),
            node_name,
            readiness: self.readiness,
            finalize_delay: self.finalize_delay,
            runtime: self.runtime,
            pods: Mutex::new(HashMap::new()),
        });
        let mut config = watcher::Config::default();
        if let Some(selector) = &self.label_selector {
            config = config.labels(selector);
        }
        let apis: Vec<Api<Pod>> = if self.namespaces.is_empty() {
            vec![Api::all(client.clone())]
        } else {
            self.namespaces.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect()
        };
        let streams =
            apis.into_iter().map(|api| watcher::watcher(api, config.clone()).default_backoff().boxed());
        let mut events = futures::stream::select_all(streams);
        let watching = inner.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Apply(pod) | Event::InitApply(pod)) => watching.observe(pod),
                    Ok(Event::Delete(pod)) => watching.gone(&pod),
                    Ok(Event::Init | Event::InitDone) => {}
                    Err(e) => eprintln!("node emulator {}: watch error (retrying): {e}", watching.node_name),
                }
            }
        });
        NodeEmulator { inner, task: task.abort_handle(), cleanup: self.cleanup }
    }
}

/// The scheduler and kubelet of one fake Node (see the module documentation). Stops when dropped, and
/// deletes its Node then (orphaned pods are left to the control plane's pod garbage collector).
pub struct NodeEmulator {
    inner: Arc<Inner>,
    task: AbortHandle,
    /// The admin kubeconfig used to delete the Node on drop.
    cleanup: Option<PathBuf>,
}

impl NodeEmulator {
    /// A builder with the defaults: all namespaces, no label selector, [`Readiness::Immediate`], finalize
    /// at once, [`NoopRuntime`].
    pub fn builder() -> NodeEmulatorBuilder {
        NodeEmulatorBuilder {
            node_name: None,
            namespaces: Vec::new(),
            label_selector: None,
            readiness: Readiness::Immediate,
            finalize_delay: Duration::ZERO,
            runtime: Arc::new(NoopRuntime),
            cleanup: ControlPlane::shared_if_started().map(|cp| cp.kubeconfig_path().to_path_buf()),
        }
    }

    /// An emulator for the pods of `namespace`, with the defaults otherwise.
    pub async fn start(client: &Client, namespace: &str) -> NodeEmulator {
        NodeEmulator::builder().namespace(namespace).start(client).await
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// The pods the emulator holds now, sorted by namespace and name.
    pub fn pods(&self) -> Vec<EmulatedPod> {
        let pods = self.inner.pods.lock().unwrap();
        let mut out: Vec<_> = pods
            .iter()
            .map(|((namespace, name), p)| EmulatedPod {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: p.uid.clone(),
                ip: p.ip.as_ref().map(IpLease::ip),
                ready: p.ready,
                terminating: p.terminating,
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// Marks a started pod Ready or not Ready (for [`Readiness::Manual`]; works with any mode). `Err` if
    /// the emulator does not hold the pod, or has not given it an address yet.
    pub async fn set_ready(&self, namespace: &str, name: &str, ready: bool) -> Result<(), String> {
        self.inner.set_ready(namespace, name, ready).await
    }
}

impl Drop for NodeEmulator {
    fn drop(&mut self) {
        self.task.abort();
        // Stop every pod task; their addresses go back to the pool.
        let pods = std::mem::take(&mut *self.inner.pods.lock().unwrap());
        for pod in pods.values() {
            pod.tasks.iter().for_each(AbortHandle::abort);
        }
        drop(pods);
        let Some(kubeconfig) = self.cleanup.take() else { return };
        let node = self.inner.node_name.clone();
        cleanup_blocking(
            kubeconfig,
            format!("deleting node {node}"),
            async move |client: Client| match Api::<Node>::all(client)
                .delete(&node, &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(e) => Err(e),
            },
        );
    }
}

/// Creates (or takes over) a Ready Node with address 127.0.0.1 and room for many pods.
async fn create_node(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some([("kubernetes.io/hostname".to_string(), name.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("creating node {name}: {e}"),
    }
    let now = now();
    let capacity = json!({"cpu": "64", "memory": "256Gi", "pods": "250"});
    let status = json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "emulated by the ebb tests",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("writing the status of node {name}: {e}"));
}

type PodKey = (String, String);

/// The emulator's state, shared by its watch task and its per-pod tasks.
struct Inner {
    client: Client,
    node_name: String,
    readiness: Readiness,
    finalize_delay: Duration,
    runtime: Arc<dyn PodRuntime>,
    pods: Mutex<HashMap<PodKey, Tracked>>,
}

/// A pod the emulator holds.
struct Tracked {
    uid: String,
    ip: Option<IpLease>,
    ready: bool,
    terminating: bool,
    /// Set once the pod started; what the runtime was given.
    running: Option<RunningPod>,
    /// The condition types of the pod's readiness gates, with whether each is True now.
    gates: HashMap<String, bool>,
    /// Containers that could not start: name -> (reason, message) of their `waiting` state.
    waiting: HashMap<String, (String, String)>,
    /// When its containers started (`startedAt`, `startTime`).
    started_at: Option<Value>,
    /// Its start and finalize tasks, aborted when the pod is gone or the emulator dropped.
    tasks: Vec<AbortHandle>,
    /// Serializes status writes, each of which writes the state as it is when the write begins, so the
    /// last write always carries the latest state.
    status_writes: Arc<tokio::sync::Mutex<()>>,
}

impl Inner {
    /// Handles a pod as the watch shows it now.
    fn observe(self: &Arc<Self>, pod: Pod) {
        let (Some(namespace), Some(name), Some(uid)) =
            (pod.metadata.namespace.clone(), pod.metadata.name.clone(), pod.metadata.uid.clone())
        else {
            return;
        };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let key = (namespace, name);
        let mut pods = self.pods.lock().unwrap();
        if pods.get(&key).is_some_and(|t| t.uid != uid) {
            // A new pod of the same name: the old one is gone, whatever the watch said.
            forget(pods.remove(&key));
        }
        let gates = gate_values(&pod);
        if let Some(tracked) = pods.get_mut(&key).filter(|t| !t.terminating && t.gates != gates) {
            // A gate's condition changed: Ready is written again, as a kubelet does.
            tracked.gates = gates.clone();
            if tracked.running.is_some() {
                let (inner, key) = (self.clone(), key.clone());
                tokio::spawn(async move {
                    if let Err(e) = inner.write_status(&key, None).await {
                        eprintln!("node emulator {}: status of {}/{}: {e}", inner.node_name, key.0, key.1);
                    }
                });
            }
        }
        match (node, pods.get_mut(&key)) {
            // Unbound: bind and start it, unless the API server is deleting it (it does so at once).
            (None, None) if !deleting && phase == "Pending" => {
                let task = tokio::spawn(self.clone().start_pod(key.clone(), pod, true)).abort_handle();
                let mut tracked = Tracked::new(uid, task);
                tracked.gates = gates;
                pods.insert(key, tracked);
            }
            // Bound to this node, not known yet (bound by someone else, or before this emulator started).
            (Some(node), None) if node == self.node_name && !matches!(phase, "Succeeded" | "Failed") => {
                let task = if deleting {
                    tokio::spawn(self.clone().finalize(key.clone(), pod))
                } else {
                    tokio::spawn(self.clone().start_pod(key.clone(), pod, false))
                };
                let mut tracked = Tracked::new(uid, task.abort_handle());
                tracked.terminating = deleting;
                tracked.gates = gates;
                pods.insert(key, tracked);
            }
            // Held and now being deleted: stop it and finalize it.
            (Some(node), Some(tracked)) if node == self.node_name && deleting && !tracked.terminating => {
                tracked.terminating = true;
                tracked.tasks.iter().for_each(AbortHandle::abort);
                tracked.tasks = vec![tokio::spawn(self.clone().finalize(key.clone(), pod)).abort_handle()];
            }
            _ => {}
        }
    }

    /// Handles a pod the watch reports deleted.
    fn gone(&self, pod: &Pod) {
        let (Some(namespace), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone())
        else {
            return;
        };
        let mut pods = self.pods.lock().unwrap();
        let key = (namespace, name);
        if pods.get(&key).is_some_and(|t| Some(&t.uid) == pod.metadata.uid.as_ref()) {
            let tracked = pods.remove(&key);
            drop(pods);
            if let Some(running) = tracked.as_ref().filter(|t| !t.terminating).and_then(|t| t.running.clone())
            {
                // Deleted without a grace period (forced): stop what runs, in the background.
                tokio::spawn(self.runtime.stop(running, Duration::ZERO));
            }
            forget(tracked);
        }
    }

    /// Binds (when `bind`), addresses and starts a pod, then makes it Ready as [`Readiness`] says.
    async fn start_pod(self: Arc<Self>, key: PodKey, pod: Pod, bind: bool) {
        let (namespace, name) = (&key.0, &key.1);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        if bind {
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": namespace, "uid": pod.metadata.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
            });
            let post = PostParams::default();
            let bound = retry(|| api.create_subresource::<_, Value>("binding", name, &post, &binding)).await;
            if let Err(e) = bound {
                // 409: bound meanwhile (by another emulator?); 404: deleted. Either way, not ours.
                if !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409) {
                    eprintln!("node emulator {}: binding {namespace}/{name}: {e}", self.node_name);
                }
                self.pods.lock().unwrap().remove(&key);
                return;
            }
        }
        let Some(lease) = IpLease::take() else {
            eprintln!("node emulator {}: no loopback address left for {namespace}/{name}", self.node_name);
            return;
        };
        let running = RunningPod { pod: Arc::new(pod), ip: lease.ip(), emulator: self.clone() };
        {
            let mut pods = self.pods.lock().unwrap();
            let Some(tracked) = pods.get_mut(&key) else { return };
            tracked.ip = Some(lease);
            tracked.started_at = Some(now());
            tracked.running = Some(running.clone());
        }
        if let Err(e) = self.write_status(&key, None).await {
            eprintln!("node emulator {}: status of {namespace}/{name}: {e}", self.node_name);
            return;
        }
        if let Err(message) = self.runtime.start(running.clone()).await {
            eprintln!("node emulator {}: {namespace}/{name} failed to start: {message}", self.node_name);
            if let Err(e) = self.write_status(&key, Some(&message)).await {
                eprintln!("node emulator {}: status of {namespace}/{name}: {e}", self.node_name);
            }
            return;
        }
        let ready = match &self.readiness {
            Readiness::Immediate => true,
            Readiness::Manual => false,
            Readiness::Hook(hook) => hook(running).await,
        };
        if ready && let Err(e) = self.set_ready(namespace, name, true).await {
            eprintln!("node emulator {}: making {namespace}/{name} ready: {e}", self.node_name);
        }
    }

    /// Stops a pod whose deletion was requested, waits the finalize delay and deletes it for good.
    async fn finalize(self: Arc<Self>, key: PodKey, pod: Pod) {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0).max(0);
        let running = self.pods.lock().unwrap().get(&key).and_then(|t| t.running.clone());
        if let Some(running) = running {
            self.runtime.stop(running, Duration::from_secs(grace.unsigned_abs())).await;
        }
        tokio::time::sleep(self.finalize_delay).await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match retry(|| api.delete(&key.1, &params)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                eprintln!("node emulator {}: finalizing {}/{}: {e}", self.node_name, key.0, key.1);
                return;
            }
        }
        // Gone: the address may go to another pod.
        let mut pods = self.pods.lock().unwrap();
        if pods.get(&key).is_some_and(|t| pod.metadata.uid.as_ref() == Some(&t.uid)) {
            let tracked = pods.remove(&key);
            drop(pods);
            drop(tracked);
        }
    }

    async fn set_ready(&self, namespace: &str, name: &str, ready: bool) -> Result<(), String> {
        let key = (namespace.to_string(), name.to_string());
        {
            let mut pods = self.pods.lock().unwrap();
            let tracked =
                pods.get_mut(&key).ok_or_else(|| format!("{namespace}/{name} is not on this node"))?;
            if tracked.ip.is_none() {
                return Err(format!("{namespace}/{name} has not started yet"));
            }
            // A pod whose container waits (see `RunningPod::set_waiting`) is never Ready.
            tracked.ready = ready && tracked.waiting.is_empty();
        }
        self.write_status(&key, None).await.map_err(|e| format!("status of {namespace}/{name}: {e}"))
    }

    /// Writes the pod's status as the emulator holds it now: Running at its address, Ready or not, or
    /// Failed with `failure`.
    async fn write_status(&self, key: &PodKey, failure: Option<&str>) -> Result<(), kube::Error> {
        let Some(lock) = self.pods.lock().unwrap().get(key).map(|t| t.status_writes.clone()) else {
            return Ok(());
        };
        let _writing = lock.lock().await;
        let patch = {
            let pods = self.pods.lock().unwrap();
            let Some(tracked) = pods.get(key) else { return Ok(()) };
            let Some(running) = &tracked.running else { return Ok(()) };
            status_patch(tracked, running, failure)
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        // Strategic: conditions merge by type, so a gate's condition that another writer set stays.
        let (params, patch) = (PatchParams::default(), Patch::Strategic(&patch));
        retry(|| api.patch_status(&key.1, &params, &patch)).await.map(drop)
    }
}

impl Tracked {
    fn new(uid: String, task: AbortHandle) -> Tracked {
        Tracked {
            uid,
            ip: None,
            ready: false,
            terminating: false,
            running: None,
            gates: HashMap::new(),
            waiting: HashMap::new(),
            started_at: None,
            tasks: vec![task],
            status_writes: Arc::default(),
        }
    }
}

/// Stops a forgotten pod's tasks; its address goes back to the pool as it drops.
fn forget(tracked: Option<Tracked>) {
    if let Some(tracked) = tracked {
        tracked.tasks.iter().for_each(AbortHandle::abort);
    }
}

/// The condition types of `pod`'s readiness gates, each with whether its condition is True in its status.
fn gate_values(pod: &Pod) -> HashMap<String, bool> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_deref()).unwrap_or_default();
    gates
        .iter()
        .map(|g| {
            let open = conditions.iter().any(|c| c.type_ == g.condition_type && c.status == "True");
            (g.condition_type.clone(), open)
        })
        .collect()
}

/// The status a kubelet would write for `tracked` (a strategic merge patch: conditions and container
/// statuses merge by key). The pod is Ready when its containers are and every readiness gate is True. The
/// pod's uid is included as a precondition, so a same-named successor is never written.
fn status_patch(tracked: &Tracked, running: &RunningPod, failure: Option<&str>) -> Value {
    let started = tracked.started_at.clone().unwrap_or_else(now);
    let now = now();
    let containers_ready = tracked.ready && failure.is_none() && tracked.waiting.is_empty();
    let ready = containers_ready && tracked.gates.values().all(|open| *open);
    let flag = |b: bool| if b { "True" } else { "False" };
    let containers: Vec<_> = running
        .pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| {
            let waiting = tracked.waiting.get(&c.name);
            let state = match (failure, waiting) {
                (Some(message), _) => {
                    json!({"terminated": {"exitCode": 1, "reason": "Error", "message": message}})
                }
                (None, Some((reason, message))) => json!({"waiting": {"reason": reason, "message": message}}),
                (None, None) => json!({"running": {"startedAt": started}}),
            };
            json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "ready": containers_ready, "started": failure.is_none() && waiting.is_none(), "restartCount": 0,
                "state": state,
            })
        })
        .collect();
    let condition =
        |kind: &str, status: bool| json!({"type": kind, "status": flag(status), "lastTransitionTime": now});
    json!({
        "metadata": {"uid": tracked.uid},
        "status": {
            "phase": match (failure, tracked.waiting.is_empty()) {
                (Some(_), _) => "Failed",
                (None, false) => "Pending",
                (None, true) => "Running",
            },
            "message": failure,
            "hostIP": "127.0.0.1",
            "podIP": running.ip.to_string(),
            "podIPs": [{"ip": running.ip.to_string()}],
            "startTime": started,
            "conditions": [
                condition("PodScheduled", true),
                condition("Initialized", true),
                condition("ContainersReady", containers_ready),
                condition("Ready", ready),
            ],
            "containerStatuses": containers,
        },
    })
}

/// The current time as the API writes it.
fn now() -> Value {
    serde_json::to_value(Time(Timestamp::now())).expect("a time serializes")
}

/// Runs an API call up to 5 times while it fails without an answer (a connection error) or with a server
/// error or 429; returns the last result.
async fn retry<T, F: Future<Output = Result<T, kube::Error>>>(
    mut call: impl FnMut() -> F,
) -> Result<T, kube::Error> {
    let mut delay = Duration::from_millis(50);
    for _ in 0..4 {
        match call().await {
            Err(kube::Error::Api(s)) if s.code < 500 && s.code != 429 => return Err(kube::Error::Api(s)),
            Err(_) => {}
            done => return done,
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    call().await
}
