//! The Kubernetes endpoint source: watches the Deployments and pods labelled `ebb.dev/service` (all namespaces or
//! a list), the public Services of scale targets of other kinds (labelled `ebb.dev/target-kind` by the
//! autoscaler, which copies the target's annotations onto them), the activator pods (to share capacity among them) and the autoscaler pods (to stream stats to every
//! Ready one). Watch events become [`Change`]s at once; nothing polls.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ebb_config::ServiceId;
use ebb_config::names::{
    AUTOSCALER_INGEST_PORT, COMPONENT_ACTIVATOR, COMPONENT_AUTOSCALER, LABEL_COMPONENT, LABEL_PART_OF,
    LABEL_SERVICE, LABEL_TARGET_KIND, PART_OF_EBB, QUEUE_PROXY_DATA_PORT,
};
use ebb_config::targets::INSTANCE_READY_GATE;
use ebb_config::{DataPlaneSpec, GlobalConfig, ServiceConfig, resolve_service};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};

use crate::endpoints::{Change, ChangeSender, EndpointSource, PodInfo};
use crate::push::Pusher;

/// Container waiting reasons that mean a pod will not become ready without a change.
const BLOCKING_WAITING_REASONS: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What the source watches.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespaces whose services are routed; empty means all.
    pub namespaces: Vec<String>,
    /// The namespace of ebb's own pods (activators and autoscalers).
    pub own_namespace: String,
}

/// Why a pod cannot start, from its status: unschedulable, or a container waiting for a reason that needs a
/// change (image pull failures, crash loops, bad configuration).
pub fn blocked_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(condition) = unschedulable {
        return Some(format!(
            "Unschedulable: {}",
            condition.message.as_deref().unwrap_or("no node fits the pod")
        ));
    }
    let mut containers =
        status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    containers.find_map(|container| {
        let waiting = container.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref().filter(|r| BLOCKING_WAITING_REASONS.contains(r))?;
        let message = waiting.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        Some(format!("{reason}: container {}{message}", container.name))
    })
}

/// The service a pod belongs to and what the activator needs of it.
pub fn pod_info(pod: &Pod) -> Option<(ServiceId, PodInfo)> {
    let service = ServiceId::new(&pod.namespace()?, pod.labels().get(LABEL_SERVICE)?);
    let status = pod.status.as_ref();
    let phase_over =
        status.and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
    let ip: Option<IpAddr> = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok());
    let info = PodInfo {
        name: pod.name_any().into(),
        addr: ip.map(|ip| SocketAddr::new(ip, QUEUE_PROXY_DATA_PORT)),
        terminating: pod.meta().deletion_timestamp.is_some() || phase_over,
        blocked: blocked_reason(pod),
        ready: Some(is_ready(pod)),
        held: instance_held(pod),
    };
    Some((service, info))
}

/// Whether `pod` carries the instance readiness gate and its condition is not True: the entry of a
/// multi-pod instance whose other pods are not all ready.
pub fn instance_held(pod: &Pod) -> bool {
    let gated = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.condition_type == INSTANCE_READY_GATE));
    let open = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == INSTANCE_READY_GATE && c.status == "True"));
    gated && !open
}

/// Whether the kubelet reports the pod Ready and it is not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready && pod.meta().deletion_timestamp.is_none()
}

/// A service an object declares, with its data-plane settings or why they are invalid.
pub type Declared = (ServiceId, Result<DataPlaneSpec, String>);

/// The service a Deployment declares, with its data-plane settings, or why they are invalid. `None` when it is not
/// an ebb service or its label does not name it (the autoscaler reports that with an Event).
pub fn deployment_service(deployment: &Deployment) -> Option<Declared> {
    declared_service(deployment)
}

