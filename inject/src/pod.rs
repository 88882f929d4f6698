//! The two entry points: a pod template in ([`inject_template`], for `ebb inject`) or a Pod in ([`inject_pod`], for
//! the admission webhook), the same with the queue-proxy sidecar out (or every reason it cannot have one). Both
//! run one function: a pod gets the same sidecar whichever way it came.
//!
//! What the template or pod gets (the cluster's conventions, and Knative's layout):
//! - a `queue-proxy` container (ports 8012/8022/9090/9091) whose `EBB_*` env carries the data-plane settings
//!   resolved from the service's annotations, exactly as the autoscaler's ConfigMismatch check
//!   (`ebb_autoscaler::cluster::env_check`) reads them back;
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
use crate::model::{ContainerPorts, PodTemplate, PreStop, SIDECAR, SidecarContainer, UserContainer};
use crate::readiness::{Readiness, movable_readiness};
use crate::sidecar_container::Sidecar;
use crate::value::{at, str_at};

/// The service a pod template or a pod belongs to.
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

/// A Pod after the webhook's injection.
#[derive(Debug)]
pub struct PodInjection {
    /// The pod: with the sidecar, or as it came when it had one already.
    pub pod: Value,
    /// Whether the sidecar was added; `false` when the pod had one already and is returned unchanged.
    pub injected: bool,
    /// Things the user should know.
    pub warnings: Vec<String>,
}

/// Injects the queue-proxy of `service`, running `image`, into `template` (a Deployment's pod template:
/// `metadata` and `spec`). Injecting again updates an earlier injection's sidecar in place. On error, every
/// problem found, so they can be fixed at once; each names the annotation or field.
pub fn inject_template(
    template: &Value,
    service: &Service<'_>,
    image: &str,
) -> Result<Injection, Vec<String>> {
    inject(template, "spec.template.spec", service, image)
}

/// Injects the queue-proxy of `service`, running `image`, into `pod` (a Pod as an AdmissionReview carries it on
/// creation: `metadata` and `spec`), for the admission webhook; `service` carries the annotations of the
/// workload that owns the pod. The same injection as [`inject_template`], with two rules of its own:
/// - a pod that has the sidecar already (its Deployment went through `ebb inject`) is returned unchanged, so
///   the sidecar is never added twice nor changed under the workload's nose;
/// - its label `ebb.dev/service` must name `service`: the activator and the autoscaler find the service's pods
///   by it, so a pod without it, or of another service, is refused.
pub fn inject_pod(pod: &Value, service: &Service<'_>, image: &str) -> Result<PodInjection, Vec<String>> {
    let containers = at(pod, &["spec", "containers"]).and_then(Value::as_array);
    if containers.into_iter().flatten().any(|c| str_at(c, &["name"]) == Some(SIDECAR)) {
        return Ok(PodInjection { pod: pod.clone(), injected: false, warnings: Vec::new() });
    }
    let label = at(pod, &["metadata", "labels", LABEL_SERVICE]);
    if label.and_then(Value::as_str) != Some(service.name) {
        let found = label.map_or_else(|| "missing".to_owned(), |l| format!("{l}"));
        return Err(vec![format!(
            "the pod's label {LABEL_SERVICE} is {found} but must be {:?}: the activator and autoscaler find the \
             service's pods by it",
            service.name
        )]);
    }
    let Injection { template, warnings } = inject(pod, "spec", service, image)?;
    Ok(PodInjection { pod: template, injected: true, warnings })
}

/// The injection both entry points run, into a pod template or a pod; `spec` names its pod spec in errors.
fn inject(
    template: &Value,
    spec: &str,
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
    let mut pod = match PodTemplate::read(template, spec) {
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
    use serde_json::json;

    use super::*;

    fn service<'a>(annotations: &'a BTreeMap<String, String>, global: &'a GlobalConfig) -> Service<'a> {
        Service { name: "svc", annotations, global }
    }

    fn timeout(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("ebb.dev/timeout".to_owned(), value.to_owned())])
    }

    #[test]
    fn a_pod_template_alone_is_enough() {
        // What an admission webhook would hand over: no Deployment, no document, just the template.
        let template = json!({
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

    #[test]
    fn a_pod_gets_the_sidecar_its_template_would_get() {
        let (annotations, global) = (timeout("10s"), GlobalConfig::default());
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "svc-7d9f-", "labels": {LABEL_SERVICE: "svc"}},
            "spec": {"containers": [{
                "name": "app",
                "ports": [{"containerPort": 8000}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8000}},
            }]},
        });
        let injected = inject_pod(&pod, &service(&annotations, &global), "img").unwrap();
        assert!(injected.injected);
        let template = json!({"metadata": pod["metadata"], "spec": pod["spec"]});
        let from_template = inject_template(&template, &service(&annotations, &global), "img").unwrap();
        assert_eq!(injected.pod["spec"], from_template.template["spec"], "one model, two entry points");
        assert_eq!(
            (injected.pod["kind"].as_str(), &injected.pod["metadata"]),
            (Some("Pod"), &pod["metadata"])
        );
        let containers = injected.pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers[1]["name"], SIDECAR);
        assert!(containers[0].get("readinessProbe").is_none(), "moved to the queue-proxy");
    }

    #[test]
    fn a_pod_that_has_the_sidecar_is_returned_unchanged() {
        let (annotations, global) = (timeout("10s"), GlobalConfig::default());
        let pod = json!({
            "metadata": {"labels": {LABEL_SERVICE: "svc"}},
            "spec": {"containers": [{"name": "app"}]},
        });
        let once = inject_pod(&pod, &service(&annotations, &global), "img").unwrap().pod;
        // Even with other annotations now, or invalid ones: the pod is its workload's, as injected then.
        for annotations in [timeout("1m"), timeout("forever")] {
            let again = inject_pod(&once, &service(&annotations, &global), "other-img").unwrap();
            assert!(!again.injected);
            assert_eq!((again.pod, again.warnings.len()), (once.clone(), 0));
        }
    }

    #[test]
    fn a_pod_must_carry_the_services_label_and_errors_name_the_annotation() {
        let (annotations, global) = (timeout("10s"), GlobalConfig::default());
        let unlabelled = json!({"metadata": {}, "spec": {"containers": [{"name": "app"}]}});
        let errors = inject_pod(&unlabelled, &service(&annotations, &global), "img").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("the pod's label ebb.dev/service is missing but must be \"svc\""),
            "{errors:?}"
        );
        let other = json!({"metadata": {"labels": {LABEL_SERVICE: "other"}}, "spec": {"containers": [{"name": "app"}]}});
        let errors = inject_pod(&other, &service(&annotations, &global), "img").unwrap_err();
        assert!(errors[0].contains("is \"other\" but must be \"svc\""), "{errors:?}");

        let pod = json!({"metadata": {"labels": {LABEL_SERVICE: "svc"}}, "spec": {"containers": [{"name": "app"}]}});
        let bad = timeout("forever");
        let errors = inject_pod(&pod, &service(&bad, &global), "img").unwrap_err();
        assert!(errors.iter().any(|e| e.contains("ebb.dev/timeout: \"forever\"")), "{errors:?}");
        let errors =
            inject_pod(&json!({"metadata": pod["metadata"]}), &service(&annotations, &global), "img");
        assert_eq!(errors.unwrap_err(), ["has no spec; nothing to inject into"]);
    }
}
