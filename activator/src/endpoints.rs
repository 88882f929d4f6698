//! What an endpoint source tells the activator: services, their data-plane settings, and their pods.
//!
//! Sources send whole pod sets per service (idempotent and simple to reason about); the activator works out
//! what changed. Sources implement [`EndpointSource`]; two exist: Kubernetes
//! ([`crate::kube_source::KubeSource`], watches pods and Deployments) and local ([`LocalSource`], fed by `ebb up`).

use std::net::SocketAddr;
use std::sync::Arc;

use ebb_config::ServiceId;
use ebb_config::{DataPlaneSpec, Mode};
use futures::future::BoxFuture;
use tokio::sync::mpsc;

/// One pod of a service as its source sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    /// The pod's name, unique within the service.
    pub name: Arc<str>,
    /// The queue-proxy's data address, once the pod has an IP. The activator probes it before using it.
    pub addr: Option<SocketAddr>,
    /// The pod is being deleted: no new requests go to it.
    pub terminating: bool,
    /// Why the pod cannot start, when its status says so (unschedulable, image pull failure, crash loop).
    pub blocked: Option<String>,
    /// The kubelet's readiness verdict, where there is a kubelet (`None` in local mode). The activator uses a
    /// pod as soon as its own probe passes, before the kubelet says Ready; a pod that was Ready and is reported
    /// not Ready (draining, its container failing) leaves the rotation until it answers the probe again.
    pub ready: Option<bool>,
    /// The pod is the entry of a multi-pod instance whose other pods are not all ready yet (its
    /// `ebb.dev/instance-ready` readiness gate is not True): it takes no request until it is, whatever its
    /// own probe says.
    pub held: bool,
}

impl PodInfo {
    /// A pod with an address that is not terminating or blocked, and no kubelet verdict.
    pub fn live(name: &str, addr: SocketAddr) -> Self {
        Self {
            name: name.into(),
            addr: Some(addr),
            terminating: false,
            blocked: None,
            ready: None,
            held: false,
        }
    }
}

/// A change reported by an endpoint source.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A service appeared or its settings changed.
    Service {
        /// The service.
        key: ServiceId,
        /// Its data-plane settings (concurrency, timeouts, queue bounds, hosts, protocol).
        config: DataPlaneSpec,
    },
    /// A service is gone; its queued requests are refused.
    ServiceRemoved(ServiceId),
    /// The complete set of pods a service has now.
    Pods {
        /// The service.
        key: ServiceId,
        /// Every pod, in any state.
        pods: Vec<PodInfo>,
    },
    /// How many activators share the services' capacity (at least 1).
    Activators(usize),
    /// Whether the service is warm enough to bypass the activator (local mode, where the activator is also
    /// the gateway; the autoscaler decides, as it decides the EndpointSlice in a cluster).
    Mode {
        /// The service.
        key: ServiceId,
        /// The request path.
        mode: Mode,
    },
}

/// Where changes are sent; sources hold one.
pub type ChangeSender = mpsc::UnboundedSender<Change>;

/// Where the activator learns its services and their pods. [`crate::registry::Registry::follow_source`] runs
/// one and applies what it sends.
pub trait EndpointSource: Send {
    /// Sends every change to `changes` as it happens (no polling interval), until the source ends.
    fn run(self: Box<Self>, changes: ChangeSender) -> BoxFuture<'static, ()>;
}

/// The local source: `ebb up` feeds it through the sender [`LocalSource::new`] returns as it starts services
/// and pods, and it passes each change on. It ends when every feeding sender is dropped.
#[derive(Debug)]
pub struct LocalSource {
    fed: mpsc::UnboundedReceiver<Change>,
}

impl LocalSource {
    /// A source and the sender that feeds it.
    pub fn new() -> (ChangeSender, Self) {
        let (feed, fed) = mpsc::unbounded_channel();
        (feed, Self { fed })
    }
}

impl EndpointSource for LocalSource {
    fn run(mut self: Box<Self>, changes: ChangeSender) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            while let Some(change) = self.fed.recv().await {
                if changes.send(change).is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::registry::Registry;

    #[tokio::test]
    async fn the_local_source_passes_what_it_is_fed_to_the_registry() {
        let registry = Arc::new(Registry::new(true, 100, Arc::new(Metrics::new())));
        let (feed, source) = LocalSource::new();
        let following = tokio::spawn(registry.clone().follow_source(Box::new(source)));
        let key = ServiceId::new("default", "demo");
        let config = ebb_config::ServiceConfig::default().data_plane;
        feed.send(Change::Service { key: key.clone(), config }).unwrap();
        feed.send(Change::Pods { key: key.clone(), pods: vec![] }).unwrap();
        drop(feed);
        // Every change is applied before the source ends, and the registry stops following when it does.
        following.await.unwrap();
        assert!(registry.get(&key).is_some());
    }
}
