//! Whether a pod's queue-proxy runs with the settings its Deployment's annotations ask for. `ebb inject`
//! writes them as environment variables; an annotation changed without re-injecting (or a pod started
//! before the change) leaves the queue-proxy enforcing something else. A pure function of the pod and the
//! service's resolved [`DataPlaneSpec`]; the watch pass turns its answer into a Warning Event.

use std::fmt;
use std::time::Duration;

use ebb_config::keys::annotation;
use ebb_config::sidecar::{data_plane_settings, env};
use ebb_config::value::{format_duration, parse_duration};
use ebb_config::{DataPlaneSpec, Protocol};

use super::watched::{WatchedContainer, WatchedPod};

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

/// One note for all of a pod's mismatches (the Event's text), for a sidecar written into the Deployment by
/// `ebb inject`.
pub fn describe(mismatches: &[Mismatch]) -> String {
    match mismatches {
        [] => String::new(),
        [one] => one.to_string(),
        _ => describe_with(mismatches, "re-run ebb inject or restart the pod"),
    }
}

/// One note for all of a pod's mismatches, ending with `remedy` (for a sidecar the admission webhook added
/// when the pod was created, the Deployment's restart).
pub fn describe_with(mismatches: &[Mismatch], remedy: &str) -> String {
    let Some(first) = mismatches.first() else { return String::new() };
    let clauses: Vec<String> = mismatches.iter().map(Mismatch::clause).collect();
    format!("pod {}: {}; {remedy}", first.pod, clauses.join("; "))
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

fn env<'a>(container: &'a WatchedContainer, name: &str) -> Env<'a> {
    // Kubernetes lets the last of duplicate names win.
    match container.env.iter().flatten().rfind(|e| e.name == name) {
        None => Env::Unset,
        Some(e) if e.value_from => Env::From,
        Some(e) => match e.value.as_deref() {
            None | Some("") => Env::Unset,
            Some(v) => Env::Literal(v),
        },
    }
}

/// One variable the queue-proxy reads, as compared here.
struct Variable {
    /// The variable (one of [`env`](mod@env)).
    env: &'static str,
    /// The annotation it carries.
    annotation: &'static str,
    /// A value as the queue-proxy reads it, written as [`data_plane_settings`] writes it, so that the two
    /// compare as text; `None` when the queue-proxy cannot parse it.
    canonical: fn(&str) -> Option<String>,
    /// What the queue-proxy runs with when the variable is unset, in the same form; `None` when that cannot
    /// be known here.
    default: fn(&Known<'_>) -> Option<String>,
}

/// What an unset variable's default may depend on: the service's settings, and what the queue-proxy runs
/// with for the variables compared before it.
struct Known<'a> {
    spec: &'a DataPlaneSpec,
    /// Each variable compared so far with its value in effect; `None` when unknown (`valueFrom`) or
    /// unparseable (already reported).
    effective: Vec<(&'static str, Option<String>)>,
}

impl Known<'_> {
    fn effective(&self, env: &str) -> Option<&str> {
        self.effective.iter().find(|(name, _)| *name == env).and_then(|(_, value)| value.as_deref())
    }
}

fn whole(text: &str) -> Option<String> {
    text.parse::<u32>().ok().map(|n| n.to_string())
}

fn duration(text: &str) -> Option<String> {
    parse_duration(text).map(format_duration)
}

fn protocol(text: &str) -> Option<String> {
    text.parse::<Protocol>().ok().map(|p| p.as_str().to_owned())
}

