//! The reflectors: local copies of everything the controller watches, kept current by watches. Labelled
//! Deployments and their pods, the Deployments of role groups (`ebb.dev/group`) (all namespaces, or the
//! configured ones), the `config-autoscaler` ConfigMap and the activator pods (own namespace), and the
//! Services and ebb's EndpointSlices. Each keeps only what the controller reads ([`super::watched`]). An event
//! marks the services it touches for the next pass ([`Signals::touch`]); a relist marks them all, since the
//! objects deleted while the watch was away have no event of their own.
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use ebb_config::ServiceId;
use ebb_config::groups::LABEL_GROUP;
use ebb_config::names::{CONFIG_MAP_NAME, LABEL_SERVICE};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ApiResource, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::health::ApiHealth;
use super::pod_index::PodIndex;
use super::slices::slice_selector;
use super::state::{Context, Signals};
use super::watched::{self, WatchedDeployment, WatchedPod, WatchedService, WatchedSlice};

/// The reflectors' stores.
pub(crate) struct Stores {
    pub deployments: Vec<Store<WatchedDeployment>>,
    /// The Deployments labelled `ebb.dev/group` (role groups' members, the entry included).
    pub groups: Vec<Store<WatchedDeployment>>,
    pub pods: Vec<Store<WatchedPod>>,
    pub services: Vec<Store<WatchedService>>,
    pub slices: Vec<Store<WatchedSlice>>,
    pub config: Store<ConfigMap>,
    pub activators: Store<WatchedPod>,
    /// With the webhook: the labelled ReplicaSets' metadata (a pod's way to its Deployment).
    pub replicasets: Vec<Store<PartialObjectMeta<ReplicaSet>>>,
    /// With the webhook: its certificates' Secret.
    pub webhook_secret: Option<Store<Secret>>,
    /// The labelled pods by service.
    pub pod_index: Arc<PodIndex>,
    tasks: Reflectors,
}

