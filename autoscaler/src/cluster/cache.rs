//! A watch's local copy of what it watches: its objects in the form their type keeps ([`Cached`]), by
//! namespace and name, replaced whole when the watch lists again. kube's reflector store would key each object
//! by four strings of its own (name, namespace, uid, resource version) beside the object's whole `ObjectMeta`;
//! a cache keys an object by the name the object holds, and keeps one copy of each namespace's name for all
//! its objects. At 10,000 services of a Deployment, three pods, a Service and an EndpointSlice each, that is
//! most of the controller's memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ebb_process::sync::ReadWrite;
use kube::Resource;
use kube::runtime::watcher::Event;
use tokio::sync::watch;

use super::watched::Cached;

/// Objects by namespace, then name; the keys are the objects' own names.
type Objects<K> = HashMap<Arc<str>, HashMap<Arc<str>, Arc<K>>>;

/// What one event of a watch changed in its cache, as the event's handler learns it once the cache has it.
#[derive(Debug)]
pub(crate) enum Change<K> {
    /// The object was added or changed.
    Applied(Arc<K>),
    /// The object was deleted (as the cache last had it, or as the deletion reported it).
    Deleted(Arc<K>),
    /// The watch listed everything again: objects deleted while it was away have no event of their own.
    Relisted,
}

/// The reading side of a cache; clones share it.
#[derive(Debug)]
pub(crate) struct Cache<K> {
    objects: Arc<RwLock<Objects<K>>>,
    listed: watch::Receiver<bool>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self { objects: self.objects.clone(), listed: self.listed.clone() }
    }
}

/// The writing side of a cache: its watch's task applies every event through it.
#[derive(Debug)]
pub(crate) struct Writer<K> {
    objects: Arc<RwLock<Objects<K>>>,
    listed: watch::Sender<bool>,
    /// The objects of a list in progress, which replace the cache's when the list ends: until then the
    /// readers see what the cache had.
    relist: Option<Objects<K>>,
}

/// An empty cache, and the writer that fills it.
pub(crate) fn cache<K>() -> (Writer<K>, Cache<K>) {
    let objects = Arc::new(RwLock::new(Objects::default()));
    let (listed, listed_rx) = watch::channel(false);
    (Writer { objects: objects.clone(), listed, relist: None }, Cache { objects, listed: listed_rx })
}

impl<K: Cached> Cache<K> {
    /// The object `namespace/name`, if the watch has seen it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.objects.read_locked().get(namespace)?.get(name).cloned()
    }

    /// Every object, in no particular order.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.objects.read_locked().values().flat_map(|names| names.values().cloned()).collect()
    }

    /// Whether the watch has listed once (before, what the cache lacks is unseen, not absent).
    pub fn listed(&self) -> bool {
        *self.listed.borrow()
    }

    /// Waits until the watch has listed once; `false` if its task ended before.
    pub async fn ready(&self) -> bool {
        let mut listed = self.listed.clone();
        loop {
            if *listed.borrow_and_update() {
                return true;
            }
            if listed.changed().await.is_err() {
                return *listed.borrow();
            }
        }
    }
}

impl<K: Cached> Writer<K> {
    /// Applies one event of the watch; returns what it changed for the readers (nothing while a list is in
    /// progress).
    pub fn apply(&mut self, event: Event<K::Wire>) -> Option<Change<K>> {
        match event {
            Event::Apply(wire) => {
                let kept = K::from(wire);
                Some(Change::Applied(insert(&mut self.objects.write_locked(), kept)))
            }
            Event::Delete(wire) => {
                // Found by the wire form's name: made into the kept form only if the cache never had it.
                let meta = wire.meta();
                let (namespace, name) =
                    (meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default());
                let removed = remove(&mut self.objects.write_locked(), namespace, name);
                Some(Change::Deleted(removed.unwrap_or_else(|| Arc::new(K::from(wire)))))
            }
            Event::Init => {
                self.relist = Some(Objects::default());
                None
            }
            Event::InitApply(wire) => {
                insert(self.relist.get_or_insert_default(), K::from(wire));
                None
            }
            Event::InitDone => {
                *self.objects.write_locked() = self.relist.take().unwrap_or_default();
                self.listed.send_replace(true);
                Some(Change::Relisted)
            }
        }
    }
}

