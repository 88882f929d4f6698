//! The request path in a cluster (`docs/architecture.md`, "Request path"), leader only: the public Service
//! `NAME` (selector-less, port 80 `http` -> 8012, `app.kubernetes.io/managed-by: ebb`, owned by the
//! Deployment) and its one EndpointSlice, rewritten in place: the activators in proxy mode, the ready,
//! non-terminating pods in serve mode. The mode and the phase, with when each was entered, are annotations on
//! the Service, so a new leader resumes the scale-to-zero clocks from them ([`resumed`]).
//!
//! The activator counts as in the path only when the activator-only slice was written *and* seen back on
//! the watch, *and* every listed activator answers `Ebb-Probe: activator` on its pod address; only then is
//! the policy told so (and may replicas go to 0). A Service of that name that ebb did not create is left
//! alone and reported, and the activator is never considered in its path.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ebb_config::Mode;
use ebb_config::ServiceId;
use ebb_config::keys::{self, ANNOTATION_KEYS};
use ebb_config::names::{
    HEADER_PROBE, LABEL_MANAGED_BY, LABEL_SERVICE, LABEL_TARGET_KIND, MANAGED_BY_EBB, PROBE_ACTIVATOR,
    STATUS_MODE, STATUS_MODE_SINCE, STATUS_PHASE, STATUS_PHASE_SINCE,
};
use ebb_kpa::Phase;
use ebb_process::sync::Locked;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PostParams};
use serde_json::{Value, json};

use super::options::patch_params;
use super::pods::is_ready;
use super::service_state::ServiceState;
use super::slices::{LABEL_SLICE_MANAGED_BY, LABEL_SLICE_SERVICE, SLICE_MANAGER};
use super::state::{Activators, Context};
use super::stores::Stores;
use super::targets::Target;
use super::watched::WatchedPod;
use crate::engine::ServiceStatus;

/// How long a successful activator probe counts.
const PROBE_FRESH: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The clocks a new leader resumes, from the Service's annotations: the mode and how long ago it was entered,
/// and the phase's name and how long ago it was entered when both are there and readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The routing mode.
    pub mode: Mode,
    /// How long ago (wall clock) the mode was entered.
    pub mode_for: Duration,
    /// The phase's name and how long ago it was entered.
    pub phase: Option<(String, Duration)>,
}

impl Resumed {
    /// The phase on the clock that `at_ago` reads (the engine's [`crate::engine::Autoscaler::ago`]).
    pub fn phase_at(&self, at_ago: impl Fn(Duration) -> ebb_kpa::Timestamp) -> Option<Phase> {
        let (name, ago) = self.phase.as_ref()?;
        let since = at_ago(*ago);
        Some(match name.as_str() {
            "activating" => Phase::Activating { since },
            "active" => Phase::Active { since },
            "inactive" => Phase::Inactive { since },
            "zero" => Phase::Zero { since },
            _ => return None,
        })
    }
}

/// What to resume from a Service's `annotations` at wall-clock time `now`; `None` without a readable mode and
/// mode time. A time in the future (clock skew between replicas) counts as now.
pub fn resumed(annotations: &BTreeMap<String, String>, now: Timestamp) -> Option<Resumed> {
    let ago = |key: &str| -> Option<Duration> {
        let at: Timestamp = annotations.get(key)?.parse().ok()?;
        let secs = now.duration_since(at).as_secs_f64().max(0.0);
        Some(Duration::from_secs_f64(secs))
    };
    let mode: Mode = annotations.get(STATUS_MODE)?.parse().ok()?;
    let mode_for = ago(STATUS_MODE_SINCE)?;
    let phase = annotations
        .get(STATUS_PHASE)
        .filter(|p| matches!(p.as_str(), "activating" | "active" | "inactive" | "zero"))
        .and_then(|p| Some((p.clone(), ago(STATUS_PHASE_SINCE)?)));
    Some(Resumed { mode, mode_for, phase })
}

