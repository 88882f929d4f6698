//! The watches and their caches: local copies of everything the controller watches. Labelled Deployments and
//! their pods, the Deployments of role groups (`ebb.dev/group`) (all namespaces, or the configured ones), the
//! `config-autoscaler` ConfigMap and the activator pods (own namespace), and the Services and ebb's
//! EndpointSlices. Each keeps only what the controller reads ([`super::watched`]). An event marks the services
//! it touches for the next pass ([`Signals::touch`]); a relist marks them all, since the objects deleted while
//! the watch was away have no event of their own.
use std::sync::Arc;

use ebb_config::ServiceId;
use ebb_config::groups::LABEL_GROUP;
use ebb_config::names::{CONFIG_MAP_NAME, LABEL_SERVICE};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ApiResource;
use kube::core::NamespaceResourceScope;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, Resource};
use tokio::task::JoinHandle;

use super::cache::{Cache, Change, all_ready, cache};
use super::health::ApiHealth;
use super::pod_index::PodIndex;
use super::slices::slice_selector;
use super::state::{Context, Signals};
use super::watched::{
    Cached, WatchedDeployment, WatchedPod, WatchedReplicaSet, WatchedService, WatchedSlice, Whole,
};

/// The watches' caches.
pub(crate) struct Stores {
    pub deployments: Vec<Cache<WatchedDeployment>>,
    /// The Deployments labelled `ebb.dev/group` (role groups' members, the entry included).
    pub groups: Vec<Cache<WatchedDeployment>>,
    pub pods: Vec<Cache<WatchedPod>>,
    pub services: Vec<Cache<WatchedService>>,
    pub slices: Vec<Cache<WatchedSlice>>,
    pub config: Cache<Whole<ConfigMap>>,
    pub activators: Cache<WatchedPod>,
    /// With the webhook: the labelled ReplicaSets' metadata (a pod's way to its Deployment).
    pub replicasets: Vec<Cache<WatchedReplicaSet>>,
    /// With the webhook: its certificates' Secret.
    pub webhook_secret: Option<Cache<Whole<Secret>>>,
    /// The labelled pods by service.
    pub pod_index: Arc<PodIndex>,
    tasks: Watches,
}

impl Stores {
    /// Starts every watch.
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
            config: cached_watch(
                report_to,
                &mut tasks,
                api_in(client, Some(&options.namespace)),
                watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP_NAME}")),
                touch_all,
            ),
            // The pass compares the ready activators with the last it saw, and marks every service then.
            activators: cached_watch(
                report_to,
                &mut tasks,
                api_in(client, Some(&options.namespace)),
                watcher::Config::default().labels(&options.activator_selector),
                wake,
            ),
            replicasets: Vec::new(),
            webhook_secret: None,
            pod_index: pod_index.clone(),
            tasks: Watches::default(),
        };
        if let Some(webhook) = &options.webhook {
            // Watched by name, so that the Role may grant that one Secret only.
            let by_name = watcher::Config::default().fields(&format!("metadata.name={}", webhook.secret));
            stores.webhook_secret = Some(cached_watch(
                report_to,
                &mut tasks,
                api_in(client, Some(&options.namespace)),
                by_name,
                quiet,
            ));
        }
        for ns in namespaces {
            let watch = &mut tasks;
            stores.deployments.push(cached_watch(
                report_to,
                watch,
                api_in(client, ns),
                labelled.clone(),
                touch_by_name,
            ));
            stores.groups.push(cached_watch(
                report_to,
                watch,
                api_in(client, ns),
                grouped.clone(),
                touch_group,
            ));
            let by_service = index_pods(pod_index.clone(), ns.map(str::to_owned));
            stores.pods.push(cached_watch(
                report_to,
                watch,
                api_in(client, ns),
                labelled.clone(),
                by_service,
            ));
            let every = watcher::Config::default();
            stores.services.push(cached_watch(report_to, watch, api_in(client, ns), every, touch_by_name));
            let slice_api = match ns {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &slices),
                None => Api::all_with(client.clone(), &slices),
            };
            stores.slices.push(cached_watch(report_to, watch, slice_api, ours.clone(), touch_by_name));
            if options.webhook.is_some() {
                // Metadata only: the owner references are all the webhook reads.
                let replicasets = cached_watch(report_to, watch, api_in(client, ns), labelled.clone(), quiet);
                stores.replicasets.push(replicasets);
            }
        }
        stores.tasks = Watches(tasks);
        stores
    }

    /// Whether every watch has listed once (`false`: one of them gave up).
    pub async fn ready(&self) -> bool {
        all_ready(&self.deployments).await
            && all_ready(&self.groups).await
            && all_ready(&self.pods).await
            && self.activators.ready().await
            && all_ready(&self.services).await
            && all_ready(&self.slices).await
            && all_ready(&self.replicasets).await
            && self.config.ready().await
    }

    /// The labelled Deployment of service `id`, if any.
    pub fn deployment(&self, id: &ServiceId) -> Option<Arc<WatchedDeployment>> {
        self.deployments.iter().find_map(|c| c.get(&id.namespace, &id.name))
    }

    /// The services of every labelled Deployment.
    pub fn deployment_ids(&self) -> Vec<ServiceId> {
        self.deployments.iter().flat_map(Cache::state).map(|d| d.meta.service_id()).collect()
    }

    /// The pods labelled with service `id`'s name, in name order.
    pub fn labelled_pods(&self, id: &ServiceId) -> Vec<Arc<WatchedPod>> {
        let names = self.pod_index.names(id);
        names.iter().filter_map(|name| self.pods.iter().find_map(|c| c.get(&id.namespace, name))).collect()
    }

    /// The Service `namespace/name`, if any.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<WatchedService>> {
        self.services.iter().find_map(|c| c.get(namespace, name))
    }

    /// ebb's EndpointSlice `namespace/name`, if any.
    pub fn slice(&self, namespace: &str, name: &str) -> Option<Arc<WatchedSlice>> {
        self.slices.iter().find_map(|c| c.get(namespace, name))
    }

    /// `config-autoscaler`, if it exists.
    pub fn config_map(&self, namespace: &str) -> Option<Arc<Whole<ConfigMap>>> {
        self.config.get(namespace, CONFIG_MAP_NAME)
    }
}