impl Stores {
    /// Starts every reflector.
    pub fn start(context: &Context, signals: &Arc<Signals>, slices: ApiResource) -> Self {
        let client = &context.client;
        let options = &context.options;
        let report_to = (&context.health, signals);
        let mut tasks = Vec::new();
        let namespaces: Vec<Option<&str>> = if options.watch_namespaces.is_empty() {
            vec![None]
        } else {
            options.watch_namespaces.iter().map(|n| Some(n.as_str())).collect()
        };
        let labelled = watcher::Config::default().labels(LABEL_SERVICE);
        let grouped = watcher::Config::default().labels(LABEL_GROUP);
        let ours = watcher::Config::default().labels(&slice_selector());
        let pod_index = Arc::new(PodIndex::default());
        let mut stores = Self {
            deployments: Vec::new(),
            groups: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            slices: Vec::new(),
            config: reflect(
                report_to,
                &mut tasks,
                Api::namespaced(client.clone(), &options.namespace),
                watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP_NAME}")),
                (),
                (|_: &mut ConfigMap| {}, touch_all),
            ),
            activators: reflect(
                report_to,
                &mut tasks,
                Api::namespaced(client.clone(), &options.namespace),
                watcher::Config::default().labels(&options.activator_selector),
                (),
                // The pass compares the ready activators with the last it saw, and marks every service then.
                (watched::pod, wake),
            ),
            replicasets: Vec::new(),
            webhook_secret: None,
            pod_index: pod_index.clone(),
            tasks: Reflectors::default(),
        };
        if let Some(webhook) = &options.webhook {
            // Watched by name, so that the Role may grant that one Secret only.
            let secrets = Api::namespaced(client.clone(), &options.namespace);
            let by_name = watcher::Config::default().fields(&format!("metadata.name={}", webhook.secret));
            stores.webhook_secret =
                Some(reflect(report_to, &mut tasks, secrets, by_name, (), (|_: &mut Secret| {}, quiet)));
        }
        for ns in namespaces {
            let c = client.clone();
            let api = |c: kube::Client| match ns {
                Some(ns) => {
                    (Api::namespaced(c.clone(), ns), Api::namespaced(c.clone(), ns), Api::namespaced(c, ns))
                }
                None => (Api::all(c.clone()), Api::all(c.clone()), Api::all(c)),
            };
            let (deployments, pods, services) = api(c.clone());
            let touch = (watched::deployment, touch_by_name::<WatchedDeployment>);
            stores.deployments.push(reflect(report_to, &mut tasks, deployments, labelled.clone(), (), touch));
            let members = match ns {
                Some(ns) => Api::namespaced(c.clone(), ns),
                None => Api::all(c.clone()),
            };
            stores.groups.push(reflect(
                report_to,
                &mut tasks,
                members,
                grouped.clone(),
                (),
                (watched::deployment, touch_group),
            ));
            let by_service = index_pods(pod_index.clone(), ns.map(str::to_owned));
            stores.pods.push(reflect(
                report_to,
                &mut tasks,
                pods,
                labelled.clone(),
                (),
                (watched::pod, by_service),
            ));
            let touch = (watched::service, touch_by_name::<WatchedService>);
            stores.services.push(reflect(
                report_to,
                &mut tasks,
                services,
                watcher::Config::default(),
                (),
                touch,
            ));
            let slice_api = match ns {
                Some(ns) => Api::namespaced_with(c, ns, &slices),
                None => Api::all_with(c, &slices),
            };
            let touch = (watched::slice, touch_by_name::<WatchedSlice>);
            stores.slices.push(reflect(
                report_to,
                &mut tasks,
                slice_api,
                ours.clone(),
                slices.clone(),
                touch,
            ));
            if options.webhook.is_some() {
                // Metadata only: the owner references are all the webhook reads.
                let replicasets = match ns {
                    Some(ns) => Api::<PartialObjectMeta<ReplicaSet>>::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                };
                let owners_only = |r: &mut PartialObjectMeta<ReplicaSet>| r.metadata.managed_fields = None;
                stores.replicasets.push(reflect(
                    report_to,
                    &mut tasks,
                    replicasets,
                    labelled.clone(),
                    (),
                    (owners_only, quiet),
                ));
            }
        }
        stores.tasks = Reflectors(tasks);
        stores
    }

    /// Whether every reflector has listed once (`false`: one of them gave up).
    pub async fn ready(&self) -> bool {
        for s in self.deployments.iter().chain(&self.groups) {
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
        for s in &self.replicasets {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        self.config.wait_until_ready().await.is_ok()
    }

    /// The labelled Deployment of service `id`, if any.
    pub fn deployment(&self, id: &ServiceId) -> Option<Arc<WatchedDeployment>> {
        let key = ObjectRef::new(&id.name).within(&id.namespace);
        self.deployments.iter().find_map(|s| s.get(&key))
    }

    /// The services of every labelled Deployment.
    pub fn deployment_ids(&self) -> Vec<ServiceId> {
        self.deployments.iter().flat_map(Store::state).map(|d| named(&*d)).collect()
    }

    /// The pods labelled with service `id`'s name, in name order.
    pub fn labelled_pods(&self, id: &ServiceId) -> Vec<Arc<WatchedPod>> {
        self.pod_index
            .names(id)
            .iter()
            .filter_map(|name| {
                let key = ObjectRef::new(name).within(&id.namespace);
                self.pods.iter().find_map(|s| s.get(&key))
            })
            .collect()
    }

    /// The Service `namespace/name`, if any.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<WatchedService>> {
        let key = ObjectRef::new(name).within(namespace);
        self.services.iter().find_map(|s| s.get(&key))
    }

    /// ebb's EndpointSlice `namespace/name`, if any.
    pub fn slice(&self, namespace: &str, name: &str, resource: &ApiResource) -> Option<Arc<WatchedSlice>> {
        let key = ObjectRef::new_with(name, resource.clone()).within(namespace);
        self.slices.iter().find_map(|s| s.get(&key))
    }
}

