//! What the caches keep of each object: types that read from the API's JSON only the fields the controller
//! reads, so that a cache of thousands of Deployments, pods, Services and EndpointSlices holds a few hundred
//! bytes of each instead of a k8s-openapi copy (a `Pod` is over 2 KiB before its first string, a `Container`
//! 2 KiB even when empty, a `DynamicObject` a tree of JSON values). Field names follow the API and
//! k8s-openapi, so code reads them as it would the full types. Nothing the controller writes is built from
//! these: every write is a merge patch of ebb's own fields, or a new object made from scratch.
//!
//! A watch reads each object in its [`Wire`] form, a [`kube::Resource`] of the object's kind whose metadata is
//! k8s-openapi's `ObjectMeta` (the watch reads the resource version there). The cache keeps the object in its
//! [`Cached`] form, made from the wire form: the metadata shrinks to [`Meta`] (name, namespace, uid and the
//! creation and deletion times), labels and annotations become sorted pairs ([`KeyValues`]), a Deployment's
//! managed fields the list of who wrote `spec.replicas`, and what the pass never reads goes (owners,
//! finalizers, every container but the queue-proxy, kubectl's copy of the object, of a pod's conditions all but
//! three flags, of its containers' states all but the waiting ones). A pod's kept spec and labels are shared
//! with every pod whose are equal (the pods of a Deployment carry the same queue-proxy). Each kept type also
//! reads straight from JSON the same way, as a test or a tool would.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use ebb_config::ServiceId;
use ebb_config::names::ANNOTATION_POD_DELETION_COST;
use ebb_config::sidecar::env;
use ebb_config::targets::INSTANCE_READY_GATE;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ContainerStateWaiting, ObjectReference, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, LabelSelector, ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::core::DynamicResourceScope;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use super::intern::Interner;
use super::selector::Selector;

/// kubectl's copy of the whole applied object, in an annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The prefix of every variable the queue-proxy reads (and of the one that marks its container).
const SIDECAR_ENV_PREFIX: &str = "EBB_";

/// The queue-proxy container's usual name.
const QUEUE_PROXY: &str = "queue-proxy";

/// An object as a cache keeps it, made from the form its watch reads.
pub trait Cached: From<Self::Wire> + Send + Sync + 'static {
    /// The form a watch reads: a resource of the object's kind.
    type Wire: Resource + Clone + DeserializeOwned + Debug + Send + 'static;

    /// Its identity and times.
    fn meta(&self) -> &Meta;

    /// Its identity and times, for the cache to share their strings.
    fn meta_mut(&mut self) -> &mut Meta;
}

/// An object's metadata as the caches keep it. The name and namespace are shared: a cache keys the object by
/// the same name and holds one copy of each namespace, and a [`ServiceId`] made from them copies no string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// Its name.
    pub name: Arc<str>,
    /// Its namespace (empty for a cluster-scoped object).
    pub namespace: Arc<str>,
    /// Its uid.
    pub uid: Option<Box<str>>,
    /// When it was created.
    pub created: Option<Time>,
    /// When its deletion was asked for (it is terminating).
    pub deleting: Option<Time>,
}

impl Meta {
    /// What is kept of `meta`, its strings moved out.
    fn take(meta: &mut ObjectMeta) -> Self {
        Self {
            name: meta.name.take().unwrap_or_default().into(),
            namespace: meta.namespace.take().unwrap_or_default().into(),
            uid: meta.uid.take().map(String::into_boxed_str),
            created: meta.creation_timestamp.take(),
            deleting: meta.deletion_timestamp.take(),
        }
    }

    /// What is kept of `meta`, its strings copied.
    fn of(meta: &ObjectMeta) -> Self {
        Self {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            uid: meta.uid.as_deref().map(Box::from),
            created: meta.creation_timestamp.clone(),
            deleting: meta.deletion_timestamp.clone(),
        }
    }

    /// The service the object stands for by its namespace and name (a scale target, its public Service, its
    /// EndpointSlice).
    pub fn service_id(&self) -> ServiceId {
        ServiceId { namespace: self.namespace.clone(), name: self.name.clone() }
    }

    /// The reference that Events about the object carry, `Kind` being its kind.
    pub fn reference<Kind: Resource<DynamicType = ()>>(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(Kind::api_version(&()).into_owned()),
            kind: Some(Kind::kind(&()).into_owned()),
            name: Some(self.name.to_string()),
            namespace: (!self.namespace.is_empty()).then(|| self.namespace.to_string()),
            uid: self.uid.as_deref().map(str::to_owned),
            ..ObjectReference::default()
        }
    }

    /// The owner reference that makes what ebb creates for the object go with it, `Kind` being its kind.
    pub fn controller_owner<Kind: Resource<DynamicType = ()>>(&self) -> Option<OwnerReference> {
        Some(OwnerReference {
            api_version: Kind::api_version(&()).into_owned(),
            kind: Kind::kind(&()).into_owned(),
            name: self.name.to_string(),
            uid: self.uid.as_deref()?.to_owned(),
            controller: Some(true),
            ..OwnerReference::default()
        })
    }
}