/// `K`'s API in `namespace` (`None`: every namespace).
pub(crate) fn api_in<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The tasks of watches, stopped when this is dropped: a set of caches never outlives its watches.
#[derive(Debug, Default)]
pub(crate) struct Watches(pub Vec<JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A watch on `api` into a new cache: tells [`ApiHealth`] the API server answered at every event, and hands
/// every change to `on_change` once the cache has it.
pub(crate) fn cached_watch<K, E>(
    (health, signals): (&Arc<ApiHealth>, &Arc<Signals>),
    tasks: &mut Vec<JoinHandle<()>>,
    api: Api<K::Wire>,
    config: watcher::Config,
    mut on_change: E,
) -> Cache<K>
where
    K: Cached,
    E: FnMut(&Signals, &Change<K>, &Cache<K>) + Send + 'static,
{
    let (mut writer, cache) = cache();
    let stream = watcher(api, config).default_backoff();
    let (health, weak, reader) = (health.clone(), Arc::downgrade(signals), cache.clone());
    tasks.push(tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let Some(signals) = weak.upgrade() else { return };
            match item {
                Ok(event) => {
                    health.ok();
                    if let Some(change) = writer.apply(event) {
                        on_change(&signals, &change, &reader);
                    }
                }
                Err(err) => {
                    health.failed();
                    tracing::warn!("watch failed (retrying with backoff): {err}");
                }
            }
        }
    }));
    cache
}

/// Marks the service named as the object; after a relist, every service.
pub(crate) fn touch_by_name<K: Cached>(signals: &Signals, change: &Change<K>, _: &Cache<K>) {
    match change {
        Change::Applied(object) | Change::Deleted(object) => signals.touch(object.meta().service_id()),
        Change::Relisted => signals.touch_all(),
    }
}

/// A role group member: its own service (an entry is also a target) and the groups, sorted again.
fn touch_group(signals: &Signals, change: &Change<WatchedDeployment>, cache: &Cache<WatchedDeployment>) {
    touch_by_name(signals, change, cache);
    signals.touch_groups();
}

/// What concerns every service (the ConfigMap): marks them all.
fn touch_all<K>(signals: &Signals, _: &Change<K>, _: &Cache<K>) {
    signals.touch_all();
}

/// Runs the next pass without marking a service: the pass itself finds out whom it concerns.
fn wake<K>(signals: &Signals, _: &Change<K>, _: &Cache<K>) {
    signals.wake();
}

/// What the pass never reads (the webhook's caches): no pass at all.
fn quiet<K>(_: &Signals, _: &Change<K>, _: &Cache<K>) {}

/// A labelled pod: filed in `index`, and its service (and the one it left) marked. `namespace` is the watch's
/// (`None`: all), which a relist replaces.
fn index_pods(
    index: Arc<PodIndex>,
    namespace: Option<String>,
) -> impl FnMut(&Signals, &Change<WatchedPod>, &Cache<WatchedPod>) + Send + 'static {
    move |signals, change, cache| match change {
        Change::Applied(pod) => index.apply(pod).into_iter().for_each(|id| signals.touch(id)),
        Change::Deleted(pod) => index.delete(pod).into_iter().for_each(|id| signals.touch(id)),
        Change::Relisted => {
            index.relisted(namespace.as_deref(), cache.state());
            signals.touch_all();
        }
    }
}
