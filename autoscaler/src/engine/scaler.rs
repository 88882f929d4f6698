//! Where the engine's decisions take effect, as a trait: the Kubernetes controller and local mode each
//! implement it.

use ebb_config::{Mode, ServiceId};

/// Where decisions take effect: Kubernetes (the Deployment's scale subresource and the EndpointSlice) or local
/// mode (processes and the in-process activator). Calls never block: an implementation hands the work to its
/// own task.
pub trait Scaler: Send + Sync + 'static {
    /// Applies a replica count.
    fn set_replicas(&self, service: &ServiceId, replicas: u32);
    /// Puts the activator in the request path (`Proxy`) or takes it out (`Serve`).
    fn set_mode(&self, service: &ServiceId, mode: Mode);
    /// Whether the activator is verified in `service`'s request path (replicas go to 0 only then).
    fn activator_in_path(&self, service: &ServiceId) -> bool;
    /// The service's phase or panic flag changed without a change of replicas or mode (which the calls above
    /// report): a scaler that publishes them may act. Nothing by default.
    fn status_moved(&self, service: &ServiceId) {
        let _ = service;
    }
    /// Whether at least one activator is ready (without one, serve mode is forced).
    fn activators_ready(&self) -> bool {
        true
    }
}
