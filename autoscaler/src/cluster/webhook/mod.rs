//! The admission webhook that injects the queue-proxy into the pods of labelled Deployments when they are
//! created, so that the Deployment stored in Git stays what its user wrote. Served by every autoscaler
//! replica: they already hold the watch caches it decides from (the labelled Deployments, the
//! `config-autoscaler` in force), and they run as two replicas with a PodDisruptionBudget, which the
//! configuration's `failurePolicy: Fail` relies on (manifests/README.md).
//!
//! - [`review`]: the AdmissionReview in and out, the JSON Patch (pure);
//! - [`admission`]: the decision for one pod: its Deployment from the caches, the inject core's result;
//! - the inject core it calls is `ebb_inject::inject_pod`, the one `ebb inject` uses;
//! - [`certs`]: the CA and serving certificate, and their rotation (pure);
//! - [`certificates`]: serving the Secret's certificate, and on the leader writing it and the `caBundle`;
//! - [`tls`], [`server`]: the HTTPS listener.

pub(crate) mod admission;
pub mod certificates;
pub mod certs;
pub mod review;
pub mod server;
pub mod tls;

use std::net::SocketAddr;

pub use certificates::Issuer;

/// The name of the one webhook in the configuration (its `webhooks[].name`).
pub const WEBHOOK_NAME: &str = "queue-proxy.ebb.dev";
/// The configuration's default name (`manifests/webhook.yaml`).
pub const DEFAULT_CONFIGURATION: &str = "ebb-queue-proxy-injector";
/// The Secret holding the certificates, in the autoscaler's namespace.
pub const DEFAULT_SECRET: &str = "ebb-webhook-certs";
/// The Service in front of the webhook, in the autoscaler's namespace (the certificate's names).
pub const DEFAULT_SERVICE: &str = "ebb-webhook";
/// The listener's port.
pub const PORT: u16 = 8443;

/// How the webhook runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookOptions {
    /// Where it listens.
    pub address: SocketAddr,
    /// The Secret with the certificates, in the autoscaler's namespace.
    pub secret: String,
    /// Who makes the certificates.
    pub issuer: Issuer,
    /// The queue-proxy's image.
    pub image: String,
}

/// The serving certificate's names for Service `service` in `namespace`, then `extra` ones (an address the
/// API server reaches the webhook at through `clientConfig.url`).
pub fn hosts(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut hosts = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ];
    hosts.extend(extra.iter().filter(|h| !h.is_empty()).cloned());
    hosts
}
