//! Whether a pod's queue-proxy runs with the settings its Deployment's annotations ask for. `ebb inject`
//! writes them as environment variables; an annotation changed without re-injecting (or a pod started
//! before the change) leaves the queue-proxy enforcing something else. A pure function of the pod and the
//! service's resolved [`DataPlaneSpec`]; the watch pass turns its answer into a Warning Event.

use std::fmt;
use std::time::Duration;

use ebb_config::keys::annotation;
use ebb_config::sidecar::env;
use ebb_config::value::{format_duration, parse_duration};
use ebb_config::{DataPlaneSpec, Protocol};
use k8s_openapi::api::core::v1::{Container, Pod};

/// The queue-proxy container's usual name.
const QUEUE_PROXY: &str = "queue-proxy";
/// The queue-proxy's `--timeout` default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One setting on which a pod's queue-proxy and the annotations disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The pod's name.
    pub pod: String,
    /// The environment variable, e.g. `EBB_CONTAINER_CONCURRENCY`.
    pub env: &'static str,
    /// Its literal value, or (when unset) the queue-proxy's default in effect; empty when that default is
    /// "unset" itself (the protocol follows the client).
    pub pod_value: String,
    /// Whether the variable is set on the container.
    pub pod_set: bool,
    /// The annotation key, e.g. `ebb.dev/container-concurrency`.
    pub annotation: &'static str,
    /// The resolved value (the annotation's, or its default); empty when unset.
    pub annotation_value: String,
}

fn show(value: &str) -> String {
    if value.is_empty() { "unset".to_owned() } else { format!("{value:?}") }
}

impl Mismatch {
    fn clause(&self) -> String {
        let pod = match (self.pod_set, self.pod_value.is_empty()) {
            (true, _) => format!("{:?}", self.pod_value),
            (false, true) => "unset".to_owned(),
            (false, false) => format!("unset (default {:?})", self.pod_value),
        };
        format!("{} is {pod} but {} is {}", self.env, self.annotation, show(&self.annotation_value))
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pod {}: {}; re-run ebb inject or restart the pod", self.pod, self.clause())
    }
}

/// One note for all of a pod's mismatches (the Event's text).
pub fn describe(mismatches: &[Mismatch]) -> String {
    match mismatches {
        [] => String::new(),
        [one] => one.to_string(),
        [first, ..] => {
            let clauses: Vec<String> = mismatches.iter().map(Mismatch::clause).collect();
            format!("pod {}: {}; re-run ebb inject or restart the pod", first.pod, clauses.join("; "))
        }
    }
}

/// The queue-proxy container: the one whose env has `EBB_UPSTREAM`, else the one named `queue-proxy`
/// (regular containers first, then init containers, where a native sidecar lives).
fn queue_proxy(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    let all = || spec.containers.iter().chain(spec.init_containers.iter().flatten());
    all()
        .find(|c| c.env.iter().flatten().any(|e| e.name == env::UPSTREAM))
        .or_else(|| all().find(|c| c.name == QUEUE_PROXY))
}

/// A variable's state on the container.
enum Env<'a> {
    /// Not set (or empty, which clap treats as not set): the default applies.
    Unset,
    /// Set from `valueFrom`: not known here, not compared.
    From,
    /// A literal value.
    Literal(&'a str),
}

fn env<'a>(container: &'a Container, name: &str) -> Env<'a> {
    // Kubernetes lets the last of duplicate names win.
    match container.env.iter().flatten().rfind(|e| e.name == name) {
        None => Env::Unset,
        Some(e) if e.value_from.is_some() => Env::From,
        Some(e) => match e.value.as_deref() {
            None | Some("") => Env::Unset,
            Some(v) => Env::Literal(v),
        },
    }
}

