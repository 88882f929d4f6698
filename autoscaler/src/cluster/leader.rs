//! Leader election on a `coordination.k8s.io/v1` Lease with a plain get/update loop on `resourceVersion`
//! (server-side apply is only beta on Kubernetes 1.20). Every replica collects and decides; only the holder
//! of the Lease acts.
//!
//! Expiry is judged by this replica's own clock: a Lease whose `resourceVersion` has not moved for its
//! `leaseDurationSeconds` is free to take, so clock skew between nodes does not matter (client-go does the
//! same). With the defaults (10 s lease, 2 s renew, 1 s retry) a dead leader is replaced within about 11 s.
//! A leader that cannot renew for `renew_deadline` stops acting before anyone else may take over.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
// tokio's clock, so that tests with paused time see the deadlines pass.
use tokio::time::Instant;

use super::health::ApiHealth;

/// How the Lease is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's name (in the autoscaler's namespace).
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease that is not renewed stays held.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// A leader that has not renewed for this long stops acting (shorter than `lease_duration`).
    pub renew_deadline: Duration,
    /// How often a follower looks at the Lease.
    pub retry_interval: Duration,
}

impl LeaseConfig {
    /// The defaults: 10 s lease, renew every 2 s, give up after 7 s, retry every 1 s.
    pub fn new(name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(10),
            renew_interval: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(7),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// What this replica last saw of a Lease, by its own clock.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    resource_version: Option<String>,
    since: Option<Instant>,
}

/// Runs the election until `shutdown` turns true, publishing whether this replica leads on `leading`; then
/// releases the Lease if held, so a successor need not wait for it to expire. The Lease is taken only while
/// `may_lead` is true (held, it is renewed regardless).
pub async fn run(
    api: Api<Lease>,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    may_lead: watch::Receiver<bool>,
    health: Arc<ApiHealth>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut observed = Observed::default();
    let mut last_renewed: Option<Instant> = None;
    while !*shutdown.borrow() {
        let is_leader = *leading.borrow();
        // A leader renews whatever `may_lead` says; only taking the Lease waits for it.
        let may_take = is_leader || *may_lead.borrow();
        match step(&api, &config, &mut observed, may_take).await {
            Ok(true) => {
                health.ok();
                last_renewed = Some(Instant::now());
                if !is_leader {
                    tracing::info!(identity = %config.identity, lease = %config.name, "became the leader");
                }
                leading.send_replace(true);
            }
            Ok(false) => {
                health.ok();
                if is_leader {
                    tracing::warn!(identity = %config.identity, "lost the lease to another replica");
                }
                leading.send_replace(false);
            }
            Err(err) => {
                health.failed();
                tracing::warn!(lease = %config.name, "lease request failed: {err}");
                if is_leader && last_renewed.is_none_or(|t| t.elapsed() >= config.renew_deadline) {
                    tracing::warn!("could not renew the lease in time; no longer acting as leader");
                    leading.send_replace(false);
                }
            }
        }
        let pause = if *leading.borrow() { config.renew_interval } else { config.retry_interval };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        match release(&api, &config).await {
            Ok(()) => tracing::info!(lease = %config.name, "released the lease"),
            Err(err) => tracing::warn!(lease = %config.name, "could not release the lease: {err}"),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn secs(d: Duration) -> i32 {
    d.as_secs().clamp(1, i32::MAX as u64) as i32
}

/// One look at the Lease: renew it when held, create or take it when possible and `may_take`. `Ok(true)` when
/// this replica holds it. Bucket leases pass `may_take: false` once a replica holds its share, so that it
/// keeps observing (and so can take over later) without taking more.
pub(crate) async fn step(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Observed,
    may_take: bool,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        if !may_take {
            return Ok(false);
        }
        let lease = Lease {
            metadata: ObjectMeta { name: Some(config.name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(secs(config.lease_duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        };
    };
    if lease.metadata.resource_version != observed.resource_version {
        observed.resource_version = lease.metadata.resource_version.clone();
        observed.since = Some(Instant::now());
    }
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    if holder.as_deref() == Some(config.identity.as_str()) {
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(secs(config.lease_duration));
        return replace(api, config, &lease).await;
    }
    let duration =
        spec.lease_duration_seconds.map_or(config.lease_duration, |s| Duration::from_secs(s.max(0) as u64));
    let expired = holder.is_none() || observed.since.is_some_and(|since| since.elapsed() >= duration);
    if !expired || !may_take {
        return Ok(false);
    }
    tracing::info!(previous = ?holder, identity = %config.identity, "taking over the lease");
    spec.holder_identity = Some(config.identity.clone());
    spec.acquire_time = Some(now());
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(secs(config.lease_duration));
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    replace(api, config, &lease).await
}

/// Writes the Lease back; the `resourceVersion` it carries makes a concurrent writer's change a conflict.
async fn replace(api: &Api<Lease>, config: &LeaseConfig, lease: &Lease) -> Result<bool, kube::Error> {
    match api.replace(&config.name, &PostParams::default(), lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Gives the Lease up: no holder, and a 1 s duration, as client-go does on release.
pub(crate) async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else { return Ok(()) };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    api.replace(&config.name, &PostParams::default(), &lease).await.map(drop)
}

#[cfg(test)]
mod tests {
    //! API error paths with a mock API server (everything else runs against the real control plane).

    use std::sync::Mutex;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    use super::*;

    /// A client whose API server answers each request with the next `(status, body)` and records the
    /// requests' methods.
    fn mock(answers: Vec<(u16, serde_json::Value)>) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            log.lock().unwrap().push(req.method().to_string());
            let (status, body) = answers.lock().unwrap().next().expect("an answer for every request");
            async move {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Body::from(body.to_string().into_bytes()))
                        .unwrap(),
                )
            }
        });
        (kube::Client::new(service, "ns"), seen)
    }

    fn status(code: u16, reason: &str) -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
    }

    fn lease(holder: &str, rv: &str) -> serde_json::Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l", "namespace": "ns", "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10}})
    }

    #[tokio::test]
    async fn a_lost_create_race_is_not_leadership() {
        let (client, seen) = mock(vec![(404, status(404, "NotFound")), (409, status(409, "AlreadyExists"))]);
        let api: Api<Lease> = Api::namespaced(client, "ns");
        let leads = step(&api, &LeaseConfig::new("l", "me"), &mut Observed::default(), true).await.unwrap();
        assert!(!leads);
        assert_eq!(*seen.lock().unwrap(), ["GET", "POST"]);
    }

    #[tokio::test]
    async fn a_conflict_on_renewal_is_not_leadership_and_a_server_error_is_an_error() {
        let (client, _) = mock(vec![(200, lease("me", "1")), (409, status(409, "Conflict"))]);
        let api: Api<Lease> = Api::namespaced(client, "ns");
        assert!(!step(&api, &LeaseConfig::new("l", "me"), &mut Observed::default(), true).await.unwrap());

        let (client, _) = mock(vec![(500, status(500, "InternalError"))]);
        let api: Api<Lease> = Api::namespaced(client, "ns");
        assert!(step(&api, &LeaseConfig::new("l", "me"), &mut Observed::default(), true).await.is_err());
    }

    #[tokio::test]
    async fn a_fresh_lease_of_another_holder_is_left_alone() {
        let (client, seen) = mock(vec![(200, lease("other", "7"))]);
        let api: Api<Lease> = Api::namespaced(client, "ns");
        assert!(!step(&api, &LeaseConfig::new("l", "me"), &mut Observed::default(), true).await.unwrap());
        assert_eq!(*seen.lock().unwrap(), ["GET"], "no write while the holder's lease runs");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_steps_down_before_the_lease_expires() {
        // Renewed once, then every request fails.
        let mut answers = vec![(200, lease("me", "1")), (200, lease("me", "2"))];
        answers.extend((0..20).map(|_| (500, status(500, "InternalError"))));
        let (client, _) = mock(answers);
        let api: Api<Lease> = Api::namespaced(client, "ns");
        let (leading_tx, leading) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let health = Arc::new(ApiHealth::new(Duration::from_secs(10)));
        let config = LeaseConfig::new("l", "me");
        let deadline = config.renew_deadline;
        let (_may_lead_tx, may_lead) = watch::channel(true);
        let task = tokio::spawn(run(api, config, leading_tx, may_lead, health.clone(), stop));
        let mut leading_rx = leading.clone();
        leading_rx.wait_for(|l| *l).await.unwrap();
        let became = tokio::time::Instant::now();
        leading_rx.wait_for(|l| !*l).await.unwrap();
        let stepped_down = became.elapsed();
        assert!(stepped_down >= deadline && stepped_down < Duration::from_secs(10), "{stepped_down:?}");
        assert!(!health.reachable());
        task.abort();
    }
}
