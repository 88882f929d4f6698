//! How the controller runs ([`Options`]) and the name it signs its work with: the field manager of every
//! write, the reporter of its Events and the default Lease.

use std::net::SocketAddr;
use std::time::Duration;

use kube::api::PatchParams;

use super::webhook::WebhookOptions;
use crate::engine::Options as EngineOptions;

/// The name the controller reports as (Events, field manager).
pub const CONTROLLER_NAME: &str = "ebb-autoscaler";

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The autoscaler's own namespace: `config-autoscaler`, the Lease and the activator pods live there.
    pub namespace: String,
    /// Namespaces whose Deployments are autoscaled; empty = all.
    pub watch_namespaces: Vec<String>,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    /// The Lease's name.
    pub lease_name: String,
    /// Lease timing.
    pub lease_duration: Duration,
    /// How often the leader renews the Lease.
    pub renew_interval: Duration,
    /// How often a follower looks at the Lease.
    pub retry_interval: Duration,
    /// Buckets the services are spread over, each with a Lease held by one replica (1: no buckets; the
    /// leader Lease's holder acts on every service).
    pub buckets: u32,
    /// The stat ingest's address (`:8080`).
    pub ingest_addr: SocketAddr,
    /// The metrics and health address (`:9090`).
    pub metrics_addr: SocketAddr,
    /// Identities allowed to send stats (`system:serviceaccount:NS:NAME`).
    pub ingest_identities: Vec<String>,
    /// Label selector of the activator pods in [`Self::namespace`].
    pub activator_selector: String,
    /// The activator's data port (probed, and the EndpointSlice's port).
    pub activator_port: u16,
    /// The queue-proxy's stats port on each pod.
    pub pod_stats_port: u16,
    /// The queue-proxy's data port on each pod (the EndpointSlice's port in serve mode).
    pub pod_data_port: u16,
    /// Whether the controller manages the public Service and its EndpointSlice.
    pub manage_request_path: bool,
    /// How often the services whose last pass left work undone (a held scale-down, a write in backoff, the
    /// activator not yet verified in the path) are visited again; the others are visited when an event
    /// touches them.
    pub sync_interval: Duration,
    /// How often every service is visited whatever the events: a safety net for an edge the marks missed
    /// (an event lost between a watch and the pass, a change in what the pass reads that no watch reports).
    pub resync_interval: Duration,
    /// Scale-downs stop when the API server has not answered for this long.
    pub api_stale_after: Duration,
    /// The engine's tuning (scrape timeout, tick interval).
    pub engine: EngineOptions,
    /// The admission webhook that injects the queue-proxy; `None`: not served.
    pub webhook: Option<WebhookOptions>,
}

impl Options {
    /// Defaults for a replica named `identity` in `namespace`.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        use ebb_config::names::*;
        let namespace = namespace.into();
        Self {
            ingest_identities: vec![format!("system:serviceaccount:{namespace}:ebb-activator")],
            namespace,
            watch_namespaces: Vec::new(),
            identity: identity.into(),
            lease_name: CONTROLLER_NAME.to_owned(),
            lease_duration: Duration::from_secs(10),
            renew_interval: Duration::from_secs(2),
            retry_interval: Duration::from_secs(1),
            buckets: 1,
            ingest_addr: SocketAddr::from(([0, 0, 0, 0], AUTOSCALER_INGEST_PORT)),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], AUTOSCALER_METRICS_PORT)),
            activator_selector: format!(
                "{LABEL_PART_OF}={PART_OF_EBB},{LABEL_COMPONENT}={COMPONENT_ACTIVATOR}"
            ),
            activator_port: ACTIVATOR_DATA_PORT,
            pod_stats_port: QUEUE_PROXY_STATS_PORT,
            pod_data_port: QUEUE_PROXY_DATA_PORT,
            manage_request_path: true,
            sync_interval: Duration::from_millis(500),
            resync_interval: Duration::from_secs(30),
            api_stale_after: Duration::from_secs(10),
            engine: EngineOptions::default(),
            webhook: None,
        }
    }
}

/// The field manager of every write.
pub fn patch_params() -> PatchParams {
    PatchParams { field_manager: Some(CONTROLLER_NAME.to_owned()), ..Default::default() }
}