/// The service a scale target of another kind declares through its public Service (labelled
/// `ebb.dev/target-kind`, with the target's ebb annotations copied by the autoscaler), as
/// [`deployment_service`] reads a Deployment. `None` without that label.
pub fn published_service(service: &Service) -> Option<Declared> {
    service.labels().get(LABEL_TARGET_KIND)?;
    declared_service(service)
}

/// The service `object` declares with its `ebb.dev/service` label and its annotations.
fn declared_service<K: Resource>(object: &K) -> Option<Declared> {
    let name = object.name_any();
    if object.labels().get(LABEL_SERVICE) != Some(&name) {
        return None;
    }
    let key = ServiceId::new(&object.namespace()?, &name);
    // The data-plane keys do not depend on config-autoscaler, which the activator has no right to read. Its
    // defaults would refuse `initial-scale: 0` (allowed only by the ConfigMap): that check is the
    // autoscaler's, which reads the ConfigMap, so the activator assumes the most permissive global setting.
    let global = GlobalConfig { allow_zero_initial_scale: true, ..GlobalConfig::default() };
    // Only ebb's own keys: a public Service also carries the autoscaler's status annotations.
    let annotations: BTreeMap<String, String> = object
        .annotations()
        .iter()
        .filter(|(k, _)| ebb_config::keys::lookup(ebb_config::keys::ANNOTATION_KEYS, k).is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config = resolve_service(&annotations, &global);
    Some((key, config.map(|c| c.value.data_plane).map_err(|invalid| invalid.to_string())))
}

/// The objects of one watch, kept whole across relists. `apply` returns the keys (`NAMESPACE/NAME`) whose object
/// appeared, changed or went away.
struct Mirror<K> {
    objects: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
}

impl<K: Resource> Mirror<K> {
    fn new() -> Self {
        Self { objects: BTreeMap::new(), relist: None }
    }

    fn key(object: &K) -> String {
        format!(
            "{}/{}",
            object.meta().namespace.as_deref().unwrap_or(""),
            object.meta().name.as_deref().unwrap_or("")
        )
    }

    fn apply(&mut self, event: Event<K>) -> Vec<String> {
        match event {
            Event::Apply(object) => {
                let key = Self::key(&object);
                self.objects.insert(key.clone(), object);
                vec![key]
            }
            Event::Delete(object) => {
                let key = Self::key(&object);
                self.objects.remove(&key);
                vec![key]
            }
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                self.relist.get_or_insert_with(BTreeMap::new).insert(Self::key(&object), object);
                Vec::new()
            }
            Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.objects, fresh);
                old.into_keys()
                    .chain(self.objects.keys().cloned())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            }
        }
    }
}

/// Follows a watch through errors (with kube's default backoff), handing each event to `mirror`.
async fn follow<K>(
    what: &'static str,
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    mut handle: impl FnMut(Event<K>),
) {
    let mut stream = std::pin::pin!(stream.default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => handle(event),
            Err(err) => tracing::warn!("watching {what}: {err}"),
        }
    }
}

fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope>>(
    client: &Client,
    namespace: Option<&str>,
) -> Api<K>
where
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Sends a service's whole pod set whenever one of its pods changes.
async fn watch_pods(client: Client, namespace: Option<String>, changes: ChangeSender) {
    let pods: Api<Pod> = api(&client, namespace.as_deref());
    let mut mirror = Mirror::new();
    // Which service each pod belonged to when last seen, so a pod that leaves is removed from it.
    let mut owner: BTreeMap<String, ServiceId> = BTreeMap::new();
    let config = watcher::Config::default().labels(LABEL_SERVICE);
    follow("pods", watcher::watcher(pods, config), |event| {
        let mut affected = BTreeSet::new();
        for key in mirror.apply(event) {
            affected.extend(owner.remove(&key));
            if let Some((service, _)) = mirror.objects.get(&key).and_then(pod_info) {
                owner.insert(key, service.clone());
                affected.insert(service);
            }
        }
        for service in affected {
            let pods: Vec<PodInfo> = mirror
                .objects
                .values()
                .filter_map(pod_info)
                .filter(|(s, _)| *s == service)
                .map(|(_, p)| p)
                .collect();
            let _ = changes.send(Change::Pods { key: service, pods });
        }
    })
    .await;
}