/// An object kept whole, for the watches of one object: the `config-autoscaler` ConfigMap, the webhook's
/// Secret.
#[derive(Debug, Clone)]
pub struct Whole<K> {
    /// Its identity, as the cache keys it.
    pub meta: Meta,
    /// The object as read.
    pub object: K,
}

impl<K: Resource> From<K> for Whole<K> {
    fn from(object: K) -> Self {
        Self { meta: Meta::of(object.meta()), object }
    }
}

impl<K> Cached for Whole<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    type Wire = K;

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }
}

/// An object as a watch reads it: its metadata whole, its spec and status as the kept type reads them, and
/// `Kind` the resource it is read as.
#[derive(Debug, Clone, Deserialize)]
pub struct Wire<Kind, Spec, Status> {
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: Option<Spec>,
    /// Its status.
    pub status: Option<Status>,
    #[serde(skip)]
    kind: PhantomData<fn() -> Kind>,
}

/// A wire form is a resource of its kind: the same API group, version, kind and path.
impl<Kind, Spec, Status> Resource for Wire<Kind, Spec, Status>
where
    Kind: Resource<DynamicType = ()>,
{
    type DynamicType = ();
    type Scope = Kind::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Kind::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Kind::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Kind::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Kind::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Labels or annotations as the caches keep them: the pairs sorted by key, their text in one string and where
/// each key and value ends in another allocation. A `BTreeMap` allocates a node of 544 bytes for even one
/// pair, and a list of string pairs two allocations a pair; every Deployment and Service has two such maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyValues {
    /// The keys and values one after the other.
    text: Box<str>,
    /// For each pair, where its key ends and where its value ends in `text`.
    ends: Box<[(u32, u32)]>,
}

impl KeyValues {
    /// The `i`th pair.
    fn pair(&self, i: usize) -> (&str, &str) {
        let start = if i == 0 { 0 } else { self.ends[i - 1].1 as usize };
        let (key_end, end) = (self.ends[i].0 as usize, self.ends[i].1 as usize);
        (&self.text[start..key_end], &self.text[key_end..end])
    }

    /// The pairs, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        (0..self.ends.len()).map(|i| self.pair(i))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let (mut low, mut high) = (0, self.ends.len());
        while low < high {
            let middle = (low + high) / 2;
            let (k, v) = self.pair(middle);
            match k.cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(v),
            }
        }
        None
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }

    /// The pairs as a map (for what needs one: a target's metadata, a configuration to resolve).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }
}

impl From<BTreeMap<String, String>> for KeyValues {
    fn from(map: BTreeMap<String, String>) -> Self {
        let mut text = String::with_capacity(map.iter().map(|(k, v)| k.len() + v.len()).sum());
        let mut ends = Vec::with_capacity(map.len());
        for (k, v) in &map {
            text.push_str(k);
            let key_end = text.len();
            text.push_str(v);
            // An object of the API is far below 4 GiB (etcd takes at most 1.5 MiB).
            ends.push((key_end as u32, text.len() as u32));
        }
        Self { text: text.into_boxed_str(), ends: ends.into_boxed_slice() }
    }
}

/// Moves `meta`'s labels and annotations out into compact pairs (kubectl's copy of the object left out).
fn take_key_values(meta: &mut ObjectMeta) -> (KeyValues, KeyValues) {
    let mut annotations = meta.annotations.take().unwrap_or_default();
    annotations.remove(LAST_APPLIED);
    (meta.labels.take().unwrap_or_default().into(), annotations.into())
}

/// A pod as its watch reads it.
pub type PodWire = Wire<Pod, WatchedPodSpec, WatchedPodStatus>;
/// A Deployment as its watch reads it.
pub type DeploymentWire = Wire<Deployment, WatchedDeploymentSpec, WatchedDeploymentStatus>;
/// A Service as its watch reads it: its spec and status are read past.
pub type ServiceWire = Wire<Service, IgnoredAny, IgnoredAny>;

/// A pod: its metadata, the deletion cost of its annotations, its queue-proxy container, and the status fields
/// that say whether it is ready, stuck, where it is and since when.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "PodWire")]
pub struct WatchedPod {
    /// Its name, namespace, uid, creation and deletion times.
    pub meta: Meta,
    /// Its labels: one copy for all the pods whose are equal (a Deployment's pods, but for a StatefulSet's).
    pub labels: Arc<KeyValues>,
    /// Of its annotations, the deletion cost (the one the pass reads).
    pub annotations: KeyValues,
    /// Its queue-proxy container (a model's pods carry others) and readiness gates: one copy for all the pods
    /// whose are equal (a Deployment's pods).
    pub spec: Option<Arc<WatchedPodSpec>>,
    /// Its conditions, address, start time and containers' states.
    pub status: Option<WatchedPodStatus>,
}

