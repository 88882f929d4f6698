//! The autoscaler as a Kubernetes controller (`autoscaler` binary, `ebb autoscaler`): the [`engine`]
//! (collection, ticks, decisions) fed from watches, acting through a Kubernetes [`Scaler`]. Called `cluster`
//! (and its entry point [`ClusterController`]) so that neither the module nor the type is taken for the
//! `kube` crate or its `Controller`.
//!
//! - `stores`, `cache`, [`watched`]: watches on labelled Deployments, their pods, the `config-autoscaler`
//!   ConfigMap, Services, EndpointSlices and the activator pods, each into a cache that keeps only what the
//!   pass reads, in compact types;
//! - `targets`, `target_watches`, `selector`: scale targets of any kind (`scale-target-kinds`): one view of
//!   a Deployment or another object with its `scale` subresource, the watches of the other kinds, the pod
//!   selectors their scale subresources report;
//! - `instances`, `instance_pods`, `instance_gate`: multi-pod instances (a LeaderWorkerSet's groups): every
//!   pod of an instance watched, an entry counted ready only while its instance is whole, and its
//!   readiness gate written to match;
//! - `reconcile`: the pass that turns them into the engine's services and pods, and on the leader into
//!   writes;
//! - [`leader`]: the Lease; only its holder writes anything, every replica collects and decides;
//! - [`buckets`], `members`: with more than one bucket, services spread over the replicas by bucket Leases;
//!   each replica collects, decides and writes only for its buckets' services;
//! - [`scale`]: the [`Scaler`], replicas through the target's `scale` subresource (only on change), held
//!   scale-downs and
//!   other writers;
//! - [`path`], [`slices`]: the public Service and its one EndpointSlice, activator or pods;
//! - [`status`], [`deletion_cost`], [`blocked`], `starting`, [`env_check`], [`events`]: what the controller
//!   writes besides replicas;
//! - [`auth`], [`ingest`]: the activators' authenticated stat streams;
//! - [`serve`], [`metrics`]: `/metrics`, `/healthz`, `/readyz` on port 9090;
//! - [`rbac`]: the permissions it needs, as data (docs/rbac.md explains them);
//! - [`webhook`]: the admission webhook that injects the queue-proxy into labelled Deployments' pods;
//! - `options`, `health`, `state`, `service_state`, `pods`, `backoff`: what the others share.
//!
//! This module only wires them together ([`ClusterController`]); none of them uses it.
//!
//! [`engine`]: crate::engine
//! [`Scaler`]: crate::engine::Scaler

pub mod auth;
mod backoff;
pub mod blocked;
pub mod buckets;
mod cache;
pub mod deletion_cost;
mod dirty;
pub mod env_check;
pub mod events;
mod group_scale;
mod groups;
mod health;
pub mod ingest;
mod instance_gate;
mod instance_pods;
mod instances;
mod intern;
pub mod leader;
mod members;
pub mod metrics;
mod options;
pub mod path;
mod pod_index;
mod pods;
pub mod rbac;
mod reconcile;
pub mod scale;
mod selector;
pub mod serve;
mod service_state;
pub mod slices;
mod starting;
mod state;
pub mod status;
mod stores;
mod target_watches;
mod targets;
pub mod watched;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ebb_config::ServiceId;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use health::ApiHealth;
pub use options::{CONTROLLER_NAME, Options};

use crate::engine::Autoscaler;
use events::Events;
use metrics::KubeMetrics;
use reconcile::Reconciler;
use scale::KubeScaler;
use state::{Activators, Context, GlobalInForce, OtherTargets, Signals};
use stores::Stores;

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port could not be bound.
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The webhook's TLS could not be set up.
    #[error("the webhook's TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// A running controller.
pub struct ClusterController {
    /// Where the stat ingest listens.
    pub ingest_addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// Where the admission webhook listens, when it runs.
    pub webhook_addr: Option<SocketAddr>,
    autoscaler: Arc<Autoscaler>,
    signals: Arc<Signals>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    election: JoinHandle<()>,
    /// With buckets: the task that holds them (and releases them on shutdown).
    bucket_leases: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterController").field("ingest_addr", &self.ingest_addr).finish_non_exhaustive()
    }
}