/// Sends a service's settings when its Deployment appears or changes, and its removal when it goes. Invalid
/// settings keep the last valid ones (or the defaults for a Deployment never valid), as the autoscaler does.
async fn watch_deployments(client: Client, namespace: Option<String>, changes: ChangeSender) {
    let deployments: Api<Deployment> = api(&client, namespace.as_deref());
    let config = watcher::Config::default().labels(LABEL_SERVICE);
    follow_declarations("deployments", deployments, config, deployment_service, changes).await;
}

/// Sends a service's settings when the public Service of a target of another kind appears or changes, and
/// its removal when it goes, as [`watch_deployments`] does for Deployments.
async fn watch_published(client: Client, namespace: Option<String>, changes: ChangeSender) {
    let services: Api<Service> = api(&client, namespace.as_deref());
    let config = watcher::Config::default().labels(LABEL_TARGET_KIND);
    follow_declarations("public services", services, config, published_service, changes).await;
}

/// Follows the objects that declare services, as `declared` reads each.
async fn follow_declarations<K>(
    what: &'static str,
    objects: Api<K>,
    config: watcher::Config,
    declared: fn(&K) -> Option<Declared>,
    changes: ChangeSender,
) where
    K: Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut mirror = Mirror::new();
    let mut known: BTreeMap<String, ServiceId> = BTreeMap::new();
    follow(what, watcher::watcher(objects, config), |event| {
        for key in mirror.apply(event) {
            match mirror.objects.get(&key).and_then(declared) {
                Some((service, Ok(config))) => {
                    known.insert(key, service.clone());
                    let _ = changes.send(Change::Service { key: service, config });
                }
                Some((service, Err(problems))) => {
                    tracing::warn!(%service, "invalid annotations; keeping the last valid settings:\n{problems}");
                    if known.insert(key, service.clone()).is_none() {
                        let config = ServiceConfig::default().data_plane;
                        let _ = changes.send(Change::Service { key: service, config });
                    }
                }
                None => {
                    if let Some(service) = known.remove(&key) {
                        let _ = changes.send(Change::ServiceRemoved(service));
                    }
                }
            }
        }
    })
    .await;
}

/// Follows ebb's own component pods: the count of Ready activators, and the addresses of Ready autoscalers.
async fn watch_components(
    client: Client,
    namespace: String,
    changes: ChangeSender,
    pusher: Option<Arc<Pusher>>,
) {
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let selector = format!(
        "{LABEL_PART_OF}={PART_OF_EBB},{LABEL_COMPONENT} in ({COMPONENT_ACTIVATOR},{COMPONENT_AUTOSCALER})"
    );
    let mut mirror = Mirror::new();
    let (mut activators, mut autoscalers) = (None, None);
    follow("ebb's own pods", watcher::watcher(pods, watcher::Config::default().labels(&selector)), |event| {
        if mirror.apply(event).is_empty() {
            return;
        }
        let ready = |component: &'static str| {
            mirror.objects.values().filter(move |p| {
                p.labels().get(LABEL_COMPONENT).is_some_and(|c| c == component) && is_ready(p)
            })
        };
        let count = ready(COMPONENT_ACTIVATOR).count();
        if activators.replace(count) != Some(count) {
            let _ = changes.send(Change::Activators(count.max(1)));
        }
        let addrs: Vec<SocketAddr> = ready(COMPONENT_AUTOSCALER)
            .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
            .map(|ip| SocketAddr::new(ip, AUTOSCALER_INGEST_PORT))
            .collect();
        if let Some(pusher) = &pusher
            && autoscalers.as_ref() != Some(&addrs)
        {
            pusher.set_replicas(&addrs);
            autoscalers = Some(addrs);
        }
    })
    .await;
}