impl From<PodWire> for WatchedPod {
    fn from(Wire { mut metadata, spec, status, .. }: PodWire) -> Self {
        let labels = KeyValues::from(metadata.labels.take().unwrap_or_default());
        let cost = metadata.annotations.take().and_then(|mut all| all.remove(ANNOTATION_POD_DELETION_COST));
        let annotations =
            BTreeMap::from_iter(cost.map(|c| (ANNOTATION_POD_DELETION_COST.to_owned(), c))).into();
        let spec = spec.map(|mut spec| {
            spec.keep_only_queue_proxy();
            POD_SPECS.share(spec)
        });
        Self { meta: Meta::take(&mut metadata), labels: POD_LABELS.share(labels), annotations, spec, status }
    }
}

/// The pod specs that pods hold, as far as they are kept: a Deployment's pods share one.
static POD_SPECS: LazyLock<Interner<WatchedPodSpec>> = LazyLock::new(Interner::default);

/// The labels that pods hold.
static POD_LABELS: LazyLock<Interner<KeyValues>> = LazyLock::new(Interner::default);

/// A pod spec (a pod's or a template's) as far as the sidecar checks read it: its containers (once kept, the
/// queue-proxy alone), and the readiness gates, which tell a pod that waits for more than its own containers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPodSpec {
    /// The regular containers.
    #[serde(default)]
    pub containers: Vec<WatchedContainer>,
    /// The init containers, where a native sidecar lives.
    pub init_containers: Option<Vec<WatchedContainer>>,
    /// The readiness gates.
    pub readiness_gates: Option<Vec<WatchedReadinessGate>>,
}

/// A readiness gate: the condition type the pod waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedReadinessGate {
    /// The condition's type.
    pub condition_type: String,
}

/// A container: its name and, once kept, only its `EBB_*` variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct WatchedContainer {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its environment variables.
    pub env: Option<Vec<WatchedEnvVar>>,
}

/// An environment variable: its literal value, or whether it is set from elsewhere (`valueFrom`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedEnvVar {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its literal value.
    pub value: Option<String>,
    /// Whether the value comes from a field, a ConfigMap or a Secret (not known here).
    #[serde(default, deserialize_with = "present")]
    pub value_from: bool,
}

/// A pod's status as far as the pass reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPodStatus {
    /// The conditions the pass reads.
    #[serde(default)]
    pub conditions: PodConditions,
    /// The pod's address (one that does not parse is none).
    #[serde(rename = "podIP", default, deserialize_with = "parsed_ip")]
    pub pod_ip: Option<IpAddr>,
    /// When the kubelet started it.
    pub start_time: Option<Time>,
    /// The containers that wait, and why (of the containers' states, the one a stuck pod is told by).
    #[serde(default, rename = "containerStatuses", deserialize_with = "waiting_only")]
    pub waiting_containers: Vec<WaitingContainer>,
    /// The init containers that wait, and why.
    #[serde(default, rename = "initContainerStatuses", deserialize_with = "waiting_only")]
    pub waiting_init_containers: Vec<WaitingContainer>,
}

/// A container that waits: its name, and the reason and message its kubelet gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitingContainer {
    /// The container's name.
    pub name: String,
    /// Why it waits, in a word (`CrashLoopBackOff`).
    pub reason: Option<String>,
    /// Why, in a sentence.
    pub message: Option<String>,
}

/// A container's status as the API writes it, read as far as whether it waits.
#[derive(Deserialize)]
struct ContainerStatus {
    #[serde(default)]
    name: String,
    state: Option<ContainerState>,
}

/// A container's state: waiting, and why (running and terminated are read past).
#[derive(Deserialize)]
struct ContainerState {
    waiting: Option<ContainerStateWaiting>,
}

/// The containers' statuses, kept for those that wait: a running pod keeps none.
fn waiting_only<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<WaitingContainer>, D::Error> {
    let statuses = Option::<Vec<ContainerStatus>>::deserialize(deserializer)?.unwrap_or_default();
    let waiting = statuses.into_iter().filter_map(|c| {
        let waiting = c.state?.waiting?;
        Some(WaitingContainer { name: c.name, reason: waiting.reason, message: waiting.message })
    });
    // Collected in place, the list would keep the statuses' allocation (the two are of one size) however few
    // wait: 288 bytes a running pod.
    let mut waiting: Vec<WaitingContainer> = waiting.collect();
    waiting.shrink_to_fit();
    Ok(waiting)
}

/// An address as the API writes it, parsed.
fn parsed_ip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<IpAddr>, D::Error> {
    Option::<Cow<'de, str>>::deserialize(deserializer).map(|ip| ip.and_then(|ip| ip.parse().ok()))
}

