//! The labelled pods' names by service, kept by the pod watches' events, so that a pass that visits a few
//! services finds their pods without going through every pod in the cache.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use ebb_config::ServiceId;
use ebb_config::names::LABEL_SERVICE;
use ebb_process::sync::Locked;

use super::watched::WatchedPod;

#[derive(Debug, Default)]
struct Index {
    by_service: HashMap<ServiceId, BTreeSet<String>>,
    /// Each pod's service, by namespace and name (a pod's label may change).
    of_pod: HashMap<(String, String), ServiceId>,
}

impl Index {
    fn remove(&mut self, key: &(String, String)) -> Option<ServiceId> {
        let id = self.of_pod.remove(key)?;
        if let Some(names) = self.by_service.get_mut(&id) {
            names.remove(&key.1);
            if names.is_empty() {
                self.by_service.remove(&id);
            }
        }
        Some(id)
    }

    fn insert(&mut self, key: (String, String), id: ServiceId) {
        self.by_service.entry(id.clone()).or_default().insert(key.1.clone());
        self.of_pod.insert(key, id);
    }
}

/// The labelled pods' names by service.
#[derive(Debug, Default)]
pub(crate) struct PodIndex(Mutex<Index>);

fn key(pod: &WatchedPod) -> (String, String) {
    (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default())
}

fn service_of(pod: &WatchedPod) -> Option<ServiceId> {
    let service = pod.labels().get(LABEL_SERVICE)?;
    Some(ServiceId::new(pod.metadata.namespace.as_deref().unwrap_or_default(), service))
}

impl PodIndex {
    /// Files an added or changed pod under its service. Returns the services whose pods changed: the pod's,
    /// and the one it was filed under before if its label changed.
    pub fn apply(&self, pod: &WatchedPod) -> Vec<ServiceId> {
        let key = key(pod);
        let mut index = self.0.locked();
        let before = index.remove(&key);
        let now = service_of(pod);
        if let Some(id) = &now {
            index.insert(key, id.clone());
        }
        let left = before.filter(|b| Some(b) != now.as_ref());
        left.into_iter().chain(now).collect()
    }

    /// Forgets a deleted pod; returns the service it was filed under.
    pub fn delete(&self, pod: &WatchedPod) -> Option<ServiceId> {
        self.0.locked().remove(&key(pod))
    }

    /// Files `pods` anew after a watch listed them all, in `namespace` (`None`: every namespace).
    pub fn relisted<'p>(&self, namespace: Option<&str>, pods: impl IntoIterator<Item = &'p WatchedPod>) {
        let mut index = self.0.locked();
        let gone: Vec<(String, String)> =
            index.of_pod.keys().filter(|(ns, _)| namespace.is_none_or(|n| n == ns)).cloned().collect();
        for key in &gone {
            index.remove(key);
        }
        for pod in pods {
            if let Some(id) = service_of(pod) {
                index.insert(key(pod), id);
            }
        }
    }

    /// The names of `id`'s labelled pods, in name order.
    pub fn names(&self, id: &ServiceId) -> Vec<String> {
        self.0.locked().by_service.get(id).map(|names| names.iter().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, name: &str, service: Option<&str>) -> WatchedPod {
        let mut pod = WatchedPod::default();
        pod.metadata.namespace = Some(namespace.into());
        pod.metadata.name = Some(name.into());
        pod.labels =
            std::collections::BTreeMap::from_iter(service.map(|s| (LABEL_SERVICE.to_owned(), s.to_owned())))
                .into();
        pod
    }

    #[test]
    fn pods_are_found_by_their_service_as_they_come_change_and_go() {
        let index = PodIndex::default();
        let chat = ServiceId::new("m", "chat");
        let embed = ServiceId::new("m", "embed");
        let only = |id: &ServiceId| vec![id.clone()];
        assert_eq!(index.apply(&pod("m", "b", Some("chat"))), only(&chat));
        assert_eq!(index.apply(&pod("m", "a", Some("chat"))), only(&chat));
        assert_eq!(index.apply(&pod("m", "a", Some("chat"))), only(&chat), "a change of the same pod");
        assert_eq!(index.names(&chat), ["a", "b"]);
        assert_eq!(index.apply(&pod("m", "a", Some("embed"))), [chat.clone(), embed.clone()], "relabelled");
        assert_eq!(index.names(&chat), ["b"]);
        assert_eq!(index.names(&embed), ["a"]);
        assert_eq!(index.apply(&pod("m", "b", None)), only(&chat), "label removed");
        assert!(index.names(&chat).is_empty());
        assert_eq!(index.delete(&pod("m", "a", Some("embed"))), Some(embed.clone()));
        assert_eq!(index.delete(&pod("m", "a", Some("embed"))), None);
        assert!(index.names(&embed).is_empty());
    }

    #[test]
    fn a_relist_replaces_only_its_namespace() {
        let index = PodIndex::default();
        index.apply(&pod("m", "old", Some("chat")));
        index.apply(&pod("n", "other", Some("chat")));
        index.relisted(Some("m"), &[pod("m", "new", Some("chat"))]);
        assert_eq!(index.names(&ServiceId::new("m", "chat")), ["new"]);
        assert_eq!(index.names(&ServiceId::new("n", "chat")), ["other"]);
        index.relisted(None, &[]);
        assert!(index.names(&ServiceId::new("n", "chat")).is_empty());
    }
}