/// The Kubernetes endpoint source: [`run`] as an [`EndpointSource`].
pub struct KubeSource {
    client: Client,
    options: Options,
    pusher: Option<Arc<Pusher>>,
}

impl KubeSource {
    /// Watches with `client` as `options` say; with a `pusher`, the Ready autoscalers become its replicas.
    pub fn new(client: Client, options: Options, pusher: Option<Arc<Pusher>>) -> Self {
        Self { client, options, pusher }
    }
}

impl EndpointSource for KubeSource {
    fn run(self: Box<Self>, changes: ChangeSender) -> BoxFuture<'static, ()> {
        Box::pin(run(self.client, self.options, changes, self.pusher))
    }
}

/// Runs every watch until they all end (they end only with the runtime).
async fn run(client: Client, options: Options, changes: ChangeSender, pusher: Option<Arc<Pusher>>) {
    let scopes: Vec<Option<String>> = match options.namespaces.is_empty() {
        true => vec![None],
        false => options.namespaces.iter().cloned().map(Some).collect(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for scope in scopes {
        tasks.spawn(watch_deployments(client.clone(), scope.clone(), changes.clone()));
        tasks.spawn(watch_published(client.clone(), scope.clone(), changes.clone()));
        tasks.spawn(watch_pods(client.clone(), scope, changes.clone()));
    }
    tasks.spawn(watch_components(client, options.own_namespace, changes, pusher));
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_pod_becomes_an_endpoint_with_its_queue_proxy_address() {
        let p = pod(json!({
            "metadata": {"name": "chat-1", "namespace": "models", "labels": {"ebb.dev/service": "chat"}},
            "status": {"podIP": "10.0.0.7", "phase": "Running"}
        }));
        let (service, info) = pod_info(&p).unwrap();
        assert_eq!(service, ServiceId::new("models", "chat"));
        let expected =
            PodInfo { ready: Some(false), ..PodInfo::live("chat-1", "10.0.0.7:8012".parse().unwrap()) };
        assert_eq!(info, expected, "not Ready until the kubelet says so");
        let ready = pod(json!({
            "metadata": {"name": "chat-1", "namespace": "models", "labels": {"ebb.dev/service": "chat"}},
            "status": {"podIP": "10.0.0.7", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        assert_eq!(pod_info(&ready).unwrap().1.ready, Some(true));
        let gated = |condition: &str| {
            pod(json!({
                "metadata": {"name": "llm-0", "namespace": "models", "labels": {"ebb.dev/service": "llm"}},
                "spec": {"containers": [], "readinessGates": [{"conditionType": "ebb.dev/instance-ready"}]},
                "status": {"podIP": "10.0.0.8", "conditions": [
                    {"type": "ebb.dev/instance-ready", "status": condition}]}
            }))
        };
        assert!(pod_info(&gated("False")).unwrap().1.held, "its instance is not whole");
        assert!(!pod_info(&gated("True")).unwrap().1.held);
        assert!(!pod_info(&ready).unwrap().1.held, "no gate, nothing to wait for");
        let pending =
            pod(json!({"metadata": {"name": "x", "namespace": "n", "labels": {"ebb.dev/service": "s"}}}));
        assert_eq!(pod_info(&pending).unwrap().1.addr, None);
        let deleting = pod(
            json!({"metadata": {"name": "x", "namespace": "n", "deletionTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"ebb.dev/service": "s"}}}),
        );
        assert!(pod_info(&deleting).unwrap().1.terminating);
        assert!(pod_info(&pod(json!({"metadata": {"name": "x", "namespace": "n"}}))).is_none());
    }

    #[test]
    fn blocked_pods_say_why() {
        let crash = pod(json!({"metadata": {"name": "x"}, "status": {"containerStatuses": [{
            "name": "model", "ready": false, "restartCount": 5, "image": "i", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}
        }]}}));
        assert_eq!(
            blocked_reason(&crash).as_deref(),
            Some("CrashLoopBackOff: container model: back-off 40s restarting failed container")
        );
        let unschedulable = pod(json!({"metadata": {"name": "x"}, "status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        }]}}));
        assert_eq!(
            blocked_reason(&unschedulable).as_deref(),
            Some("Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
        );
        let starting = pod(json!({"metadata": {"name": "x"}, "status": {"containerStatuses": [{
            "name": "model", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
            "state": {"waiting": {"reason": "ContainerCreating"}}
        }]}}));
        assert_eq!(blocked_reason(&starting), None);
    }

    #[test]
    fn a_public_service_declares_its_targets_settings_only_with_the_kind_label() {
        let service = |labels: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "models", "labels": labels,
                "annotations": {"ebb.dev/timeout": "45s", "status.ebb.dev/mode": "proxy",
                                "app.example.com/owner": "team"}}}))
            .unwrap()
        };
        let (key, config) = published_service(&service(
            json!({"ebb.dev/service": "db", "ebb.dev/target-kind": "StatefulSet"}),
        ))
        .unwrap();
        assert_eq!(key, ServiceId::new("models", "db"));
        // The autoscaler's status annotations and foreign ones are not the service's settings.
        assert_eq!(config.unwrap().timeout, std::time::Duration::from_secs(45));
        // A Deployment's public Service has no kind label: the Deployment itself declares the service.
        assert!(published_service(&service(json!({"ebb.dev/service": "db"}))).is_none());
    }

    #[test]
    fn deployments_declare_services_only_when_the_label_names_them() {
        let d = |labels: serde_json::Value, annotations: serde_json::Value| -> Deployment {
            serde_json::from_value(
                json!({"metadata": {"name": "chat", "namespace": "models", "labels": labels,
                "annotations": annotations}}),
            )
            .unwrap()
        };
        let (key, config) = deployment_service(&d(
            json!({"ebb.dev/service": "chat"}),
            json!({"ebb.dev/container-concurrency": "4"}),
        ))
        .unwrap();
        assert_eq!((key, config.unwrap().container_concurrency), (ServiceId::new("models", "chat"), 4));
        assert!(deployment_service(&d(json!({"ebb.dev/service": "other"}), json!({}))).is_none());
        let (_, invalid) =
            deployment_service(&d(json!({"ebb.dev/service": "chat"}), json!({"ebb.dev/timeout": "never"})))
                .unwrap();
        assert!(invalid.unwrap_err().contains("ebb.dev/timeout"));
        // Whether a service may start at zero is config-autoscaler's to say, which the activator cannot read.
        let (_, at_zero) = deployment_service(&d(
            json!({"ebb.dev/service": "chat"}),
            json!({"autoscaling.knative.dev/initial-scale": "0"}),
        ))
        .unwrap();
        assert!(at_zero.is_ok(), "{at_zero:?}");
    }

    #[test]
    fn the_mirror_reports_what_a_relist_changed() {
        let named = |name: &str| pod(json!({"metadata": {"name": name, "namespace": "n"}}));
        let mut mirror = Mirror::new();
        assert_eq!(mirror.apply(Event::Apply(named("a"))), ["n/a"]);
        assert_eq!(mirror.apply(Event::Apply(named("b"))), ["n/b"]);
        assert!(mirror.apply(Event::Init).is_empty());
        assert!(mirror.apply(Event::InitApply(named("b"))).is_empty());
        assert!(mirror.apply(Event::InitApply(named("c"))).is_empty());
        assert_eq!(mirror.apply(Event::InitDone), ["n/a", "n/b", "n/c"]);
        assert_eq!(mirror.objects.keys().collect::<Vec<_>>(), ["n/b", "n/c"]);
        assert_eq!(mirror.apply(Event::Delete(named("b"))), ["n/b"]);
        assert_eq!(mirror.objects.len(), 1);
    }
}
