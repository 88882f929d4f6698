//! The core: one pod template in, the same template with the queue-proxy sidecar out (or every reason it cannot
//! have one). It is pure: no files, no documents, no output; the same function that edits a Deployment's
//! template in a YAML file can serve an admission webhook on Pod creation.
//!
//! What the template gets (the cluster's conventions, and Knative's layout):
//! - a `queue-proxy` container (ports 8012/8022/9090/9091) whose `EBB_*` env carries the data-plane settings
//!   resolved from the service's annotations, exactly as the autoscaler's ConfigMismatch check
//!   (`ebb_autoscaler::kube::env_check`) reads them back;
//! - the user container's readinessProbe moved to the queue-proxy, which probes the user container itself
//!   (`EBB_PROBE_PATH`); the kubelet probes the queue-proxy with `Ebb-Probe: queue`. Startup and liveness
//!   probes stay on the user container;
//! - a preStop hook on the user container that waits for the queue-proxy to drain (the queue-proxy has none:
//!   SIGTERM starts its drain), and a `terminationGracePeriodSeconds` long enough for that drain;
//! - the `ebb.dev/service` label, by which the activator and the autoscaler find the pods.
//!
//! The user container is the first container not named `queue-proxy`; its port is its first TCP
//! `containerPort`, or 8080 (the queue-proxy's default upstream) when it declares none.

use std::collections::BTreeMap;

use ebb_config::names::{LABEL_SERVICE, QUEUE_PROXY_ADMIN_PORT, RESERVED_POD_PORTS, WAIT_FOR_DRAIN_PATH};
use ebb_config::sidecar::env;
use ebb_config::{GlobalConfig, resolve_service};
use serde_json::Value;

use crate::drain::termination_grace_period;
use crate::model::{ContainerPorts, PodTemplate, PreStop, SidecarContainer, UserContainer};
use crate::readiness::{Readiness, movable_readiness};
use crate::sidecar_container::Sidecar;

/// The service a pod template belongs to.
pub struct Service<'a> {
    /// Its name: `EBB_SERVICE_NAME`, and the pod template's `ebb.dev/service` label.
    pub name: &'a str,
    /// Its annotations (`ebb.dev/*`, `autoscaling.knative.dev/*`).
    pub annotations: &'a BTreeMap<String, String>,
    /// The cluster-wide defaults (`config-autoscaler`).
    pub global: &'a GlobalConfig,
}

/// An injected pod template.
#[derive(Debug)]
pub struct Injection {
    /// The template with the sidecar.
    pub template: Value,
    /// Things the user should know.
    pub warnings: Vec<String>,
}

/// Injects the queue-proxy of `service`, running `image`, into `template` (a pod template: `metadata` and
/// `spec`). On error, every problem found, so they can be fixed at once.
pub fn inject_template(
    template: &Value,
    service: &Service<'_>,
    image: &str,
) -> Result<Injection, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let config = match resolve_service(service.annotations, service.global) {
        Ok(diagnosed) => {
            warnings.extend(diagnosed.warnings.iter().map(ToString::to_string));
            Some(diagnosed.value)
        }
        Err(invalid) => {
            errors.extend(invalid.errors.iter().map(ToString::to_string));
            None
        }
    };
    let mut pod = match PodTemplate::read(template) {
        Ok(pod) => pod,
        Err(error) => {
            errors.push(error);
            return Err(errors);
        }
    };
    errors.extend(reserved_ports(&pod.ports_in_use));
    let existing = pod.sidecar.as_ref();
    let readiness = match &pod.user.readiness_probe {
        None => Readiness::Absent,
        Some(probe) => movable_readiness(probe, &pod.user.ports, pod.user.port()),
    };
    let (probe_path, probe_timeout) = probe(&readiness, &pod.user, existing, &mut warnings);
    if let Some(path) = &probe_path
        && !path.starts_with('/')
    {
        errors.push(format!(
            "the readinessProbe path {path:?} of container {:?} must be an absolute path",
            pod.user.name
        ));
    }
    if pod.user.pre_stop == PreStop::Own {
        warnings.push(format!(
            "container {:?} has its own preStop hook, which is kept: it should wait for GET \
             :{QUEUE_PROXY_ADMIN_PORT}{WAIT_FOR_DRAIN_PATH}, or the container may stop while the queue-proxy still \
             sends it requests",
            pod.user.name
        ));
    }
    let Some(config) = config else { return Err(errors) };
    if !errors.is_empty() {
        return Err(errors);
    }

    let grace = termination_grace_period(
        config.data_plane.timeout,
        existing.and_then(|s| s.literal_env(env::DRAIN_QUIET_PERIOD)),
        existing.and_then(|s| s.literal_env(env::DRAIN_DEADLINE)),
        pod.grace_period,
    );
    let sidecar = Sidecar {
        image,
        service: service.name,
        upstream_port: pod.user.port(),
        data_plane: &config.data_plane,
        probe_path,
        probe_timeout,
    }
    .container(existing);

    // The user container loses its readinessProbe (when moved) and gets the drain hook.
    if matches!(readiness, Readiness::Movable { .. }) {
        pod.user.readiness_probe = None;
    }
    if pod.user.pre_stop == PreStop::Absent {
        pod.user.pre_stop = PreStop::WaitForDrain;
    }
    pod.sidecar = Some(sidecar);
    pod.grace_period = Some(grace);
    // The activator and autoscaler find the pods by the label. Added when missing; another value is only
    // reported, since the Deployment's selector may rely on it.
    let name = service.name;
    match &pod.service_label {
        None => pod.service_label = Some(name.into()),
        Some(value) if value.as_str() == Some(name) => {}
        Some(value) => warnings.push(format!(
            "the pod template's label {LABEL_SERVICE} is {value:?} but must be {name:?}: the activator and \
             autoscaler find the pods by it"
        )),
    }
    Ok(Injection { template: pod.write(), warnings })
}