/// Whether a value is there at all (whatever it is).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Option::<IgnoredAny>::deserialize(deserializer).map(|value| value.is_some())
}

/// A pod's conditions as far as the pass reads them: whether each of three is `True` (`None` where the pod
/// does not report it), and why the scheduler cannot place it. A pod reports four to six conditions of up to
/// four strings each, an allocation a string: kept as they were read, they were the largest part of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodConditions {
    /// `Ready`.
    pub ready: Option<bool>,
    /// `ContainersReady`: the kubelet's verdict on the containers, which no readiness gate holds back.
    pub containers_ready: Option<bool>,
    /// The readiness gate of multi-pod instances ([`INSTANCE_READY_GATE`]), which ebb writes.
    pub instance_ready: Option<bool>,
    /// `PodScheduled` false for `Unschedulable`: the scheduler's message (empty when it gave none).
    pub unschedulable: Option<String>,
}

/// A pod condition as the API writes it (its times are read past).
#[derive(Deserialize)]
struct Condition {
    #[serde(rename = "type", default)]
    type_: String,
    #[serde(default)]
    status: String,
    reason: Option<String>,
    message: Option<String>,
}

/// The conditions read as the list the API writes, kept as [`PodConditions`].
impl<'de> Deserialize<'de> for PodConditions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut kept = Self::default();
        for c in Option::<Vec<Condition>>::deserialize(deserializer)?.unwrap_or_default() {
            let is_true = Some(c.status == "True");
            match c.type_.as_str() {
                "Ready" => kept.ready = is_true,
                "ContainersReady" => kept.containers_ready = is_true,
                INSTANCE_READY_GATE => kept.instance_ready = is_true,
                "PodScheduled" if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") => {
                    kept.unschedulable = Some(c.message.unwrap_or_default());
                }
                _ => {}
            }
        }
        Ok(kept)
    }
}

/// A Deployment: its metadata, replicas, selector, ready replicas, and its pod template's annotations and
/// queue-proxy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "DeploymentWire")]
pub struct WatchedDeployment {
    /// Its name, namespace and uid.
    pub meta: Meta,
    /// Its labels.
    pub labels: KeyValues,
    /// Its annotations (ebb's configuration among them).
    pub annotations: KeyValues,
    /// Replicas, selector and template.
    pub spec: Option<WatchedDeploymentSpec>,
    /// Its ready replicas (a group member's).
    pub status: Option<WatchedDeploymentStatus>,
    /// Who wrote `spec.replicas`, from the managed fields.
    pub replicas_writers: Vec<ReplicasWriter>,
}

impl From<DeploymentWire> for WatchedDeployment {
    fn from(Wire { mut metadata, mut spec, status, .. }: DeploymentWire) -> Self {
        let (labels, annotations) = take_key_values(&mut metadata);
        let replicas_writers = replicas_writers(&metadata);
        if let Some(template) = spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            template.keep_only_queue_proxy();
        }
        Self { meta: Meta::take(&mut metadata), labels, annotations, spec, status, replicas_writers }
    }
}

/// A Deployment's spec as the pass reads it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WatchedDeploymentSpec {
    /// `spec.replicas` (unset means 1).
    pub replicas: Option<i32>,
    /// Its pods' selector, parsed.
    #[serde(default, deserialize_with = "parsed_selector")]
    pub selector: Selector,
    /// Its pod template.
    #[serde(default)]
    pub template: WatchedTemplate,
}

/// A pod template (a Deployment's, or another kind's at a known path): its annotations and its queue-proxy.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WatchedTemplate {
    /// Its metadata, of which the annotations are read.
    pub metadata: Option<WatchedTemplateMeta>,
    /// Its spec.
    pub spec: Option<WatchedPodSpec>,
}

/// A pod template's metadata: its annotations.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WatchedTemplateMeta {
    /// The annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A Deployment's status as the pass reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedDeploymentStatus {
    /// Pods ready for at least `minReadySeconds`.
    pub ready_replicas: Option<i32>,
}

/// A Service: its metadata only (ebb reads the labels and annotations of the Service it owns).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "ServiceWire")]
pub struct WatchedService {
    /// Its name, namespace and uid.
    pub meta: Meta,
    /// Its labels.
    pub labels: KeyValues,
    /// Its annotations.
    pub annotations: KeyValues,
}

impl From<ServiceWire> for WatchedService {
    fn from(Wire { mut metadata, .. }: ServiceWire) -> Self {
        let (labels, annotations) = take_key_values(&mut metadata);
        Self { meta: Meta::take(&mut metadata), labels, annotations }
    }
}

/// A labelled ReplicaSet, read by its metadata alone: the Deployment that controls it (the webhook's way from
/// a pod to its Deployment).
#[derive(Debug, Clone, Default)]
pub struct WatchedReplicaSet {
    /// Its name and namespace.
    pub meta: Meta,
    /// The kind and name of its controller, if it has one.
    pub controller: Option<(String, String)>,
}

