//! The queue-proxy container `ebb inject` writes. Its env carries the service's data-plane settings under the
//! names `ebb_config::sidecar` gives them (the same inputs `ebb up` passes as flags, and that the autoscaler's
//! ConfigMismatch check reads back); its ports are the cluster's fixed ones; the kubelet probes it with
//! `Ebb-Probe: queue`. It is written into the container an earlier injection left, so the user's own fields
//! and env variables on it survive.

use ebb_config::DataPlaneSpec;
use ebb_config::names::{
    HEADER_PROBE, PROBE_QUEUE, QUEUE_PROXY_ADMIN_PORT, QUEUE_PROXY_DATA_PORT, QUEUE_PROXY_METRICS_PORT,
    QUEUE_PROXY_STATS_PORT,
};
use ebb_config::sidecar::{self, data_plane_settings};
use serde_json::Value;

use crate::drain::drain_hook;
use crate::model::{SIDECAR, SidecarContainer};
use crate::value::{map, set, str_at};

/// The env names `ebb inject` owns on the sidecar; any other variable there is the user's and is kept.
const MANAGED_ENV: &[&str] = &[
    sidecar::env::UPSTREAM,
    sidecar::env::SERVICE_NAMESPACE,
    sidecar::env::SERVICE_NAME,
    sidecar::env::POD_NAME,
    sidecar::env::POD_NAMESPACE,
    sidecar::env::POD_IP,
    sidecar::env::CONTAINER_CONCURRENCY,
    sidecar::env::QUEUE_DEPTH,
    sidecar::env::TIMEOUT,
    sidecar::env::RESPONSE_START_TIMEOUT,
    sidecar::env::IDLE_TIMEOUT,
    sidecar::env::REQUEST_BODY_TIMEOUT,
    sidecar::env::PROTOCOL,
    sidecar::env::PROBE_PATH,
    sidecar::env::PROBE_TIMEOUT,
];

/// What the sidecar of one service carries.
pub struct Sidecar<'a> {
    /// Its image.
    pub image: &'a str,
    /// The service's name.
    pub service: &'a str,
    /// The user container's port (`EBB_UPSTREAM` is `127.0.0.1:PORT`).
    pub upstream_port: u16,
    /// The service's data-plane settings.
    pub data_plane: &'a DataPlaneSpec,
    /// What it probes on the user container: an HTTP path (a TCP connect without one), and the timeout.
    pub probe_path: Option<String>,
    /// The probe's timeout, as the env writes it (`2s`).
    pub probe_timeout: Option<String>,
}

/// One env variable ebb sets.
enum EnvVar {
    /// A literal value.
    Value(&'static str, String),
    /// A field of the pod (the Downward API).
    Field(&'static str, &'static str),
}

impl EnvVar {
    fn to_yaml(&self) -> Value {
        match self {
            Self::Value(name, value) => map([("name", (*name).into()), ("value", value.as_str().into())]),
            Self::Field(name, path) => {
                let field_ref = map([("fieldPath", (*path).into())]);
                map([("name", (*name).into()), ("valueFrom", map([("fieldRef", field_ref)]))])
            }
        }
    }
}

impl Sidecar<'_> {
    /// The variables ebb manages, in order.
    fn env(&self) -> Vec<EnvVar> {
        let mut env = vec![
            EnvVar::Value(sidecar::env::UPSTREAM, format!("127.0.0.1:{}", self.upstream_port)),
            EnvVar::Field(sidecar::env::SERVICE_NAMESPACE, "metadata.namespace"),
            EnvVar::Value(sidecar::env::SERVICE_NAME, self.service.to_owned()),
            EnvVar::Field(sidecar::env::POD_NAME, "metadata.name"),
            EnvVar::Field(sidecar::env::POD_NAMESPACE, "metadata.namespace"),
            EnvVar::Field(sidecar::env::POD_IP, "status.podIP"),
        ];
        env.extend(data_plane_settings(self.data_plane).into_iter().map(|s| EnvVar::Value(s.env, s.value)));
        if let Some(path) = &self.probe_path {
            env.push(EnvVar::Value(sidecar::env::PROBE_PATH, path.clone()));
        }
        if let Some(timeout) = &self.probe_timeout {
            env.push(EnvVar::Value(sidecar::env::PROBE_TIMEOUT, timeout.clone()));
        }
        env
    }