/// Every port another container of the pod listens on must be free for the queue-proxy: they share the pod's
/// network namespace.
fn reserved_ports(containers: &[ContainerPorts]) -> Vec<String> {
    let mut errors = Vec::new();
    for container in containers {
        for port in container.ports.iter().filter(|p| RESERVED_POD_PORTS.contains(&p.number)) {
            errors.push(format!(
                "container {:?} uses port {}, which the queue-proxy takes (ebb reserves {}); move the container to \
                 another port",
                container.container,
                port.number,
                RESERVED_POD_PORTS.map(|p| p.to_string()).join(", ")
            ));
        }
    }
    errors
}

/// What the queue-proxy probes on the user container (`EBB_PROBE_PATH`, `EBB_PROBE_TIMEOUT`).
fn probe(
    readiness: &Readiness,
    user: &UserContainer,
    existing: Option<&SidecarContainer>,
    warnings: &mut Vec<String>,
) -> (Option<String>, Option<String>) {
    match readiness {
        Readiness::Movable { path, timeout } => (path.clone(), timeout.clone()),
        // Already moved by an earlier injection: keep what the sidecar probes.
        Readiness::Absent => {
            let literal = |name| existing.and_then(|s| s.literal_env(name)).map(str::to_owned);
            (literal(env::PROBE_PATH), literal(env::PROBE_TIMEOUT))
        }
        Readiness::Kept(why) => {
            warnings.push(format!(
                "the readinessProbe of container {:?} stays on it ({why}); the queue-proxy probes a TCP connect to \
                 port {}, and the pod is Ready when both pass",
                user.name,
                user.port()
            ));
            (None, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_template_alone_is_enough() {
        // What an admission webhook would hand over: no Deployment, no document, just the template.
        let template = serde_json::json!({
            "metadata": {"annotations": {"x": "y"}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 7000}]}]},
        });
        let annotations = BTreeMap::from([("ebb.dev/timeout".to_owned(), "10s".to_owned())]);
        let service = Service { name: "svc", annotations: &annotations, global: &GlobalConfig::default() };
        let injected = inject_template(&template, &service, "img").unwrap();
        let out = &injected.template;
        assert_eq!(out["metadata"]["labels"][LABEL_SERVICE], "svc");
        assert_eq!(out["metadata"]["annotations"]["x"], "y", "the rest is kept");
        assert_eq!(out["spec"]["containers"][1]["image"], "img");
        // 10 s timeout + 30 s quiet period + 5 s margin.
        assert_eq!(out["spec"]["terminationGracePeriodSeconds"].as_u64(), Some(45));
        let errors = inject_template(&Value::Null, &service, "img").unwrap_err();
        assert_eq!(errors, ["has no spec.template.spec; nothing to inject into"]);
    }
}
