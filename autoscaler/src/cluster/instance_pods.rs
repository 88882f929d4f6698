//! The watches of every pod of multi-pod instances, the roles without the queue-proxy included (a
//! LeaderWorkerSet's workers, prefill pods): they carry no `ebb.dev/service` label, so the pod watch of
//! [`super::stores`] does not see them. One watch per distinct name label of the listed kinds'
//! [`InstanceShape`]s (pods that carry the label at all), started and stopped as `config-autoscaler` changes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ebb_config::ServiceId;
use ebb_config::targets::InstanceShape;
use kube::Client;
use kube::runtime::watcher;

use super::cache::{Cache, Change};
use super::health::ApiHealth;
use super::state::Signals;
use super::stores::{Watches, api_in, cached_watch};
use super::watched::WatchedPod;

/// Marks the service of an instance pod: the target named by its `label`; after a relist, every service.
fn touch(label: &str) -> impl FnMut(&Signals, &Change<WatchedPod>, &Cache<WatchedPod>) + Send + 'static {
    let label = label.to_owned();
    move |signals, change, _| match change {
        Change::Applied(pod) | Change::Deleted(pod) => {
            if let Some(name) = pod.labels().get(&label) {
                signals.touch(ServiceId::new(pod.meta.namespace.clone(), name));
            }
        }
        Change::Relisted => signals.touch_all(),
    }
}

/// Pods by namespace and target name.
pub(crate) type ByTarget = HashMap<(String, String), Vec<Arc<WatchedPod>>>;

/// The pods that carry one name label, in every watched namespace.
struct LabelWatch {
    caches: Vec<Cache<WatchedPod>>,
    _tasks: Watches,
}

/// The pods of multi-pod instances, by the name label of their kind.
pub(crate) struct InstancePods {
    client: Client,
    namespaces: Vec<Option<String>>,
    report_to: (Arc<ApiHealth>, Arc<Signals>),
    watches: HashMap<String, LabelWatch>,
}

impl InstancePods {
    /// No label watched yet; `namespaces` empty means all.
    pub fn new(client: Client, namespaces: &[String], health: Arc<ApiHealth>, signals: Arc<Signals>) -> Self {
        let namespaces =
            if namespaces.is_empty() { vec![None] } else { namespaces.iter().cloned().map(Some).collect() };
        Self { client, namespaces, report_to: (health, signals), watches: HashMap::new() }
    }

    /// Watches exactly the name labels of `shapes`.
    pub fn sync<'a>(&mut self, shapes: impl IntoIterator<Item = &'a InstanceShape>) {
        let wanted: BTreeSet<&str> = shapes.into_iter().map(|s| s.name_label.as_str()).collect();
        self.watches.retain(|label, _| wanted.contains(label.as_str()));
        for label in wanted {
            if self.watches.contains_key(label) {
                continue;
            }
            tracing::info!(label, "watching the pods of multi-pod instances labelled {label}");
            let (health, signals) = &self.report_to;
            let config = watcher::Config::default().labels(label);
            let mut tasks = Vec::new();
            let caches = (self.namespaces.iter())
                .map(|ns| {
                    let api = api_in(&self.client, ns.as_deref());
                    cached_watch((health, signals), &mut tasks, api, config.clone(), touch(label))
                })
                .collect();
            self.watches.insert(label.to_owned(), LabelWatch { caches, _tasks: Watches(tasks) });
        }
    }

    /// Whether the watch of `label` has listed once (before, an instance's other pods are unseen, not
    /// missing).
    pub fn synced(&self, label: &str) -> bool {
        self.watches.get(label).is_some_and(|w| w.caches.iter().all(Cache::listed))
    }

    /// The pods labelled `label`, by namespace and the label's value (the target's name): one pass over
    /// the cache, whatever the number of targets.
    pub fn by_target(&self, label: &str) -> ByTarget {
        let mut found = ByTarget::new();
        for pod in self.watches.get(label).into_iter().flat_map(|w| &w.caches).flat_map(Cache::state) {
            let Some(value) = pod.labels().get(label).map(str::to_owned) else { continue };
            found.entry((pod.namespace().to_owned(), value)).or_default().push(pod);
        }
        found
    }
}