/// Probes activators with `Ebb-Probe: activator`, remembering recent successes.
pub(crate) struct Prober {
    client: HttpClient<HttpConnector, Empty<Bytes>>,
    ok: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Prober {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(PROBE_TIMEOUT));
        Self { client: HttpClient::builder(TokioExecutor::new()).build(connector), ok: Mutex::default() }
    }

    /// Whether the activator at `addr` answered the probe recently or does now.
    pub async fn check(&self, addr: SocketAddr) -> bool {
        if self.ok.locked().get(&addr).is_some_and(|t| t.elapsed() < PROBE_FRESH) {
            return true;
        }
        let ok = tokio::time::timeout(PROBE_TIMEOUT, async {
            let request = http::Request::get(format!("http://{addr}/"))
                .header(HEADER_PROBE, PROBE_ACTIVATOR)
                .body(Empty::new())
                .ok()?;
            let response = self.client.request(request).await.ok()?;
            let status = response.status();
            let body = Limited::new(response.into_body(), 64).collect().await.ok()?.to_bytes();
            Some(status == http::StatusCode::OK && body.as_ref() == PROBE_ACTIVATOR.as_bytes())
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
        let mut cache = self.ok.locked();
        if ok {
            cache.insert(addr, Instant::now());
        } else {
            cache.remove(&addr);
        }
        ok
    }
}

/// What the path reconciliation reads.
pub(crate) struct PathContext<'a> {
    /// The API server and what is reported.
    pub context: &'a Context,
    /// Where the verdict (activator in the path or not) goes.
    pub verified: &'a Activators,
    /// The public Services and EndpointSlices as watched.
    pub stores: &'a Stores,
    /// The EndpointSlice API version in use.
    pub slices: &'a ApiResource,
    /// Checks that an activator answers.
    pub prober: &'a Prober,
    /// The ready activators' addresses.
    pub activators: &'a [IpAddr],
}

/// The wanted slice: addresses and port.
fn wanted(ctx: &PathContext<'_>, status: &ServiceStatus, pods: &[Arc<WatchedPod>]) -> (Vec<String>, u16) {
    let options = &ctx.context.options;
    if status.mode == "proxy" && !ctx.activators.is_empty() {
        let mut ips: Vec<String> = ctx.activators.iter().map(IpAddr::to_string).collect();
        ips.sort();
        (ips, options.activator_port)
    } else {
        let mut ips: Vec<String> = pods
            .iter()
            .filter(|p| is_ready(p))
            .filter_map(|p| Some(p.status.as_ref()?.pod_ip?.to_string()))
            .collect();
        ips.sort();
        ips.dedup();
        (ips, options.pod_data_port)
    }
}

/// A slice's content as written: one ready endpoint per address, and the port.
fn slice_body(ips: &[String], port: u16) -> Value {
    let endpoints: Vec<Value> =
        ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    json!({
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    })
}

