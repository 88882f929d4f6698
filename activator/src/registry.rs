//! Every service the activator knows, the route table built from them, and the application of changes from an
//! endpoint source.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use dashmap::DashMap;
use ebb_config::ServiceId;
use ebb_process::sync::{Locked, ReadWrite};
use http::{HeaderMap, Uri};
use tokio::sync::mpsc;

use crate::endpoints::{Change, EndpointSource, PodInfo};
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::routing::{RouteError, RouteTable};
use crate::service::Service;

/// The services, their routes and the shared probe client.
#[derive(Debug)]
pub struct Registry {
    /// Read on every request, written when a service appears or goes: a sharded map, so that readers on
    /// different services never meet on one lock.
    services: DashMap<ServiceId, Arc<Service>>,
    /// The latest pods of services not configured yet: the pod and Deployment watches are independent, so
    /// pods may come first (an activator starting up lists both at once), and are applied when the service
    /// appears rather than lost until the pods next change.
    pending_pods: Mutex<HashMap<ServiceId, Vec<PodInfo>>>,
    routes: RwLock<Arc<RouteTable>>,
    activators: Arc<AtomicUsize>,
    prober: Prober,
    metrics: Arc<Metrics>,
    local_mode: bool,
    global_queue_cap: u32,
}

impl Registry {
    /// An empty registry. `global_queue_cap` bounds each service's queue (the activator's `--max-queued-total`, 10,000 by default).
    pub fn new(local_mode: bool, global_queue_cap: u32, metrics: Arc<Metrics>) -> Self {
        Self {
            services: DashMap::new(),
            pending_pods: Mutex::default(),
            routes: RwLock::new(Arc::new(RouteTable::new(local_mode))),
            activators: Arc::new(AtomicUsize::new(1)),
            prober: Prober::new(),
            metrics,
            local_mode,
            global_queue_cap,
        }
    }

    /// The probe client, for re-probing a pod that failed.
    pub fn prober(&self) -> &Prober {
        &self.prober
    }

    /// The service a request is for.
    pub fn route(&self, uri: &Uri, headers: &HeaderMap) -> Result<Arc<Service>, RouteError> {
        let key = self.routes.read_locked().route(uri, headers)?;
        self.get(&key).ok_or_else(|| RouteError::Unknown(key.to_string()))
    }

    /// The service a request is for, by the fields it routes by.
    pub fn route_fields(&self, fields: &crate::routing::RouteFields<'_>) -> Result<Arc<Service>, RouteError> {
        let key = self.routes.read_locked().route_fields(fields)?;
        self.get(&key).ok_or_else(|| RouteError::Unknown(key.to_string()))
    }

    /// A service by key.
    pub fn get(&self, key: &ServiceId) -> Option<Arc<Service>> {
        self.services.get(key).map(|entry| entry.value().clone())
    }

    /// Every service.
    pub fn services(&self) -> Vec<Arc<Service>> {
        self.services.iter().map(|entry| entry.value().clone()).collect()
    }

    /// Applies one change from an endpoint source.
    pub fn apply(&self, change: Change) {
        match change {
            Change::Service { key, config } => {
                let existing = self.get(&key);
                match existing {
                    Some(service) => service.set_config(config),
                    None => {
                        let metrics = self.metrics.service(&key);
                        let (activators, cap) = (self.activators.clone(), self.global_queue_cap);
                        let service = Arc::new(Service::new(key.clone(), config, metrics, activators, cap));
                        self.services.insert(key.clone(), service.clone());
                        let pending = self.pending_pods.locked().remove(&key);
                        if let Some(pods) = pending {
                            service.set_pods(pods, &self.prober);
                        }
                    }
                }
                self.rebuild_routes();
            }
            Change::ServiceRemoved(key) => {
                self.pending_pods.locked().remove(&key);
                let removed = self.services.remove(&key).map(|(_, service)| service);
                if let Some(service) = removed {
                    service.remove();
                    self.metrics.remove_service(&key);
                }
                self.rebuild_routes();
            }
            Change::Pods { key, pods } => match self.get(&key) {
                Some(service) => service.set_pods(pods, &self.prober),
                None => {
                    tracing::debug!(service = %key, "pods for a service with no configuration yet; kept for it");
                    let mut pending = self.pending_pods.locked();
                    match pods.is_empty() {
                        true => pending.remove(&key),
                        false => pending.insert(key, pods),
                    };
                }
            },
            Change::Mode { key, mode } => match self.get(&key) {
                Some(service) => service.set_mode(mode),
                None => tracing::debug!(service = %key, "mode for an unknown service; ignored"),
            },
            Change::Activators(count) => {
                self.activators.store(count.max(1), Ordering::Relaxed);
                for service in self.services() {
                    service.rebuild();
                }
            }
        }
    }

    /// Applies changes until the source's sender is dropped.
    async fn follow(self: Arc<Self>, mut changes: mpsc::UnboundedReceiver<Change>) {
        while let Some(change) = changes.recv().await {
            self.apply(change);
        }
    }

    /// Runs `source` and applies its changes until it ends.
    pub async fn follow_source(self: Arc<Self>, source: Box<dyn EndpointSource>) {
        let (changes, received) = mpsc::unbounded_channel();
        tokio::join!(source.run(changes), self.follow(received));
    }

    fn rebuild_routes(&self) {
        let mut table = RouteTable::new(self.local_mode);
        let mut services = self.services();
        // Deterministic ownership of contested hosts: the first service by name keeps them.
        services.sort_by(|a, b| a.key.cmp(&b.key));
        for service in services {
            for (host, owner) in table.insert(service.key.clone(), &service.config().hosts) {
                tracing::warn!(service = %service.key, %host, %owner, "host name already routes to another service");
            }
        }
        *self.routes.write_locked() = Arc::new(table);
    }
}