impl ClusterController {
    /// Binds the ports, discovers the EndpointSlice version and starts every task.
    pub async fn start(client: Client, options: Options) -> Result<Self, Error> {
        let ingest =
            TcpListener::bind(options.ingest_addr).await.map_err(|e| Error::Bind(options.ingest_addr, e))?;
        let http = TcpListener::bind(options.metrics_addr)
            .await
            .map_err(|e| Error::Bind(options.metrics_addr, e))?;
        let ingest_addr = ingest.local_addr().map_err(|e| Error::Bind(options.ingest_addr, e))?;
        let metrics_addr = http.local_addr().map_err(|e| Error::Bind(options.metrics_addr, e))?;
        let webhook_listener = match &options.webhook {
            Some(webhook) => {
                let listener =
                    TcpListener::bind(webhook.address).await.map_err(|e| Error::Bind(webhook.address, e))?;
                let addr = listener.local_addr().map_err(|e| Error::Bind(webhook.address, e))?;
                Some((listener, addr, webhook.clone()))
            }
            None => None,
        };
        let webhook_addr = webhook_listener.as_ref().map(|(_, addr, _)| *addr);
        // An API server that is down at start is waited for, never a crash loop.
        let mut backoff = Duration::from_millis(200);
        let slice_resource = loop {
            match slices::discover_endpoint_slices(&client).await {
                Ok(resource) => break resource,
                Err(err) => {
                    tracing::warn!("cannot reach the API server yet (retrying in {backoff:?}): {err}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        tracing::info!(version = %slice_resource.version, "EndpointSlices through discovery.k8s.io/{}", slice_resource.version);

        let (stop, stop_rx) = watch::channel(false);
        let (leading_tx, leading) = watch::channel(false);
        let health = Arc::new(ApiHealth::new(options.api_stale_after));
        let context = Arc::new(Context {
            events: Events::new(client.clone(), CONTROLLER_NAME, &options.identity),
            client: client.clone(),
            options: options.clone(),
            health: health.clone(),
            metrics: KubeMetrics::new(),
        });
        let (owned_tx, owned) = watch::channel(buckets::Owned::none(options.buckets));
        let signals = Arc::new(Signals::new(leading, (options.buckets > 1).then_some(owned)));
        let activators = Arc::new(Activators::default());
        let scaler =
            Arc::new(KubeScaler::new(signals.clone(), activators.clone(), options.manage_request_path));
        let autoscaler = Autoscaler::new(scaler, options.engine.clone());

        let mut tasks = Vec::new();
        let (frames_tx, frames_rx) = mpsc::channel(4096);
        let observer: ingest::Observer = {
            let activators = activators.clone();
            Arc::new(move |frame| {
                // A version-1 activator does not say what is queued: any load it reports counts as queued.
                let stat = &frame.stat;
                let load = stat.average_concurrency > 0.0 || stat.request_count > 0.0;
                if stat.average_queued.map_or(load, |queued| queued > 0.0) {
                    let id = ServiceId::new(frame.namespace.clone(), frame.name.clone());
                    activators.note_queued(id);
                }
            })
        };
        let auth = Arc::new(auth::Authenticator::new(client.clone(), options.ingest_identities.clone()));
        let server = ingest::Ingest::new(auth, frames_tx, observer);
        tasks.push(tokio::spawn(server.serve(ingest, stop_rx.clone())));
        {
            let autoscaler = autoscaler.clone();
            let mut stop_rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                autoscaler
                    .run(frames_rx, async move {
                        let _ = stop_rx.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }
        tasks.push(tokio::spawn(serve::serve(http, context.clone(), autoscaler.clone(), stop_rx.clone())));
        let stores = Stores::start(&context, &signals, slice_resource.clone());
        let global = Arc::new(GlobalInForce::default());
        let others = Arc::new(OtherTargets::default());
        if let Some((listener, _, webhook)) = webhook_listener {
            let serving = Arc::new(webhook::tls::ServingCertificate::default());
            let tls = webhook::tls::server_config(serving.clone())?;
            let admission = webhook::admission::Admission {
                deployments: stores.deployments.clone(),
                replicasets: stores.replicasets.clone(),
                others: others.clone(),
                global: global.clone(),
                image: webhook.image.clone(),
            };
            tasks.push(tokio::spawn(webhook::server::serve(
                listener,
                tls,
                Arc::new(admission),
                context.metrics.webhook.clone(),
                stop_rx.clone(),
            )));
            let certificates = webhook::certificates::Certificates {
                client: client.clone(),
                namespace: options.namespace.clone(),
                secret: webhook.secret.clone(),
                cache: stores.webhook_secret.clone().expect("the webhook's Secret is watched"),
                serving,
                issuer: webhook.issuer.clone(),
                leading: signals.leadership(),
            };
            tasks.push(tokio::spawn(certificates.run(stop_rx.clone())));
        }
        let reconciler = Reconciler::new(
            context.clone(),
            signals.clone(),
            activators,
            autoscaler.clone(),
            stores,
            slice_resource,
            (global, others),
        );
        tasks.push(tokio::spawn(reconciler.run(stop_rx.clone())));
        let lease_config = leader::LeaseConfig {
            lease_duration: options.lease_duration,
            renew_interval: options.renew_interval,
            renew_deadline: options
                .lease_duration
                .saturating_sub(options.renew_interval + options.retry_interval),
            retry_interval: options.retry_interval,
            ..leader::LeaseConfig::new(&options.lease_name, &options.identity)
        };
        {
            let (context, signals) = (context.clone(), signals.clone());
            let mut leading = signals.leadership();
            tasks.push(tokio::spawn(async move {
                loop {
                    let now = *leading.borrow_and_update();
                    context.metrics.leader.set(i64::from(now));
                    signals.wake();
                    if leading.changed().await.is_err() {
                        return;
                    }
                }
            }));
        }
        let mut bucket_leases = None;
        // Replicas of another bucket count must not act beside this one (buckets::guard_leadership).
        let (may_lead_tx, may_lead) = watch::channel(true);
        if options.buckets == 1 {
            tasks.push(tokio::spawn(buckets::guard_leadership(
                Api::<Lease>::namespaced(client.clone(), &options.namespace),
                lease_config.clone(),
                may_lead_tx,
                stop_rx.clone(),
            )));
        } else {
            let (signals, mut owned) = (signals.clone(), signals.ownership().expect("buckets are followed"));
            let context = context.clone();
            tasks.push(tokio::spawn(async move {
                while owned.changed().await.is_ok() {
                    let held = owned.borrow_and_update().buckets();
                    tracing::info!(?held, "buckets held");
                    context.metrics.buckets_held.set(held.len() as i64);
                    signals.wake();
                }
            }));
            bucket_leases = Some(tokio::spawn(buckets::run(
                Api::<Lease>::namespaced(client.clone(), &options.namespace),
                lease_config.clone(),
                options.buckets,
                owned_tx,
                health.clone(),
                stop_rx.clone(),
            )));
        }
        let election = tokio::spawn(leader::run(
            Api::<Lease>::namespaced(client, &options.namespace),
            lease_config,
            leading_tx,
            may_lead,
            health,
            stop_rx,
        ));
        Ok(Self {
            ingest_addr,
            metrics_addr,
            webhook_addr,
            autoscaler,
            signals,
            stop,
            tasks,
            election,
            bucket_leases,
        })
    }

    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        self.signals.is_leader()
    }

    /// The engine (status, decisions).
    pub fn autoscaler(&self) -> &Arc<Autoscaler> {
        &self.autoscaler
    }

    /// The buckets this replica holds (empty without buckets).
    pub fn buckets(&self) -> Vec<u32> {
        self.signals.ownership().map(|owned| owned.borrow().buckets()).unwrap_or_default()
    }

    /// Stops every task and releases the Lease if held.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let released = async {
            let _ = self.election.await;
            if let Some(buckets) = self.bucket_leases {
                let _ = buckets.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), released).await;
        for task in self.tasks {
            task.abort();
        }
    }
}
