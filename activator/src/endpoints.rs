//! What an endpoint source tells the activator: services, their data-plane settings, and their pods.
//!
//! Sources send whole pod sets per service (idempotent and simple to reason about); the activator works out
//! what changed. Two sources exist: Kubernetes (watches pods and Deployments) and local (fed by `ebb up`).

use std::net::SocketAddr;
use std::sync::Arc;

use ebb_config::DataPlaneSpec;
use tokio::sync::mpsc;

use crate::routing::ServiceKey;

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
}

impl PodInfo {
    /// A pod with an address that is not terminating or blocked.
    pub fn live(name: &str, addr: SocketAddr) -> Self {
        Self { name: name.into(), addr: Some(addr), terminating: false, blocked: None }
    }
}

/// A change reported by an endpoint source.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A service appeared or its settings changed.
    Service {
        /// The service.
        key: ServiceKey,
        /// Its data-plane settings (concurrency, timeouts, queue bounds, hosts, protocol).
        config: DataPlaneSpec,
    },
    /// A service is gone; its queued requests are refused.
    ServiceRemoved(ServiceKey),
    /// The complete set of pods a service has now.
    Pods {
        /// The service.
        key: ServiceKey,
        /// Every pod, in any state.
        pods: Vec<PodInfo>,
    },
    /// How many activators share the services' capacity (at least 1).
    Activators(usize),
    /// Whether the service is warm enough to bypass the activator (local mode, where the activator is also
    /// the gateway; the autoscaler decides, as it decides the EndpointSlice in a cluster).
    Mode {
        /// The service.
        key: ServiceKey,
        /// The request path.
        mode: Mode,
    },
}

/// Where a service's requests go, as the autoscaler decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Through the activator: counted, throttled to its capacity share, queued at zero.
    #[default]
    Proxy,
    /// Straight to the pods; used only while a pod is ready.
    Serve,
}

/// Where changes are sent; sources hold one.
pub type ChangeSender = mpsc::UnboundedSender<Change>;