/// The tasks of reflectors, stopped when this is dropped: a set of stores never outlives its watches.
#[derive(Debug, Default)]
pub(crate) struct Reflectors(pub Vec<JoinHandle<()>>);

impl Drop for Reflectors {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Whether `store` has listed once (before, what it lacks is unseen, not absent).
pub(crate) fn listed<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// A reflector that keeps what `trim` leaves of each object, tells [`ApiHealth`] the API server answered at
/// every event, and hands every event to `on_event` once its store has it.
pub(crate) fn reflect<K, T, E>(
    (health, signals): (&Arc<ApiHealth>, &Arc<Signals>),
    tasks: &mut Vec<JoinHandle<()>>,
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    (trim, mut on_event): (T, E),
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
    T: FnMut(&mut K) + Send + 'static,
    E: FnMut(&Signals, &Event<K>, &Store<K>) + Send + 'static,
{
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff().modify(trim));
    let (health, weak, store) = (health.clone(), Arc::downgrade(signals), reader.clone());
    tasks.push(tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let Some(signals) = weak.upgrade() else { return };
            match item {
                Ok(event) => {
                    health.ok();
                    on_event(&signals, &event, &store);
                }
                Err(err) => {
                    health.failed();
                    tracing::warn!("watch failed (retrying with backoff): {err}");
                }
            }
        }
    }));
    reader
}

/// The service an object stands for by its namespace and name (a scale target, its public Service, its
/// EndpointSlice).
fn named<K: Resource>(object: &K) -> ServiceId {
    let meta = object.meta();
    ServiceId::new(meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default())
}

/// Marks the service named as the object; after a relist, every service.
pub(crate) fn touch_by_name<K>(signals: &Signals, event: &Event<K>, _: &Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    match event {
        Event::Apply(object) | Event::Delete(object) => signals.touch(named(object)),
        Event::InitDone => signals.touch_all(),
        // A list in progress is not in the store yet: its end (`InitDone`) marks everything.
        Event::Init | Event::InitApply(_) => {}
    }
}

/// A role group member: its own service (an entry is also a target) and the groups, sorted again.
fn touch_group(signals: &Signals, event: &Event<WatchedDeployment>, store: &Store<WatchedDeployment>) {
    touch_by_name(signals, event, store);
    if matches!(event, Event::Apply(_) | Event::Delete(_) | Event::InitDone) {
        signals.touch_groups();
    }
}

/// What concerns every service (the ConfigMap): marks them all.
fn touch_all<K>(signals: &Signals, event: &Event<K>, _: &Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    if matches!(event, Event::Apply(_) | Event::Delete(_) | Event::InitDone) {
        signals.touch_all();
    }
}

/// Runs the next pass without marking a service: the pass itself finds out whom it concerns.
fn wake<K>(signals: &Signals, event: &Event<K>, _: &Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    if matches!(event, Event::Apply(_) | Event::Delete(_) | Event::InitDone) {
        signals.wake();
    }
}

/// What the pass never reads (the webhook's caches): no pass at all.
fn quiet<K>(_: &Signals, _: &Event<K>, _: &Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
}

/// A labelled pod: filed in `index`, and its service (and the one it left) marked. `namespace` is the watch's
/// (`None`: all), which a relist replaces.
fn index_pods(
    index: Arc<PodIndex>,
    namespace: Option<String>,
) -> impl FnMut(&Signals, &Event<WatchedPod>, &Store<WatchedPod>) + Send + 'static {
    move |signals, event, store| match event {
        Event::Apply(pod) => index.apply(pod).into_iter().for_each(|id| signals.touch(id)),
        Event::Delete(pod) => index.delete(pod).into_iter().for_each(|id| signals.touch(id)),
        Event::InitDone => {
            let pods = store.state();
            index.relisted(namespace.as_deref(), pods.iter().map(|p| &**p));
            signals.touch_all();
        }
        Event::Init | Event::InitApply(_) => {}
    }
}