/// The leader's pass for one service's request path.
pub(crate) async fn reconcile(
    ctx: &PathContext<'_>,
    id: &ServiceId,
    state: &mut ServiceState,
    target: &Target,
    status: &ServiceStatus,
    pods: &[Arc<WatchedPod>],
) {
    let context = ctx.context;
    let set_in_path = |v: bool| ctx.verified.set_in_path(id, v);
    let services: Api<Service> = Api::namespaced(context.client.clone(), &id.namespace);
    // After a failed write, this service's path is left as it is until its backoff has passed.
    let may_write = state.path_writes.ready();
    let mut outcome = Writes::default();
    let service = match ctx.stores.service(&id.namespace, &id.name) {
        None => {
            if may_write {
                let params = PostParams { field_manager: patch_params().field_manager, ..Default::default() };
                let result = services.create(&params, &public_service(target, status)).await;
                outcome.note(result.map(drop), || format!("cannot create the public Service {id}"));
                outcome.apply(context, state);
            }
            set_in_path(false);
            return;
        }
        Some(service) => service,
    };
    if service.labels().get(LABEL_MANAGED_BY) != Some(MANAGED_BY_EBB) {
        if !state.path.foreign {
            state.path.foreign = true;
            context.events.warning(
                target.reference(),
                "ServiceNotManaged",
                format!(
                    "Service {}/{} exists and was not created by ebb (no {LABEL_MANAGED_BY}: {MANAGED_BY_EBB}); \
                     ebb leaves it alone, so the activator is never in this service's path and it is not \
                     scaled to zero",
                    id.namespace, id.name
                ),
            );
        }
        set_in_path(false);
        return;
    }
    state.path.foreign = false;

    // The mode and the phase, and when each was entered, on the Service (a new leader resumes from them).
    // Written on change only, so the times are those of the change (within a pass).
    let mut changes = serde_json::Map::new();
    let now = Timestamp::now().to_string();
    for (key, since_key, value) in
        [(STATUS_MODE, STATUS_MODE_SINCE, status.mode), (STATUS_PHASE, STATUS_PHASE_SINCE, status.phase)]
    {
        if service.annotations().get(key) != Some(value) {
            changes.insert(key.to_owned(), json!(value));
            changes.insert(since_key.to_owned(), json!(now));
        }
    }
    // A target of another kind: its settings for the activator, kept equal to the target's.
    let mut labels = serde_json::Map::new();
    if let Some((kind, wanted)) = target.published_settings() {
        if service.labels().get(LABEL_TARGET_KIND) != Some(kind.as_str()) {
            labels.insert(LABEL_TARGET_KIND.to_owned(), json!(kind));
        }
        for (key, value) in &wanted {
            if service.annotations().get(key) != Some(value.as_str()) {
                changes.insert(key.clone(), json!(value));
            }
        }
        for key in service.annotations().keys() {
            if keys::lookup(ANNOTATION_KEYS, key).is_some() && !wanted.contains_key(key) {
                changes.insert(key.to_owned(), Value::Null);
            }
        }
    }
    if (!changes.is_empty() || !labels.is_empty()) && may_write {
        let patch = json!({"metadata": {"annotations": changes, "labels": labels}});
        let result = services.patch(&id.name, &patch_params(), &Patch::Merge(&patch)).await;
        outcome.note(result.map(drop), || format!("cannot write the mode and phase on the Service {id}"));
    }

    // The one EndpointSlice.
    let (ips, port) = wanted(ctx, status, pods);
    let slices: Api<DynamicObject> = Api::namespaced_with(context.client.clone(), &id.namespace, ctx.slices);
    let seen = ctx.stores.slice(&id.namespace, &id.name);
    let seen_matches = seen.as_ref().is_some_and(|s| s.addresses == ips && s.port == port);
    if !seen_matches && may_write {
        let body = slice_body(&ips, port);
        let result = match &seen {
            Some(_) => slices.patch(&id.name, &patch_params(), &Patch::Merge(&body)).await.map(drop),
            None => {
                let mut object = DynamicObject::new(&id.name, ctx.slices).within(&id.namespace);
                object.metadata.labels = Some(BTreeMap::from([
                    (LABEL_SLICE_SERVICE.to_owned(), id.name.to_string()),
                    (LABEL_SLICE_MANAGED_BY.to_owned(), SLICE_MANAGER.to_owned()),
                    (LABEL_MANAGED_BY.to_owned(), MANAGED_BY_EBB.to_owned()),
                ]));
                object.metadata.owner_references =
                    service.meta.controller_owner::<Service>().map(|r| vec![r]);
                object.data = body;
                slices.create(&PostParams::default(), &object).await.map(drop)
            }
        };
        outcome.note(result, || format!("cannot write the EndpointSlice {id}"));
    }
    outcome.apply(context, state);

    // Verified in the path: activator-only slice seen back on the watch, and every activator answers.
    let proxy_slice =
        status.mode == "proxy" && !ctx.activators.is_empty() && port == context.options.activator_port;
    let mut verified = proxy_slice && seen_matches && !ips.is_empty();
    if verified {
        for ip in ctx.activators {
            if !ctx.prober.check(SocketAddr::new(*ip, context.options.activator_port)).await {
                verified = false;
                break;
            }
        }
    }
    set_in_path(verified);
}

/// What one pass's writes came to: the first failure, or whether any write succeeded.
#[derive(Default)]
struct Writes {
    failure: Option<kube::Error>,
    succeeded: bool,
}

impl Writes {
    fn note(&mut self, result: Result<(), kube::Error>, what: impl FnOnce() -> String) {
        match result {
            Ok(()) => self.succeeded = true,
            // Created by an earlier pass and not yet seen by the watch (a busy API server's watch lags):
            // neither a failure to back off from nor a success; the next visit reads what is there.
            Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "AlreadyExists" => {
                tracing::debug!("{}: it exists already, not yet seen by the watch", what());
            }
            Err(err) => {
                tracing::warn!("{} (retrying with backoff): {err}", what());
                self.failure.get_or_insert(err);
            }
        }
    }

