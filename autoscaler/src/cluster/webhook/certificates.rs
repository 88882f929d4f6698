//! The webhook's certificates at run time. Every replica serves the certificate of the Secret (reloaded
//! when it changes). With ebb's own certificates, the leader also writes them: it makes and rotates them
//! ([`super::certs::plan`]) and copies the Secret's bundle into the webhook configuration's `caBundle`
//! (a strategic merge patch of that one webhook, re-sent every minute in case someone reset it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::certs::{self, CA_BUNDLE, Policy, Step, TLS_CRT, TLS_KEY};
use super::tls::{ServingCertificate, certified_key};
use crate::cluster::cache::Cache;
use crate::cluster::options::patch_params;
use crate::cluster::watched::Whole;

/// How often the Secret is looked at (a cache read, no API call) and the rotation planned.
const PERIOD: Duration = Duration::from_secs(1);
/// How often the leader sends the `caBundle` again although it has not changed.
const REASSERT: Duration = Duration::from_secs(60);

/// Who makes the certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issuer {
    /// ebb: a CA of its own, rotated by `policy`, written into the webhook configuration `configuration`.
    Ebb {
        /// Lifetimes and names.
        policy: Policy,
        /// The MutatingWebhookConfiguration whose `caBundle` the leader writes.
        configuration: String,
    },
    /// Someone else (cert-manager and its CA injector): ebb only serves what the Secret holds.
    External,
}

/// What the certificate task works with.
pub(crate) struct Certificates {
    pub client: Client,
    /// The Secret's namespace (the autoscaler's) and name.
    pub namespace: String,
    pub secret: String,
    pub cache: Cache<Whole<Secret>>,
    pub serving: Arc<ServingCertificate>,
    pub issuer: Issuer,
    pub leading: watch::Receiver<bool>,
}

/// What the leader last wrote into `caBundle`, and since when it has held that.
#[derive(Default)]
struct Bundle {
    written: Option<Vec<u8>>,
    since: i64,
    at: Option<Instant>,
}

impl Certificates {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut loaded: Option<String> = None;
        let mut bundle = Bundle::default();
        let mut reported = String::new();
        loop {
            let secret = self.cache.get(&self.namespace, &self.secret);
            let secret = secret.as_ref().map(|s| &s.object);
            if let Some(secret) = &secret {
                self.reload(secret, &mut loaded);
            }
            let leading = *self.leading.borrow();
            if !leading {
                bundle = Bundle::default();
            }
            if let (Issuer::Ebb { policy, configuration }, true) = (&self.issuer, leading) {
                let problem = match &secret {
                    None => Some(format!(
                        "Secret {}/{} not found; `kubectl apply -k manifests/` creates it (empty: ebb fills it)",
                        self.namespace, self.secret
                    )),
                    Some(secret) => self.lead(secret, policy, configuration, &mut bundle).await.err(),
                };
                match problem {
                    // Said once until it changes: the loop runs every second.
                    Some(problem) if problem != reported => {
                        tracing::warn!("webhook certificates: {problem}");
                        reported = problem;
                    }
                    Some(_) => {}
                    None => reported.clear(),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(PERIOD) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Serves the Secret's certificate when the Secret changed.
    fn reload(&self, secret: &Secret, loaded: &mut Option<String>) {
        let version = secret.resource_version();
        if *loaded == version {
            return;
        }
        *loaded = version;
        let data = secret.data.clone().unwrap_or_default();
        let (Some(cert), Some(key)) = (data.get(TLS_CRT), data.get(TLS_KEY)) else { return };
        if cert.0.is_empty() {
            return;
        }
        match certified_key(&cert.0, &key.0) {
            Ok(certified) => {
                self.serving.set(certified);
                tracing::info!(secret = %self.secret, "webhook serving certificate loaded");
            }
            Err(err) => tracing::warn!(secret = %self.secret, "webhook certificate not usable: {err}"),
        }
    }

    /// The leader's part: the bundle into the webhook configuration, then the next step of the rotation.
    async fn lead(
        &self,
        secret: &Secret,
        policy: &Policy,
        configuration: &str,
        bundle: &mut Bundle,
    ) -> Result<(), String> {
        let data: certs::Data =
            secret.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        let now = unix_now();
        if let Some(current) = data.get(CA_BUNDLE).filter(|b| !b.is_empty()) {
            let changed = bundle.written.as_ref() != Some(current);
            if changed || bundle.at.is_none_or(|at| at.elapsed() >= REASSERT) {
                self.write_bundle(configuration, current).await?;
                if changed {
                    tracing::info!(%configuration, "webhook caBundle written");
                    bundle.since = now;
                }
                bundle.written = Some(current.clone());
                bundle.at = Some(Instant::now());
            }
        }
        let in_force =
            bundle.written.as_ref().filter(|b| Some(*b) == data.get(CA_BUNDLE)).map(|_| bundle.since);
        match certs::plan(&data, now, in_force, policy).map_err(|e| e.to_string())? {
            Step::Keep => Ok(()),
            Step::Write { data, why } => {
                let mut updated = secret.clone();
                updated.data =
                    Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect::<BTreeMap<_, _>>());
                updated.metadata.managed_fields = None;
                // `replace` carries the resourceVersion read: a concurrent writer makes it fail (409) and
                // the next period plans again from what won.
                Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
                    .replace(
                        &self.secret,
                        &PostParams { field_manager: patch_params().field_manager, ..Default::default() },
                        &updated,
                    )
                    .await
                    .map_err(|e| format!("cannot update Secret {}/{}: {e}", self.namespace, self.secret))?;
                tracing::info!(secret = %self.secret, "webhook certificates: {why}");
                Ok(())
            }
        }
    }

    async fn write_bundle(&self, configuration: &str, bundle: &[u8]) -> Result<(), String> {
        let patch = json!({"webhooks": [{
            "name": super::WEBHOOK_NAME,
            "clientConfig": {"caBundle": ByteString(bundle.to_vec())},
        }]});
        Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .patch(configuration, &patch_params(), &Patch::Strategic(patch))
            .await
            .map(drop)
            .map_err(|e| {
                format!("cannot write the caBundle of MutatingWebhookConfiguration {configuration}: {e}")
            })
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