/// What the queue-proxy runs with for one variable: `Ok(None)` from `valueFrom` (unknown), `Err(text)` for
/// a literal it cannot parse.
fn effective<'a, T>(
    container: &'a Container,
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
    default: T,
) -> Result<Option<(T, Option<&'a str>)>, &'a str> {
    match env(container, name) {
        Env::Unset => Ok(Some((default, None))),
        Env::From => Ok(None),
        Env::Literal(text) => parse(text).map(|v| Some((v, Some(text)))).ok_or(text),
    }
}

fn protocol_text(protocol: Option<Protocol>) -> String {
    match protocol {
        None => String::new(),
        Some(Protocol::Http1) => "http1".into(),
        Some(Protocol::H2c) => "h2c".into(),
    }
}

fn idle_text(idle: Option<Duration>) -> String {
    idle.map_or_else(|| "0s".to_owned(), format_duration)
}

/// Where the queue-proxy container of `pod` (if it has one) would enforce something other than `spec`.
/// Variables set through `valueFrom` are not compared; an unset variable counts as the queue-proxy's default.
pub fn mismatches(pod: &Pod, spec: &DataPlaneSpec) -> Vec<Mismatch> {
    let Some(container) = queue_proxy(pod) else { return Vec::new() };
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    let mut push =
        |env: &'static str, literal: Option<&str>, default: String, ann: &'static str, want: String| {
            out.push(Mismatch {
                pod: pod_name.clone(),
                env,
                pod_value: literal.map_or(default, str::to_owned),
                pod_set: literal.is_some(),
                annotation: ann,
                annotation_value: want,
            });
        };
    let int = |t: &str| t.parse::<u32>().ok();

    // EBB_CONTAINER_CONCURRENCY (default 0) and EBB_QUEUE_DEPTH (default 10 x the pod's concurrency).
    let cc = effective(container, env::CONTAINER_CONCURRENCY, int, 0);
    let want_cc = spec.container_concurrency.to_string();
    match cc {
        Ok(Some((v, _))) if v == spec.container_concurrency => {}
        Ok(Some((v, literal))) => push(
            env::CONTAINER_CONCURRENCY,
            literal,
            v.to_string(),
            annotation::CONTAINER_CONCURRENCY,
            want_cc,
        ),
        Ok(None) => {}
        Err(text) => push(
            env::CONTAINER_CONCURRENCY,
            Some(text),
            String::new(),
            annotation::CONTAINER_CONCURRENCY,
            want_cc,
        ),
    }
    let want_depth = spec.queue_depth.to_string();
    match (env(container, env::QUEUE_DEPTH), &cc) {
        (Env::From, _) => {}
        (Env::Literal(text), _) => {
            if int(text) != Some(spec.queue_depth) {
                push(env::QUEUE_DEPTH, Some(text), String::new(), annotation::QUEUE_DEPTH, want_depth);
            }
        }
        (Env::Unset, Ok(Some((cc, _)))) => {
            let depth = cc.saturating_mul(10);
            if depth != spec.queue_depth {
                push(env::QUEUE_DEPTH, None, depth.to_string(), annotation::QUEUE_DEPTH, want_depth);
            }
        }
        // The concurrency is unknown or already reported: its derived default is not compared.
        (Env::Unset, _) => {}
    }

    // EBB_TIMEOUT (default 300s) and EBB_RESPONSE_START_TIMEOUT (default the pod's timeout).
    let timeout = effective(container, env::TIMEOUT, parse_duration, DEFAULT_TIMEOUT);
    let want = format_duration(spec.timeout);
    match timeout {
        Ok(Some((v, _))) if v == spec.timeout => {}
        Ok(Some((v, literal))) => push(env::TIMEOUT, literal, format_duration(v), annotation::TIMEOUT, want),
        Ok(None) => {}
        Err(text) => push(env::TIMEOUT, Some(text), String::new(), annotation::TIMEOUT, want),
    }
    let want = format_duration(spec.response_start_timeout);
    match (env(container, env::RESPONSE_START_TIMEOUT), &timeout) {
        (Env::From, _) => {}
        (Env::Literal(text), _) => {
            if parse_duration(text) != Some(spec.response_start_timeout) {
                push(
                    env::RESPONSE_START_TIMEOUT,
                    Some(text),
                    String::new(),
                    annotation::RESPONSE_START_TIMEOUT,
                    want,
                );
            }
        }
        (Env::Unset, Ok(Some((t, _)))) => {
            if *t != spec.response_start_timeout {
                push(
                    env::RESPONSE_START_TIMEOUT,
                    None,
                    format_duration(*t),
                    annotation::RESPONSE_START_TIMEOUT,
                    want,
                );
            }
        }
        (Env::Unset, _) => {}
    }

    // EBB_IDLE_TIMEOUT (default 0 = off).
    let off = |d: Duration| (!d.is_zero()).then_some(d);
    let want_idle = spec.idle_timeout.and_then(off);
    let want = idle_text(want_idle);
    match effective(container, env::IDLE_TIMEOUT, parse_duration, Duration::ZERO) {
        Ok(Some((v, _))) if off(v) == want_idle => {}
        Ok(Some((v, literal))) => {
            push(env::IDLE_TIMEOUT, literal, idle_text(off(v)), annotation::IDLE_TIMEOUT, want)
        }
        Ok(None) => {}
        Err(text) => push(env::IDLE_TIMEOUT, Some(text), String::new(), annotation::IDLE_TIMEOUT, want),
    }

    // EBB_REQUEST_BODY_TIMEOUT (default 60 s, or the timeout when shorter; 0 = off).
    let want_body = spec.request_body_timeout.and_then(off);
    let want = idle_text(want_body);
    let default = ebb_config::DEFAULT_REQUEST_BODY_TIMEOUT.min(spec.timeout);
    match effective(container, env::REQUEST_BODY_TIMEOUT, parse_duration, default) {
        Ok(Some((v, _))) if off(v) == want_body => {}
        Ok(Some((v, literal))) => push(
            env::REQUEST_BODY_TIMEOUT,
            literal,
            idle_text(off(v)),
            annotation::REQUEST_BODY_TIMEOUT,
            want,
        ),
        Ok(None) => {}
        Err(text) => {
            push(env::REQUEST_BODY_TIMEOUT, Some(text), String::new(), annotation::REQUEST_BODY_TIMEOUT, want)
        }
    }

    // EBB_PROTOCOL (default unset: follow the client).
    let parse_protocol = |t: &str| t.parse::<Protocol>().ok().map(Some);
    let want = protocol_text(spec.protocol);
    match effective(container, env::PROTOCOL, parse_protocol, None) {
        Ok(Some((v, _))) if v == spec.protocol => {}
        Ok(Some((v, literal))) => push(env::PROTOCOL, literal, protocol_text(v), annotation::PROTOCOL, want),
        Ok(None) => {}
        Err(text) => push(env::PROTOCOL, Some(text), String::new(), annotation::PROTOCOL, want),
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> DataPlaneSpec {
        DataPlaneSpec {
            container_concurrency: 4,
            timeout: Duration::from_secs(300),
            response_start_timeout: Duration::from_secs(300),
            idle_timeout: None,
            request_body_timeout: Some(Duration::from_secs(60)),
            queue_depth: 40,
            activation_timeout: Duration::from_secs(60),
            max_queued: 100,
            hosts: Vec::new(),
            protocol: None,
        }
    }

    fn pod(env: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "chat-7f9c"},
            "spec": {"containers": [
                {"name": "app", "env": [{"name": env::CONTAINER_CONCURRENCY, "value": "99"}]},
                {"name": "sidecar", "env": env},
            ]},
        }))
        .unwrap()
    }

    fn qp(extra: serde_json::Value) -> Pod {
        let mut env = vec![json!({"name": env::UPSTREAM, "value": "127.0.0.1:8080"})];
        env.extend(extra.as_array().unwrap().iter().cloned());
        pod(serde_json::Value::Array(env))
    }

    fn envs(found: &[Mismatch]) -> Vec<&'static str> {
        found.iter().map(|m| m.env).collect()
    }

    #[test]
    fn matching_env_has_no_mismatch() {
        let p = qp(json!([{"name": env::CONTAINER_CONCURRENCY, "value": "4"}]));
        assert_eq!(mismatches(&p, &spec()), []);
        let mut s = spec();
        s.timeout = Duration::from_secs(60);
        s.response_start_timeout = Duration::from_secs(10);
        s.idle_timeout = Some(Duration::from_secs(30));
        s.queue_depth = 7;
        s.protocol = Some(Protocol::H2c);
        let p = qp(json!([
            {"name": env::CONTAINER_CONCURRENCY, "value": "4"},
            {"name": env::QUEUE_DEPTH, "value": "7"},
            {"name": env::TIMEOUT, "value": "1m"},
            {"name": env::RESPONSE_START_TIMEOUT, "value": "10"},
            {"name": env::IDLE_TIMEOUT, "value": "30s"},
            {"name": env::PROTOCOL, "value": "h2c"},
        ]));
        assert_eq!(mismatches(&p, &s), []);
    }

    #[test]
    fn each_setting_is_compared() {
        let p = qp(json!([
            {"name": env::CONTAINER_CONCURRENCY, "value": "2"},
            {"name": env::QUEUE_DEPTH, "value": "5"},
            {"name": env::TIMEOUT, "value": "10s"},
            {"name": env::RESPONSE_START_TIMEOUT, "value": "5s"},
            {"name": env::IDLE_TIMEOUT, "value": "1m"},
            {"name": env::PROTOCOL, "value": "http1"},
        ]));
        let found = mismatches(&p, &spec());
        assert_eq!(
            envs(&found),
            [
                env::CONTAINER_CONCURRENCY,
                env::QUEUE_DEPTH,
                env::TIMEOUT,
                env::RESPONSE_START_TIMEOUT,
                env::IDLE_TIMEOUT,
                env::PROTOCOL
            ]
        );
        assert_eq!(found[0].annotation, annotation::CONTAINER_CONCURRENCY);
        assert_eq!((found[0].pod_value.as_str(), found[0].annotation_value.as_str()), ("2", "4"));
        assert_eq!(
            found[0].to_string(),
            "pod chat-7f9c: EBB_CONTAINER_CONCURRENCY is \"2\" but ebb.dev/container-concurrency is \"4\"; \
             re-run ebb inject or restart the pod"
        );
        assert_eq!(found[4].annotation_value, "0s");
        assert!(found[5].to_string().contains("ebb.dev/protocol is unset"));
        let note = describe(&found);
        assert!(note.starts_with("pod chat-7f9c: EBB_CONTAINER_CONCURRENCY"), "{note}");
        assert!(note.contains("EBB_PROTOCOL is \"http1\""), "{note}");
        // Unparseable literals are mismatches too (the queue-proxy would not start).
        let p = qp(
            json!([{"name": env::CONTAINER_CONCURRENCY, "value": "4"}, {"name": env::PROTOCOL, "value": "h3"}]),
        );
        assert_eq!(envs(&mismatches(&p, &spec())), [env::PROTOCOL]);
    }

    #[test]
    fn unset_env_is_the_queue_proxy_default() {
        // CC 4 annotated, nothing set: the queue-proxy runs unlimited with no queue.
        let found = mismatches(&qp(json!([])), &spec());
        assert_eq!(envs(&found), [env::CONTAINER_CONCURRENCY, env::QUEUE_DEPTH]);
        assert!(!found[0].pod_set);
        assert_eq!(found[0].pod_value, "0");
        assert!(found[0].to_string().contains("is unset (default \"0\")"), "{}", found[0]);
        // Defaults agree with defaults; the response-start default follows the pod's timeout.
        let mut s = spec();
        s.container_concurrency = 0;
        s.queue_depth = 0;
        assert_eq!(mismatches(&qp(json!([])), &s), []);
        s.timeout = Duration::from_secs(60);
        s.response_start_timeout = Duration::from_secs(60);
        let p = qp(json!([{"name": env::TIMEOUT, "value": "60s"}]));
        assert_eq!(mismatches(&p, &s), []);
        s.idle_timeout = Some(Duration::from_secs(5));
        s.protocol = Some(Protocol::Http1);
        assert_eq!(envs(&mismatches(&p, &s)), [env::IDLE_TIMEOUT, env::PROTOCOL]);
    }

    #[test]
    fn value_from_is_not_compared() {
        let p = qp(json!([
            {"name": env::CONTAINER_CONCURRENCY, "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['ebb.dev/container-concurrency']"}}},
            {"name": env::QUEUE_DEPTH, "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}},
        ]));
        assert_eq!(mismatches(&p, &spec()), []);
    }

    #[test]
    fn pods_without_a_queue_proxy_are_not_checked() {
        let p = pod(json!([{"name": "OTHER", "value": "1"}]));
        assert_eq!(mismatches(&p, &spec()), []);
        let bare: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(mismatches(&bare, &spec()), []);
        // Found by name when EBB_UPSTREAM is left to its default.
        let named: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "queue-proxy"}]}}))
        .unwrap();
        assert_eq!(envs(&mismatches(&named, &spec())), [env::CONTAINER_CONCURRENCY, env::QUEUE_DEPTH]);
    }
}