impl From<PartialObjectMeta<ReplicaSet>> for WatchedReplicaSet {
    fn from(mut object: PartialObjectMeta<ReplicaSet>) -> Self {
        let owners = object.metadata.owner_references.take().unwrap_or_default();
        let controller = owners.into_iter().find(|o| o.controller == Some(true)).map(|o| (o.kind, o.name));
        Self { meta: Meta::take(&mut object.metadata), controller }
    }
}

/// An EndpointSlice of `discovery.k8s.io` `v1` or `v1beta1` (the same in what is read here) as its watch
/// reads it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SliceWire {
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Its endpoints (the API writes an empty list as `null`).
    pub endpoints: Option<Vec<WatchedEndpoint>>,
    /// Its ports.
    pub ports: Option<Vec<WatchedPort>>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WatchedEndpoint {
    /// Its addresses.
    pub addresses: Option<Vec<String>>,
}

/// One port of a slice.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WatchedPort {
    /// The port number.
    pub port: Option<i32>,
}

/// One of ebb's EndpointSlices: what ebb writes into it, its addresses and port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "SliceWire")]
pub struct WatchedSlice {
    /// Its name and namespace (the service's).
    pub meta: Meta,
    /// Its endpoints' addresses, sorted.
    pub addresses: Vec<String>,
    /// Its first port (0 when none).
    pub port: u16,
}

impl From<SliceWire> for WatchedSlice {
    fn from(SliceWire { mut metadata, endpoints, ports }: SliceWire) -> Self {
        let mut addresses: Vec<String> =
            endpoints.into_iter().flatten().flat_map(|e| e.addresses.into_iter().flatten()).collect();
        addresses.sort();
        let port = ports.iter().flatten().next().and_then(|p| p.port).unwrap_or(0);
        Self { meta: Meta::take(&mut metadata), addresses, port: u16::try_from(port).unwrap_or(0) }
    }
}

/// Whichever version of `discovery.k8s.io` the API server serves (its resource is found at start).
impl Resource for SliceWire {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::kind(dt)
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::group(dt)
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::version(dt)
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::api_version(dt)
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The kept kinds: each is read from its wire form.
macro_rules! cached_from {
    ($($kept:ty => $wire:ty),* $(,)?) => {$(
        impl Cached for $kept {
            type Wire = $wire;

            fn meta(&self) -> &Meta {
                &self.meta
            }

            fn meta_mut(&mut self) -> &mut Meta {
                &mut self.meta
            }
        }
    )*};
}

cached_from! {
    WatchedPod => PodWire,
    WatchedDeployment => DeploymentWire,
    WatchedService => ServiceWire,
    WatchedSlice => SliceWire,
    WatchedReplicaSet => PartialObjectMeta<ReplicaSet>,
    WatchedObject => DynamicObject,
}

impl WatchedPod {
    /// Its queue-proxy container, found as [`WatchedPodSpec::queue_proxy`] finds it.
    pub fn queue_proxy(&self) -> Option<&WatchedContainer> {
        self.spec.as_ref()?.queue_proxy()
    }
}

impl WatchedPodSpec {
    /// The queue-proxy container: the one whose env has `EBB_UPSTREAM`, else the one named `queue-proxy`
    /// (regular containers first, then init containers, where a native sidecar lives).
    pub fn queue_proxy(&self) -> Option<&WatchedContainer> {
        let all = || self.containers.iter().chain(self.init_containers.iter().flatten());
        all()
            .find(|c| c.env.iter().flatten().any(|e| e.name == env::UPSTREAM))
            .or_else(|| all().find(|c| c.name == QUEUE_PROXY))
    }

    /// Drops every container but the queue-proxy, and its variables but the `EBB_*` ones: all the checks
    /// read. Container names are unique across a pod's containers and init containers.
    fn keep_only_queue_proxy(&mut self) {
        let name = self.queue_proxy().map(|c| c.name.clone());
        let keep = |c: &WatchedContainer| name.as_ref() == Some(&c.name);
        self.containers.retain(keep);
        self.containers.shrink_to_fit();
        if let Some(init) = &mut self.init_containers {
            init.retain(keep);
            init.shrink_to_fit();
        }
        if self.init_containers.as_ref().is_some_and(Vec::is_empty) {
            self.init_containers = None;
        }
        for container in self.containers.iter_mut().chain(self.init_containers.iter_mut().flatten()) {
            if let Some(env) = &mut container.env {
                env.retain(|e| e.name.starts_with(SIDECAR_ENV_PREFIX));
                env.shrink_to_fit();
            }
        }
    }
}

/// Name, namespace, labels and annotations, read as the kept types hold them.
macro_rules! named_with_key_values {
    ($($kept:ty),*) => {$(
        impl $kept {
            /// Its name.
            pub fn name(&self) -> &str {
                &self.meta.name
            }

            /// Its namespace.
            pub fn namespace(&self) -> &str {
                &self.meta.namespace
            }

            /// Its labels.
            pub fn labels(&self) -> &KeyValues {
                &self.labels
            }

            /// Its annotations.
            pub fn annotations(&self) -> &KeyValues {
                &self.annotations
            }
        }
    )*};
}

named_with_key_values!(WatchedPod, WatchedDeployment, WatchedService);

/// A writer of `spec.replicas`, as the managed fields name it: who, and when (in whole seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicasWriter {
    /// The field manager, e.g. `kubectl` or `ebb-autoscaler`.
    pub manager: String,
    /// When it last wrote a field it manages.
    pub time: Option<Timestamp>,
}