/// The compared variables, in the order their mismatches are reported, with the queue-proxy's defaults.
const VARIABLES: [Variable; 7] = [
    Variable {
        env: env::CONTAINER_CONCURRENCY,
        annotation: annotation::CONTAINER_CONCURRENCY,
        canonical: whole,
        default: |_| Some("0".to_owned()),
    },
    // 10 x the pod's concurrency; not compared when that is unknown.
    Variable {
        env: env::QUEUE_DEPTH,
        annotation: annotation::QUEUE_DEPTH,
        canonical: whole,
        default: |known| {
            let concurrency: u32 = known.effective(env::CONTAINER_CONCURRENCY)?.parse().ok()?;
            Some(concurrency.saturating_mul(10).to_string())
        },
    },
    Variable {
        env: env::TIMEOUT,
        annotation: annotation::TIMEOUT,
        canonical: duration,
        default: |_| Some(format_duration(DEFAULT_TIMEOUT)),
    },
    // The pod's timeout; not compared when that is unknown.
    Variable {
        env: env::RESPONSE_START_TIMEOUT,
        annotation: annotation::RESPONSE_START_TIMEOUT,
        canonical: duration,
        default: |known| known.effective(env::TIMEOUT).map(str::to_owned),
    },
    // 0 = off.
    Variable {
        env: env::IDLE_TIMEOUT,
        annotation: annotation::IDLE_TIMEOUT,
        canonical: duration,
        default: |_| Some(format_duration(Duration::ZERO)),
    },
    // 60 s, or the timeout when shorter; 0 = off.
    Variable {
        env: env::REQUEST_BODY_TIMEOUT,
        annotation: annotation::REQUEST_BODY_TIMEOUT,
        canonical: duration,
        default: |known| {
            Some(format_duration(ebb_config::DEFAULT_REQUEST_BODY_TIMEOUT.min(known.spec.timeout)))
        },
    },
    // Unset: follow the client.
    Variable {
        env: env::PROTOCOL,
        annotation: annotation::PROTOCOL,
        canonical: protocol,
        default: |_| Some(String::new()),
    },
];

/// Where the queue-proxy container of `pod` (if it has one) would enforce something other than `spec`.
/// Variables set through `valueFrom` are not compared; an unset variable counts as the queue-proxy's default.
pub fn mismatches(pod: &WatchedPod, spec: &DataPlaneSpec) -> Vec<Mismatch> {
    let Some(container) = pod.queue_proxy() else { return Vec::new() };
    let pod_name = pod.name().to_owned();
    // What the annotations ask for, as text; a setting left out (the protocol) is unset.
    let wanted = data_plane_settings(spec);
    let mut known = Known { spec, effective: Vec::with_capacity(VARIABLES.len()) };
    let mut out = Vec::new();
    for variable in &VARIABLES {
        let want = wanted.iter().find(|s| s.env == variable.env).map(|s| s.value.clone()).unwrap_or_default();
        // What the pod shows, whether it is set, the value in effect, and whether that differs from `want`.
        let (pod_value, pod_set, effective, differs) = match env(container, variable.env) {
            Env::From => (String::new(), true, None, false),
            Env::Literal(text) => {
                let effective = (variable.canonical)(text);
                // A literal the queue-proxy cannot parse differs from anything (it would not start).
                let differs = effective.as_ref() != Some(&want);
                (text.to_owned(), true, effective, differs)
            }
            Env::Unset => match (variable.default)(&known) {
                Some(default) => (default.clone(), false, Some(default.clone()), default != want),
                // Derived from a value that is unknown: not compared.
                None => (String::new(), false, None, false),
            },
        };
        if differs {
            out.push(Mismatch {
                pod: pod_name.clone(),
                env: variable.env,
                pod_value,
                pod_set,
                annotation: variable.annotation,
                annotation_value: want,
            });
        }
        known.effective.push((variable.env, effective));
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

    fn pod(env: serde_json::Value) -> WatchedPod {
        serde_json::from_value(json!({
            "metadata": {"name": "chat-7f9c"},
            "spec": {"containers": [
                {"name": "app", "env": [{"name": env::CONTAINER_CONCURRENCY, "value": "99"}]},
                {"name": "sidecar", "env": env},
            ]},
        }))
        .unwrap()
    }

    fn qp(extra: serde_json::Value) -> WatchedPod {
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
        let bare: WatchedPod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(mismatches(&bare, &spec()), []);
        // Found by name when EBB_UPSTREAM is left to its default.
        let named: WatchedPod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "queue-proxy"}]}}))
        .unwrap();
        assert_eq!(envs(&mismatches(&named, &spec())), [env::CONTAINER_CONCURRENCY, env::QUEUE_DEPTH]);
    }
}