    /// Moves the service's path backoff on.
    fn apply(self, context: &Context, state: &mut ServiceState) {
        match self.failure {
            Some(err) => state.path_writes.failed(&context.health, &err),
            None if self.succeeded => state.path_writes.succeeded(&context.health),
            None => {}
        }
    }
}

/// The public Service of a scale target, owned by it.
fn public_service(target: &Target, status: &ServiceStatus) -> Service {
    let name = target.name();
    let mut labels = json!({LABEL_MANAGED_BY: MANAGED_BY_EBB, LABEL_SERVICE: name});
    let mut annotations = json!({
        STATUS_MODE: status.mode, STATUS_MODE_SINCE: Timestamp::now().to_string(),
        STATUS_PHASE: status.phase, STATUS_PHASE_SINCE: Timestamp::now().to_string(),
    });
    if let Some((kind, settings)) = target.published_settings() {
        labels[LABEL_TARGET_KIND] = json!(kind);
        for (key, value) in settings {
            annotations[key] = json!(value);
        }
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": target.owner_reference().map(|r| vec![r]),
        },
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8012, "protocol": "TCP"}]},
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_clocks_resume_from_the_annotations() {
        let now: Timestamp = "2024-05-01T12:00:00Z".parse().unwrap();
        let a = annotations(&[
            (STATUS_MODE, "proxy"),
            (STATUS_MODE_SINCE, "2024-05-01T11:59:35Z"),
            (STATUS_PHASE, "inactive"),
            (STATUS_PHASE_SINCE, "2024-05-01T11:59:30.5Z"),
        ]);
        let r = resumed(&a, now).unwrap();
        assert_eq!(r.mode, Mode::Proxy);
        assert_eq!(r.mode_for, Duration::from_secs(25));
        assert_eq!(r.phase, Some(("inactive".to_owned(), Duration::from_millis(29_500))));
        let clock = |ago: Duration| ebb_kpa::Timestamp::from_duration(Duration::from_secs(100) - ago);
        assert_eq!(
            r.phase_at(clock),
            Some(Phase::Inactive { since: ebb_kpa::Timestamp::from_millis(70_500) })
        );
    }

    #[test]
    fn missing_or_unreadable_annotations_resume_nothing_or_only_the_mode() {
        let now: Timestamp = "2024-05-01T12:00:00Z".parse().unwrap();
        assert_eq!(resumed(&BTreeMap::new(), now), None);
        assert_eq!(resumed(&annotations(&[(STATUS_MODE, "proxy")]), now), None, "no time");
        let bad = annotations(&[(STATUS_MODE, "sideways"), (STATUS_MODE_SINCE, "2024-05-01T11:00:00Z")]);
        assert_eq!(resumed(&bad, now), None);
        let future = annotations(&[
            (STATUS_MODE, "serve"),
            (STATUS_MODE_SINCE, "2024-05-01T12:00:09Z"),
            (STATUS_PHASE, "sleeping"),
            (STATUS_PHASE_SINCE, "2024-05-01T11:00:00Z"),
        ]);
        let r = resumed(&future, now).unwrap();
        assert_eq!((r.mode, r.mode_for, r.phase), (Mode::Serve, Duration::ZERO, None), "skew counts as now");
    }

    #[test]
    fn a_create_that_finds_the_object_there_already_is_no_failure_to_back_off_from() {
        let api_error = |code: u16, reason: &str| {
            let status =
                serde_json::json!({"status": "Failure", "message": reason, "reason": reason, "code": code});
            kube::Error::Api(Box::new(serde_json::from_value(status).unwrap()))
        };
        let mut writes = Writes::default();
        writes.note(Err(api_error(409, "AlreadyExists")), || "create".into());
        assert!(writes.failure.is_none() && !writes.succeeded);
        writes.note(Err(api_error(409, "Conflict")), || "patch".into());
        assert!(writes.failure.is_some(), "a conflict is a failure");
    }
}