    /// The container: `existing` (an earlier injection's, perhaps edited since) with ebb's fields set, or a new
    /// one.
    pub fn container(&self, existing: Option<&SidecarContainer>) -> SidecarContainer {
        let mut env: Vec<Value> = self.env().iter().map(EnvVar::to_yaml).collect();
        // The user's own variables on the sidecar (RUST_LOG, EBB_DRAIN_QUIET_PERIOD, ...) are kept, after ours.
        let own = |e: &&Value| str_at(e, &["name"]).is_some_and(|n| MANAGED_ENV.contains(&n));
        env.extend(
            existing.map(SidecarContainer::env).unwrap_or_default().iter().filter(|e| !own(e)).cloned(),
        );

        let mut sidecar = existing.map(|s| s.fields.clone()).unwrap_or_default();
        set(&mut sidecar, "name", SIDECAR.into());
        set(&mut sidecar, "image", self.image.into());
        // The image holds one multi-call `ebb`: every component is a subcommand.
        set(&mut sidecar, "command", Value::Array(vec!["ebb".into(), SIDECAR.into()]));
        let ports = [
            (QUEUE_PROXY_DATA_PORT, "queue-data"),
            (QUEUE_PROXY_ADMIN_PORT, "queue-admin"),
            (QUEUE_PROXY_STATS_PORT, "queue-stats"),
            (QUEUE_PROXY_METRICS_PORT, "queue-metrics"),
        ]
        .map(|(port, name)| map([("name", name.into()), ("containerPort", port.into())]));
        set(&mut sidecar, "ports", Value::Array(ports.to_vec()));
        set(&mut sidecar, "env", Value::Array(env));
        set(&mut sidecar, "readinessProbe", readiness_probe());
        // No preStop hook: SIGTERM starts the drain. (A hook that asked the admin port to drain would let
        // anything on the pod network drain the pod; one injected by an earlier ebb is removed.)
        if let Some(Value::Object(lifecycle)) = sidecar.get_mut("lifecycle") {
            if lifecycle.get("preStop") == Some(&drain_hook()) {
                lifecycle.shift_remove("preStop");
            }
            if lifecycle.is_empty() {
                sidecar.shift_remove("lifecycle");
            }
        }
        // Defaults the user may tune: left alone when present.
        if !sidecar.contains_key("resources") {
            let requests = map([("cpu", "25m".into()), ("memory", "32Mi".into())]);
            set(&mut sidecar, "resources", map([("requests", requests)]));
        }
        if !sidecar.contains_key("securityContext") {
            set(&mut sidecar, "securityContext", security_context());
        }
        SidecarContainer { fields: sidecar }
    }
}

/// The kubelet's probe of the queue-proxy: its admin port, with `Ebb-Probe: queue`.
fn readiness_probe() -> Value {
    let header = map([("name", title_case(HEADER_PROBE).into()), ("value", PROBE_QUEUE.into())]);
    let http_get = map([
        ("path", "/".into()),
        ("port", QUEUE_PROXY_ADMIN_PORT.into()),
        ("httpHeaders", Value::Array(vec![header])),
    ]);
    map([
        ("httpGet", http_get),
        ("periodSeconds", 1.into()),
        ("timeoutSeconds", 1.into()),
        ("failureThreshold", 3.into()),
    ])
}

fn security_context() -> Value {
    let drop = map([("drop", Value::Array(vec!["ALL".into()]))]);
    map([
        ("runAsNonRoot", true.into()),
        // The distroless `nonroot` user; numeric, so the kubelet can check it is not root.
        ("runAsUser", 65532.into()),
        ("readOnlyRootFilesystem", true.into()),
        ("allowPrivilegeEscalation", false.into()),
        ("capabilities", drop),
    ])
}

/// `ebb-probe` -> `Ebb-Probe`, as the header is written in manifests.
fn title_case(header: &str) -> String {
    header
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_spelling() {
        assert_eq!(title_case("ebb-probe"), "Ebb-Probe");
    }
}