/// Files `kept` under its namespace and name, sharing the namespace's name with the objects already there.
fn insert<K: Cached>(objects: &mut Objects<K>, mut kept: K) -> Arc<K> {
    let namespace = match objects.get_key_value(&*kept.meta().namespace) {
        Some((shared, _)) => shared.clone(),
        None => kept.meta().namespace.clone(),
    };
    kept.meta_mut().namespace = namespace.clone();
    let name = kept.meta().name.clone();
    let kept = Arc::new(kept);
    objects.entry(namespace).or_default().insert(name, kept.clone());
    kept
}

/// Takes out the object `namespace/name`.
fn remove<K>(objects: &mut Objects<K>, namespace: &str, name: &str) -> Option<Arc<K>> {
    let names = objects.get_mut(namespace)?;
    let removed = names.remove(name);
    if names.is_empty() {
        objects.remove(namespace);
    }
    removed
}

/// Whether every one of `caches` has listed once, waiting for those that have not.
pub(crate) async fn all_ready<K: Cached>(caches: &[Cache<K>]) -> bool {
    for cache in caches {
        if !cache.ready().await {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cluster::watched::{ServiceWire, WatchedService};

    fn service(namespace: &str, name: &str, mode: &str) -> ServiceWire {
        serde_json::from_value(json!({"metadata": {"namespace": namespace, "name": name,
            "annotations": {"status.ebb.dev/mode": mode}}}))
        .unwrap()
    }

    fn mode(cache: &Cache<WatchedService>, namespace: &str, name: &str) -> Option<String> {
        cache.get(namespace, name).and_then(|s| s.annotations().get("status.ebb.dev/mode").map(str::to_owned))
    }

    #[test]
    fn events_add_change_and_delete_objects_by_namespace_and_name() {
        let (mut writer, cache) = cache::<WatchedService>();
        assert!(!cache.listed());
        let change = writer.apply(Event::Apply(service("m", "chat", "proxy")));
        assert!(matches!(change, Some(Change::Applied(s)) if s.name() == "chat"));
        writer.apply(Event::Apply(service("m", "chat", "serve")));
        writer.apply(Event::Apply(service("other", "chat", "proxy")));
        assert_eq!(mode(&cache, "m", "chat").as_deref(), Some("serve"), "replaced");
        assert_eq!(mode(&cache, "other", "chat").as_deref(), Some("proxy"), "namespaces apart");
        assert_eq!(cache.state().len(), 2);

        // A deletion hands over the object as the cache had it.
        let change = writer.apply(Event::Delete(service("m", "chat", "")));
        let Some(Change::Deleted(gone)) = change else { panic!("{change:?}") };
        assert_eq!(gone.annotations().get("status.ebb.dev/mode"), Some("serve"));
        assert_eq!(cache.get("m", "chat").map(|s| s.name().to_owned()), None);
        // One the cache never had is reported as the deletion read it.
        let change = writer.apply(Event::Delete(service("m", "never", "x")));
        assert!(matches!(change, Some(Change::Deleted(s)) if s.name() == "never"));
    }

    #[test]
    fn a_relist_replaces_everything_at_its_end_and_objects_share_their_namespace() {
        let (mut writer, cache) = cache::<WatchedService>();
        writer.apply(Event::Apply(service("m", "old", "proxy")));
        assert!(writer.apply(Event::Init).is_none());
        assert!(writer.apply(Event::InitApply(service("m", "a", "proxy"))).is_none());
        assert!(writer.apply(Event::InitApply(service("m", "b", "serve"))).is_none());
        assert!(
            mode(&cache, "m", "old").is_some() && mode(&cache, "m", "a").is_none(),
            "the old state until the end"
        );
        assert!(!cache.listed());
        assert!(matches!(writer.apply(Event::InitDone), Some(Change::Relisted)));
        assert!(cache.listed());
        assert!(mode(&cache, "m", "old").is_none(), "gone while the watch was away");
        let (a, b) = (cache.get("m", "a").unwrap(), cache.get("m", "b").unwrap());
        assert!(Arc::ptr_eq(&a.meta.namespace, &b.meta.namespace), "one copy of the namespace");
        writer.apply(Event::Apply(service("m", "c", "proxy")));
        assert!(Arc::ptr_eq(&a.meta.namespace, &cache.get("m", "c").unwrap().meta.namespace));
    }

    #[tokio::test]
    async fn ready_waits_for_the_first_list_and_fails_when_the_watch_is_gone() {
        let (mut writer, cache) = cache::<WatchedService>();
        let waiting = tokio::spawn({
            let cache = cache.clone();
            async move { cache.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        writer.apply(Event::Init);
        writer.apply(Event::InitDone);
        assert!(waiting.await.unwrap());
        let (writer, never) = super::cache::<WatchedService>();
        drop(writer);
        assert!(!never.ready().await);
    }
}
