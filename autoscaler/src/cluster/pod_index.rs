//! The labelled pods' names by service, kept by the pod watches' events, so that a pass that visits a few
//! services finds their pods without going through every pod in the cache.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ebb_config::ServiceId;
use ebb_config::names::LABEL_SERVICE;
use ebb_process::sync::Locked;

use super::watched::WatchedPod;

/// A pod's name, shared by both directions of the index.
type Name = Arc<str>;

#[derive(Debug, Default)]
struct Index {
    /// Each service's pods' names, sorted (a few a service: a sorted vector, not a B-tree node of 11).
    by_service: HashMap<ServiceId, Vec<Name>>,
    /// Each pod's service, by namespace and name (a pod's label may change).
    of_pod: HashMap<Arc<str>, HashMap<Name, ServiceId>>,
}

impl Index {
    fn remove(&mut self, namespace: &str, name: &str) -> Option<ServiceId> {
        let pods = self.of_pod.get_mut(namespace)?;
        let id = pods.remove(name)?;
        if pods.is_empty() {
            self.of_pod.remove(namespace);
        }
        if let Some(names) = self.by_service.get_mut(&id) {
            names.retain(|n| &**n != name);
            if names.is_empty() {
                self.by_service.remove(&id);
            }
        }
        Some(id)
    }

    fn insert(&mut self, name: Name, id: ServiceId) {
        // One copy of the service's id for all its pods.
        let id = self.by_service.get_key_value(&id).map_or(id, |(shared, _)| shared.clone());
        let names = self.by_service.entry(id.clone()).or_default();
        if let Err(at) = names.binary_search(&name) {
            names.insert(at, name.clone());
        }
        self.of_pod.entry(id.namespace.clone()).or_default().insert(name, id);
    }
}

/// The labelled pods' names by service.
#[derive(Debug, Default)]
pub(crate) struct PodIndex(Mutex<Index>);

/// The service `pod` is labelled with.
fn service_of(pod: &WatchedPod) -> Option<ServiceId> {
    let service = pod.labels().get(LABEL_SERVICE)?;
    Some(ServiceId::new(pod.meta.namespace.clone(), service))
}

impl PodIndex {
    /// Files an added or changed pod under its service. Returns the services whose pods changed: the pod's,
    /// and the one it was filed under before if its label changed.
    pub fn apply(&self, pod: &WatchedPod) -> Vec<ServiceId> {
        let mut index = self.0.locked();
        let before = index.remove(pod.namespace(), pod.name());
        let now = service_of(pod);
        if let Some(id) = &now {
            index.insert(pod.meta.name.clone(), id.clone());
        }
        let left = before.filter(|b| Some(b) != now.as_ref());
        left.into_iter().chain(now).collect()
    }

    /// Forgets a deleted pod; returns the service it was filed under.
    pub fn delete(&self, pod: &WatchedPod) -> Option<ServiceId> {
        self.0.locked().remove(pod.namespace(), pod.name())
    }

    /// Files `pods` anew after a watch listed them all, in `namespace` (`None`: every namespace).
    pub fn relisted(&self, namespace: Option<&str>, pods: impl IntoIterator<Item = impl Borrow<WatchedPod>>) {
        let mut index = self.0.locked();
        let gone: Vec<(Arc<str>, Name)> = (index.of_pod.iter())
            .filter(|(ns, _)| namespace.is_none_or(|n| n == &***ns))
            .flat_map(|(ns, pods)| pods.keys().map(|name| (ns.clone(), name.clone())))
            .collect();
        for (ns, name) in &gone {
            index.remove(ns, name);
        }
        for pod in pods {
            let pod = pod.borrow();
            if let Some(id) = service_of(pod) {
                index.insert(pod.meta.name.clone(), id);
            }
        }
    }

    /// The names of `id`'s labelled pods, in name order.
    pub fn names(&self, id: &ServiceId) -> Vec<Name> {
        self.0.locked().by_service.get(id).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, name: &str, service: Option<&str>) -> WatchedPod {
        let mut pod = WatchedPod::default();
        pod.meta.namespace = namespace.into();
        pod.meta.name = name.into();
        let labels =
            std::collections::BTreeMap::from_iter(service.map(|s| (LABEL_SERVICE.to_owned(), s.to_owned())));
        pod.labels = Arc::new(labels.into());
        pod
    }

    fn names(index: &PodIndex, id: &ServiceId) -> Vec<String> {
        index.names(id).iter().map(|n| n.to_string()).collect()
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
        assert_eq!(names(&index, &chat), ["a", "b"]);
        assert_eq!(index.apply(&pod("m", "a", Some("embed"))), [chat.clone(), embed.clone()], "relabelled");
        assert_eq!(names(&index, &chat), ["b"]);
        assert_eq!(names(&index, &embed), ["a"]);
        assert_eq!(index.apply(&pod("m", "b", None)), only(&chat), "label removed");
        assert!(names(&index, &chat).is_empty());
        assert_eq!(index.delete(&pod("m", "a", Some("embed"))), Some(embed.clone()));
        assert_eq!(index.delete(&pod("m", "a", Some("embed"))), None);
        assert!(names(&index, &embed).is_empty());
    }

    #[test]
    fn a_relist_replaces_only_its_namespace() {
        let index = PodIndex::default();
        index.apply(&pod("m", "old", Some("chat")));
        index.apply(&pod("n", "other", Some("chat")));
        index.relisted(Some("m"), &[pod("m", "new", Some("chat"))]);
        assert_eq!(names(&index, &ServiceId::new("m", "chat")), ["new"]);
        assert_eq!(names(&index, &ServiceId::new("n", "chat")), ["other"]);
        index.relisted(None, &[]);
        assert!(names(&index, &ServiceId::new("n", "chat")).is_empty());
    }
}