/// Whether a managed-fields entry includes `spec.replicas`.
fn writes_replicas(entry: &ManagedFieldsEntry) -> bool {
    (entry.fields_v1.as_ref())
        .is_some_and(|f| f.0.get("f:spec").is_some_and(|s| s.get("f:replicas").is_some()))
}

/// The writers of `spec.replicas` among `meta`'s managed fields: who fought ebb over replicas is all the
/// managed fields are read for.
pub(crate) fn replicas_writers(meta: &ObjectMeta) -> Vec<ReplicasWriter> {
    (meta.managed_fields.iter().flatten())
        .filter(|m| writes_replicas(m))
        .map(|m| ReplicasWriter {
            manager: m.manager.clone().unwrap_or_default(),
            time: m.time.as_ref().map(|t| t.0),
        })
        .collect()
}

/// A `LabelSelector` as read, parsed.
fn parsed_selector<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Selector, D::Error> {
    LabelSelector::deserialize(deserializer).map(|s| Selector::from_label_selector(&s))
}

/// A scale target of another kind (`scale-target-kinds`), whose data is read at paths its kind names: kept
/// whole, but without kubectl's copy and with only the managed-field entries of the [`replicas_writers`],
/// each reduced to that field.
#[derive(Debug, Clone)]
pub struct WatchedObject {
    /// Its identity, as the cache keys it.
    pub meta: Meta,
    /// The object.
    pub object: DynamicObject,
}

impl From<DynamicObject> for WatchedObject {
    fn from(mut object: DynamicObject) -> Self {
        trim_dynamic(&mut object.metadata);
        Self { meta: Meta::of(&object.metadata), object }
    }
}

