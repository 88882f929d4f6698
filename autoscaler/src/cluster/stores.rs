//! The reflectors: local copies of everything the controller watches, kept current by watches. Labelled
//! Deployments and their pods, the Deployments of role groups (`ebb.dev/group`) (all namespaces, or the configured ones), the `config-autoscaler` ConfigMap and
//! the activator pods (own namespace), and the Services and ebb's EndpointSlices. Every event wakes the pass.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use ebb_config::groups::LABEL_GROUP;
use ebb_config::names::{CONFIG_MAP_NAME, LABEL_SERVICE};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::health::ApiHealth;
use super::slices::slice_selector;
use super::state::{Context, Signals};

/// The reflectors' stores.
pub(crate) struct Stores {
    pub deployments: Vec<Store<Deployment>>,
    /// The Deployments labelled `ebb.dev/group` (role groups' members, the entry included).
    pub groups: Vec<Store<Deployment>>,
    pub pods: Vec<Store<Pod>>,
    pub services: Vec<Store<Service>>,
    pub slices: Vec<Store<DynamicObject>>,
    pub config: Store<ConfigMap>,
    pub activators: Store<Pod>,
    /// With the webhook: the labelled ReplicaSets' metadata (a pod's way to its Deployment).
    pub replicasets: Vec<Store<PartialObjectMeta<ReplicaSet>>>,
    /// With the webhook: its certificates' Secret.
    pub webhook_secret: Option<Store<Secret>>,
    tasks: Vec<JoinHandle<()>>,
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
            ),
            activators: reflect(
                report_to,
                &mut tasks,
                Api::namespaced(client.clone(), &options.namespace),
                watcher::Config::default().labels(&options.activator_selector),
                (),
            ),
            replicasets: Vec::new(),
            webhook_secret: None,
            tasks: Vec::new(),
        };
        if let Some(webhook) = &options.webhook {
            // Watched by name, so that the Role may grant that one Secret only.
            let secrets = Api::namespaced(client.clone(), &options.namespace);
            let by_name = watcher::Config::default().fields(&format!("metadata.name={}", webhook.secret));
            stores.webhook_secret = Some(reflect(report_to, &mut tasks, secrets, by_name, ()));
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
            stores.deployments.push(reflect(report_to, &mut tasks, deployments, labelled.clone(), ()));
            let members = match ns {
                Some(ns) => Api::namespaced(c.clone(), ns),
                None => Api::all(c.clone()),
            };
            stores.groups.push(reflect(report_to, &mut tasks, members, grouped.clone(), ()));
            stores.pods.push(reflect(report_to, &mut tasks, pods, labelled.clone(), ()));
            stores.services.push(reflect(report_to, &mut tasks, services, watcher::Config::default(), ()));
            let slice_api = match ns {
                Some(ns) => Api::namespaced_with(c, ns, &slices),
                None => Api::all_with(c, &slices),
            };
            stores.slices.push(reflect(report_to, &mut tasks, slice_api, ours.clone(), slices.clone()));
            if options.webhook.is_some() {
                // Metadata only: the owner references are all the webhook reads.
                let replicasets = match ns {
                    Some(ns) => Api::<PartialObjectMeta<ReplicaSet>>::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                };
                stores.replicasets.push(reflect(report_to, &mut tasks, replicasets, labelled.clone(), ()));
            }
        }
        stores.tasks = tasks;
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

    /// The Service `namespace/name`, if any.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        let key = ObjectRef::new(name).within(namespace);
        self.services.iter().find_map(|s| s.get(&key))
    }

    /// ebb's EndpointSlice `namespace/name`, if any.
    pub fn slice(&self, namespace: &str, name: &str, resource: &ApiResource) -> Option<Arc<DynamicObject>> {
        let key = ObjectRef::new_with(name, resource.clone()).within(namespace);
        self.slices.iter().find_map(|s| s.get(&key))
    }
}

impl Drop for Stores {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A reflector whose every event wakes the pass and tells [`ApiHealth`] the API server answered.
pub(crate) fn reflect<K>(
    (health, signals): (&Arc<ApiHealth>, &Arc<Signals>),
    tasks: &mut Vec<JoinHandle<()>>,
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let (health, weak) = (health.clone(), Arc::downgrade(signals));
    tasks.push(tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let Some(signals) = weak.upgrade() else { return };
            match item {
                Ok(_) => {
                    health.ok();
                    signals.wake();
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
