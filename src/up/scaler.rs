//! The local [`Scaler`]: replicas become pod processes, the mode goes to the in-process activator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ebb_activator::endpoints::{Change, ChangeSender};
use ebb_autoscaler::engine::Scaler;
use ebb_config::{Mode, ServiceId};
use ebb_process::sync::Locked;

use super::pods::PodManager;

/// Scales local pods and switches the activator between holding and passing through requests.
pub struct LocalScaler {
    pods: Arc<PodManager>,
    changes: ChangeSender,
    modes: Mutex<HashMap<ServiceId, Mode>>,
}

impl LocalScaler {
    /// A scaler over `pods`, telling the activator through `changes`.
    pub fn new(pods: Arc<PodManager>, changes: ChangeSender) -> Self {
        Self { pods, changes, modes: Mutex::default() }
    }
}

impl Scaler for LocalScaler {
    fn set_replicas(&self, service: &ServiceId, replicas: u32) {
        self.pods.scale(&service.name, replicas);
    }

    fn set_mode(&self, service: &ServiceId, mode: Mode) {
        self.modes.locked().insert(service.clone(), mode);
        // The one place the autoscaler's mode reaches the activator (serve: straight to the pods, uncounted).
        let _ = self.changes.send(Change::Mode { key: service.clone(), mode });
    }

    fn activator_in_path(&self, service: &ServiceId) -> bool {
        // The activator is the gateway: in proxy mode it holds every request, so it is in the path as soon as
        // the mode is set (the change is applied in order, before any later one).
        let modes = self.modes.locked();
        modes.get(service).is_none_or(|m| *m == Mode::Proxy)
    }
}