fn trim_dynamic(meta: &mut ObjectMeta) {
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
    let Some(entries) = meta.managed_fields.take() else { return };
    let kept: Vec<ManagedFieldsEntry> = (entries.into_iter().filter(writes_replicas))
        .map(|m| ManagedFieldsEntry {
            fields_v1: Some(FieldsV1(json!({"f:spec": {"f:replicas": {}}}))),
            subresource: None,
            ..m
        })
        .collect();
    meta.managed_fields = (!kept.is_empty()).then_some(kept);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_pod_keeps_what_the_pass_reads() {
        let p: WatchedPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "m", "uid": "u1", "labels": {"ebb.dev/service": "chat"},
                "generateName": "chat-7d9-",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "chat-7d9",
                    "uid": "u", "controller": true}],
                "annotations": {LAST_APPLIED: "{...}", "controller.kubernetes.io/pod-deletion-cost": "3",
                    "prometheus.io/scrape": "true"},
                "deletionTimestamp": "2026-12-03T12:00:00Z",
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
            "spec": {"volumes": [{"name": "v"}], "nodeName": "n",
                "readinessGates": [{"conditionType": "example.dev/ready"}],
                "containers": [
                    {"name": "model", "image": "m:1", "env": [{"name": "HF_TOKEN", "value": "x"}]},
                    {"name": "queue-proxy", "image": "ebb", "env": [
                        {"name": "EBB_UPSTREAM", "value": "127.0.0.1:8080"},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "EBB_CONTAINER_CONCURRENCY", "valueFrom": {"fieldRef": {
                            "fieldPath": "metadata.annotations['ebb.dev/container-concurrency']"}}}]}]},
            "status": {"podIP": "10.0.0.1", "startTime": "2026-12-03T11:00:00Z", "hostIP": "1.2.3.4",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-03T11:00:09Z"}],
                "containerStatuses": [{"name": "model", "image": "m:1", "imageID": "sha", "ready": false,
                    "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1}}}]},
        }))
        .unwrap();
        assert_eq!((p.name(), p.namespace(), p.meta.uid.as_deref()), ("p", "m", Some("u1")));
        assert_eq!(p.labels().get("ebb.dev/service"), Some("chat"));
        let cost =
            BTreeMap::from([("controller.kubernetes.io/pod-deletion-cost".to_owned(), "3".to_owned())]);
        assert_eq!(p.annotations().to_map(), cost, "the deletion cost alone");
        assert!(p.meta.deleting.is_some() && p.meta.created.is_none());
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.containers.len(), 1, "the queue-proxy alone");
        let qp = &spec.containers[0];
        assert_eq!(qp.name, "queue-proxy");
        let env: Vec<(&str, Option<&str>, bool)> =
            (qp.env.iter().flatten()).map(|e| (e.name.as_str(), e.value.as_deref(), e.value_from)).collect();
        assert_eq!(
            env,
            [("EBB_UPSTREAM", Some("127.0.0.1:8080"), false), ("EBB_CONTAINER_CONCURRENCY", None, true)]
        );
        assert_eq!(spec.readiness_gates.as_ref().unwrap()[0].condition_type, "example.dev/ready");
        assert!(p.queue_proxy().is_some());
        let status = p.status.as_ref().unwrap();
        assert_eq!(status.pod_ip, Some([10, 0, 0, 1].into()));
        assert!(status.start_time.is_some());
        let conditions = PodConditions { ready: Some(true), ..PodConditions::default() };
        assert_eq!(status.conditions, conditions, "the one it reports");
        let model = &status.waiting_containers[0];
        assert_eq!((model.name.as_str(), model.reason.as_deref()), ("model", Some("CrashLoopBackOff")));
        assert!(crate::cluster::blocked::blocked(&WatchedPod { meta: Meta::default(), ..p }).is_some());
    }

    #[test]
    fn an_address_that_does_not_parse_is_none_and_the_pod_still_reads() {
        let read = |ip: serde_json::Value| {
            serde_json::from_value::<WatchedPodStatus>(json!({"podIP": ip})).unwrap().pod_ip
        };
        assert_eq!(read(json!("fd00::1")), Some("fd00::1".parse().unwrap()));
        assert_eq!(read(json!("10.0.0.300")), None);
        assert_eq!(read(json!("")), None);
        assert_eq!(read(json!(null)), None);
    }

    #[test]
    fn key_values_find_every_key_and_no_other() {
        let map = BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("ab".to_owned(), String::new()),
            ("ebb.dev/target".to_owned(), "5".to_owned()),
            ("z".to_owned(), "last".to_owned()),
        ]);
        let kept = KeyValues::from(map.clone());
        for (k, v) in &map {
            assert_eq!(kept.get(k), Some(v.as_str()), "{k}");
        }
        for absent in ["", "aa", "b", "ebb.dev", "zz"] {
            assert_eq!(kept.get(absent), None, "{absent}");
        }
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["a", "ab", "ebb.dev/target", "z"]);
        assert_eq!(kept.to_map(), map);
        let empty = KeyValues::default();
        assert_eq!((empty.get("a"), empty.iter().count()), (None, 0));
    }

    #[test]
    fn a_pods_conditions_keep_what_the_pass_reads_of_them() {
        let status = |conditions: serde_json::Value| -> PodConditions {
            serde_json::from_value::<WatchedPodStatus>(json!({"conditions": conditions})).unwrap().conditions
        };
        let read = status(json!([
            {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-12-03T11:00:00Z"},
            {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady"},
            {"type": "ContainersReady", "status": "True"},
            {"type": INSTANCE_READY_GATE, "status": "False", "reason": "InstanceNotReady"},
            {"type": "PodScheduled", "status": "True"},
        ]));
        let want = PodConditions {
            ready: Some(false),
            containers_ready: Some(true),
            instance_ready: Some(false),
            unschedulable: None,
        };
        assert_eq!(read, want);
        let pending = status(json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available"}]));
        assert_eq!(pending.unschedulable.as_deref(), Some("0/3 nodes are available"));
        assert_eq!(pending.ready, None, "not reported");
        let waiting =
            status(json!([{"type": "PodScheduled", "status": "False", "reason": "SchedulerError"}]));
        assert_eq!(waiting.unschedulable, None, "only the scheduler's verdict that nothing fits");
        assert_eq!(status(json!(null)), PodConditions::default(), "the API writes an empty list as null");
    }

    #[test]
    fn the_pods_of_one_template_share_one_kept_spec_and_running_containers_keep_nothing() {
        let pod = |name: &str, upstream: &str| -> WatchedPod {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"containers": [{"name": "model", "image": "m:1"},
                    {"name": "queue-proxy", "env": [{"name": "EBB_UPSTREAM", "value": upstream}]}]},
                "status": {"containerStatuses": [
                    {"name": "model", "ready": true, "state": {"running": {"startedAt": "2026-12-05T10:00:00Z"}}},
                    {"name": "queue-proxy", "ready": true, "state": {"running": {}}}]},
            }))
            .unwrap()
        };
        let (a, b, other) =
            (pod("a", "127.0.0.1:8080"), pod("b", "127.0.0.1:8080"), pod("c", "127.0.0.1:9000"));
        assert!(Arc::ptr_eq(a.spec.as_ref().unwrap(), b.spec.as_ref().unwrap()), "one copy for both");
        assert!(!Arc::ptr_eq(a.spec.as_ref().unwrap(), other.spec.as_ref().unwrap()));
        assert_eq!(
            other.queue_proxy().unwrap().env.as_ref().unwrap()[0].value.as_deref(),
            Some("127.0.0.1:9000")
        );
        assert!(a.status.as_ref().unwrap().waiting_containers.is_empty(), "nothing waits");
    }

    #[test]
    fn a_native_sidecar_queue_proxy_is_kept_where_it_lives_and_the_other_containers_are_not() {
        let p: WatchedPod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [
                    {"name": "fetch-weights", "image": "w:1"},
                    {"name": "qp", "image": "ebb", "restartPolicy": "Always",
                     "env": [{"name": "EBB_UPSTREAM", "value": "127.0.0.1:8000"}]}],
                "containers": [{"name": "model", "image": "m:1"}, {"name": "metrics", "image": "x:1"}]},
        }))
        .unwrap();
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty());
        let init: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(init, ["qp"]);
        assert!(p.queue_proxy().is_some());
    }

    #[test]
    fn a_deployment_keeps_the_replicas_writers_of_its_managed_fields_and_its_selector_parsed() {
        let d: WatchedDeployment = serde_json::from_value(json!({
            "metadata": {"name": "chat", "annotations": {"ebb.dev/target": "5", LAST_APPLIED: "{...}"},
                "managedFields": [
                    {"manager": "kubectl", "operation": "Update", "time": "2026-12-03T12:00:09Z",
                     "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}}},
                    {"manager": "labeller", "operation": "Update", "fieldsV1": {"f:metadata": {}}}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "chat"}},
                "template": {"metadata": {"annotations": {"ebb.dev/target": "3"}},
                    "spec": {"volumes": [{"name": "v"}], "containers": [{"name": "model", "image": "m:1"}]}}},
            "status": {"readyReplicas": 2, "replicas": 2},
        }))
        .unwrap();
        let target = BTreeMap::from([("ebb.dev/target".to_owned(), "5".to_owned())]);
        assert_eq!(d.annotations().to_map(), target, "no kubectl copy");
        assert_eq!(d.annotations().get("ebb.dev/target"), Some("5"));
        assert_eq!(d.annotations().get("ebb.dev/window"), None);
        assert_eq!(d.name(), "chat");
        let at = "2026-12-03T12:00:09Z".parse().ok();
        assert_eq!(d.replicas_writers, [ReplicasWriter { manager: "kubectl".to_owned(), time: at }]);
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let chat = BTreeMap::from([("app".to_owned(), "chat".to_owned())]);
        assert!(
            spec.selector.matches(|k| chat.get(k).map(String::as_str)) && !spec.selector.matches(|_| None)
        );
        let template = &spec.template;
        assert_eq!(template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["ebb.dev/target"], "3");
        assert!(template.spec.as_ref().unwrap().containers.is_empty(), "no queue-proxy to keep");
        assert_eq!(d.status.as_ref().unwrap().ready_replicas, Some(2), "a group member's ready pods");
    }

    #[test]
    fn a_service_reads_past_its_spec_and_status_and_keeps_its_labels_and_annotations_apart() {
        let svc: WatchedService = serde_json::from_value(json!({
            "metadata": {"name": "chat", "labels": {"app.kubernetes.io/managed-by": "ebb"},
                "annotations": {LAST_APPLIED: "{...}", "status.ebb.dev/mode": "proxy"}},
            "spec": {"ports": [{"port": 80}], "selector": {"app": "chat"}, "type": "ClusterIP"},
            "status": {"loadBalancer": {}},
        }))
        .unwrap();
        assert_eq!(svc.labels().get("app.kubernetes.io/managed-by"), Some("ebb"));
        let mode = BTreeMap::from([("status.ebb.dev/mode".to_owned(), "proxy".to_owned())]);
        assert_eq!(svc.annotations().to_map(), mode, "no kubectl copy");
    }

    #[test]
    fn a_slice_of_either_version_reads_its_addresses_and_port() {
        let v1: WatchedSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "chat"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
                          {"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8012, "protocol": "TCP"}],
        }))
        .unwrap();
        assert_eq!((v1.addresses, v1.port), (vec!["10.0.0.1".to_owned(), "10.0.0.2".to_owned()], 8012));
        // v1beta1 as a v1.20 server writes an empty slice: no endpoints, no ports, as nulls.
        let empty: WatchedSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice", "metadata": {"name": "chat"},
            "addressType": "IPv4", "endpoints": null, "ports": null,
        }))
        .unwrap();
        assert_eq!((empty.addresses, empty.port), (vec![], 0));
    }
}
