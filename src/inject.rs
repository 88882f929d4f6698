//! `ebb inject FILE|-`: adds the queue-proxy sidecar to every Deployment labelled `ebb.dev/service` in
//! multi-document Kubernetes YAML and prints the result. Other documents pass through as they were written
//! (comments included), in order; a Deployment that already has the sidecar is updated in place, so
//! injecting twice gives the same output as once.
//!
//! What an injected Deployment gets (the cluster conventions, and Knative's layout):
//! - a `queue-proxy` container (ports 8012/8022/9090/9091) whose `EBB_*` env carries the data-plane settings
//!   resolved from the Deployment's annotations, exactly as the autoscaler's ConfigMismatch check
//!   (`ebb_autoscaler::kube::env_check`) reads them back;
//! - the user container's readinessProbe moved to the queue-proxy, which probes the user container itself
//!   (`EBB_PROBE_PATH`); the kubelet probes the queue-proxy with `Ebb-Probe: queue`. Startup and liveness
//!   probes stay on the user container;
//! - a preStop hook on the user container that waits for the queue-proxy to drain (the queue-proxy has none:
//!   SIGTERM starts its drain), and a `terminationGracePeriodSeconds` long enough for that drain.
//!
//! The user container is the first container not named `queue-proxy`; its port is its first TCP
//! `containerPort`, or 8080 (the queue-proxy's default upstream) when it declares none.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use ebb_config::names::{
    CONFIG_MAP_NAME, HEADER_PROBE, LABEL_SERVICE, PROBE_QUEUE, QUEUE_PROXY_ADMIN_PORT, QUEUE_PROXY_DATA_PORT,
    QUEUE_PROXY_METRICS_PORT, QUEUE_PROXY_STATS_PORT, RESERVED_POD_PORTS, WAIT_FOR_DRAIN_PATH,
};
use ebb_config::sidecar::{self, data_plane_settings};
use ebb_config::value::parse_duration;
use ebb_config::{GlobalConfig, resolve_service};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::manifest::{Source, at, read_source, string_map};

/// The one image of every ebb component (cluster conventions).
pub const IMAGE: &str = "ghcr.io/ebb-dev/ebb:0.1.0";
/// The sidecar's container name.
pub const SIDECAR: &str = "queue-proxy";
/// The user container's port when it declares none: the queue-proxy's default upstream port.
pub const DEFAULT_USER_PORT: u16 = 8080;
/// The queue-proxy's `EBB_DRAIN_QUIET_PERIOD` default (queue-proxy/src/cli.rs).
const DEFAULT_DRAIN_QUIET_PERIOD: Duration = Duration::from_secs(30);
/// Time beyond the drain deadline for the preStop hook's round trip and the process's exit.
const GRACE_MARGIN: Duration = Duration::from_secs(5);
/// Kubernetes' default `terminationGracePeriodSeconds`.
const KUBERNETES_DEFAULT_GRACE_SECS: u64 = 30;

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

/// Arguments of `ebb inject`.
#[derive(clap::Args)]
pub struct Args {
    /// Kubernetes YAML (several documents, `kind: List` too); `-` reads standard input.
    #[arg(value_name = "FILE")]
    file: String,
    /// The image of the queue-proxy sidecar.
    #[arg(long, default_value = IMAGE)]
    image: String,
}

/// One reason the input cannot be injected, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectError {
    /// 1-based index of the YAML document.
    pub document: usize,
    /// `Kind NAMESPACE/NAME` (or `Kind NAME` without a namespace), when the document is an object.
    pub object: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}: ", self.document)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The result of injecting one YAML stream.
#[derive(Debug, Default)]
pub struct Injected {
    /// The YAML to print.
    pub yaml: String,
    /// Things the user should know (printed on stderr), prefixed like errors.
    pub warnings: Vec<String>,
    /// Deployments that got (or kept) the sidecar.
    pub deployments: usize,
}

/// Runs `ebb inject`.
pub fn run(args: Args) -> ExitCode {
    let source = Source(args.file);
    let text = match read_source(&source) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("ebb inject: {source}: {err}");
            return ExitCode::from(ebb_process::exit::USAGE);
        }
    };
    match inject(&text, &args.image) {
        Ok(injected) => {
            for warning in &injected.warnings {
                eprintln!("ebb inject: {source}: warning: {warning}");
            }
            print!("{}", injected.yaml);
            eprintln!("ebb inject: {source}: {} Deployment(s) with the queue-proxy", injected.deployments);
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("ebb inject: {source}: {error}");
            }
            eprintln!("ebb inject: {} error(s); nothing printed", errors.len());
            ExitCode::from(ebb_process::exit::USAGE)
        }
    }
}

/// Injects every labelled Deployment of a YAML stream. On error, every problem found (all of them, so they
/// can be fixed at once) and no output.
pub fn inject(text: &str, image: &str) -> Result<Injected, Vec<InjectError>> {
    let documents = split_documents(text).map_err(|(document, message)| {
        vec![InjectError { document, object: None, message: format!("not valid YAML: {message}") }]
    })?;
    let mut errors = Vec::new();
    let global = global_config(&documents, &mut errors);
    let mut out = Injected::default();
    let mut pieces = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        let number = index + 1;
        let Document { raw, value } = document;
        let Some(mut value) = value else {
            pieces.push(raw);
            continue;
        };
        let mut changed = false;
        let mut visit = |object: &mut Value| match inject_object(object, &global, image) {
            Ok(None) => {}
            Ok(Some(outcome)) => {
                out.deployments += 1;
                changed |= outcome.changed;
                let name = describe(object);
                out.warnings
                    .extend(outcome.warnings.iter().map(|w| format!("document {number}: {name}: {w}")));
            }
            Err(messages) => {
                let object = Some(describe(object));
                errors.extend(messages.into_iter().map(|message| InjectError {
                    document: number,
                    object: object.clone(),
                    message,
                }));
            }
        };
        if str_at(&value, &["kind"]) == Some("List") {
            for item in value.get_mut("items").and_then(Value::as_sequence_mut).into_iter().flatten() {
                visit(item);
            }
        } else {
            visit(&mut value);
        }
        if changed || raw.is_none() {
            let yaml = serde_yaml::to_string(&value).map_err(|e| {
                vec![InjectError {
                    document: number,
                    object: None,
                    message: format!("cannot write YAML: {e}"),
                }]
            })?;
            pieces.push(Some(yaml));
        } else {
            pieces.push(raw);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    out.yaml = pieces.into_iter().flatten().collect::<Vec<_>>().join("---\n");
    Ok(out)
}

/// One document: its text as written (when the stream could be split faithfully) and its value (`None` for
/// a document that is only comments or empty).
struct Document {
    raw: Option<String>,
    value: Option<Value>,
}

/// Splits a YAML stream into documents. The text is cut at `---` lines so that documents that are not changed
/// can be printed as written; the cut is trusted only when every piece parses to exactly the document the
/// YAML parser saw there, otherwise documents are re-serialized. Comment-only pieces stay with the document
/// that follows them. `Err((document, message))` when the stream is not YAML.
fn split_documents(text: &str) -> Result<Vec<Document>, (usize, String)> {
    let mut values = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        values.push(Value::deserialize(document).map_err(|e| (index + 1, e.to_string()))?);
    }
    let values: Vec<Value> = values.into_iter().filter(|v| !v.is_null()).collect();
    let mut pieces: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        let marker = line.trim_end();
        if marker == "---" || marker.starts_with("--- ") || marker.starts_with("---\t") {
            pieces.push(std::mem::take(&mut current));
            // Content after the marker on the same line (`--- # comment`) stays with its document.
            let rest = line[3..].trim_start_matches([' ', '\t']);
            if !rest.trim().is_empty() {
                current.push_str(rest);
            }
        } else {
            current.push_str(line);
        }
    }
    pieces.push(current);
    // Each piece parsed alone; comment-only pieces are carried into the next document's text.
    let mut raw_documents: Vec<(String, Value)> = Vec::new();
    let mut pending = String::new();
    let mut faithful = true;
    for piece in pieces {
        let mut parsed = Vec::new();
        for document in serde_yaml::Deserializer::from_str(&piece) {
            match Value::deserialize(document) {
                Ok(v) if !v.is_null() => parsed.push(v),
                Ok(_) => {}
                // The iterator repeats a syntax error forever: stop at the first.
                Err(_) => {
                    faithful = false;
                    break;
                }
            }
        }
        match parsed.len() {
            0 => pending.push_str(&piece),
            1 => {
                let raw = std::mem::take(&mut pending) + &piece;
                let raw = if raw.ends_with('\n') { raw } else { raw + "\n" };
                raw_documents.push((raw, parsed.pop().unwrap_or(Value::Null)));
            }
            _ => faithful = false,
        }
    }
    faithful &= raw_documents.len() == values.len()
        && raw_documents.iter().zip(&values).all(|((_, parsed), value)| parsed == value);
    if !faithful {
        return Ok(values.into_iter().map(|value| Document { raw: None, value: Some(value) }).collect());
    }
    let mut documents: Vec<Document> = raw_documents
        .into_iter()
        .map(|(raw, value)| Document { raw: Some(raw), value: Some(value) })
        .collect();
    // Trailing comments: kept after the last document.
    if pending.lines().any(|l| !l.trim().is_empty()) {
        match documents.last_mut().and_then(|d| d.raw.as_mut()) {
            Some(raw) => raw.push_str(&pending),
            None => documents.push(Document { raw: Some(pending), value: None }),
        }
    }
    Ok(documents)
}

/// The first `config-autoscaler` ConfigMap in the input, as `ebb check` uses it; Knative's defaults without.
fn global_config(documents: &[Document], errors: &mut Vec<InjectError>) -> GlobalConfig {
    for (index, document) in documents.iter().enumerate() {
        let Some(value) = &document.value else { continue };
        let items: Vec<&Value> = match value.get("items").and_then(Value::as_sequence) {
            Some(items) if str_at(value, &["kind"]) == Some("List") => items.iter().collect(),
            _ => vec![value],
        };
        for object in items {
            if str_at(object, &["kind"]) != Some("ConfigMap")
                || str_at(object, &["metadata", "name"]) != Some(CONFIG_MAP_NAME)
            {
                continue;
            }
            let data = string_map(object.get("data")).0;
            match GlobalConfig::from_data(&data) {
                Ok(config) => return config.value,
                Err(invalid) => {
                    let object = Some(describe(object));
                    errors.extend(invalid.errors.iter().map(|e| InjectError {
                        document: index + 1,
                        object: object.clone(),
                        message: e.to_string(),
                    }));
                    return GlobalConfig::default();
                }
            }
        }
    }
    GlobalConfig::default()
}

/// What injecting one object did.
struct Outcome {
    /// Whether the object differs from the input.
    changed: bool,
    /// Notes for the user.
    warnings: Vec<String>,
}

/// Injects `object` when it is a Deployment labelled `ebb.dev/service`: `Ok(None)` for any other object.
fn inject_object(
    object: &mut Value,
    global: &GlobalConfig,
    image: &str,
) -> Result<Option<Outcome>, Vec<String>> {
    if str_at(object, &["kind"]) != Some("Deployment")
        || at(object, &["metadata", "labels", LABEL_SERVICE]).is_none()
    {
        return Ok(None);
    }
    let before = object.clone();
    let warnings = inject_deployment(object, global, image)?;
    Ok(Some(Outcome { changed: *object != before, warnings }))
}

/// The data-plane settings the sidecar gets, and how the drain is bounded.
fn inject_deployment(
    deployment: &mut Value,
    global: &GlobalConfig,
    image: &str,
) -> Result<Vec<String>, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let name = str_at(deployment, &["metadata", "name"]).unwrap_or_default().to_owned();
    if name.is_empty() {
        errors.push("has no metadata.name; the sidecar needs the service's name".to_owned());
    }
    let label = str_at(deployment, &["metadata", "labels", LABEL_SERVICE]).unwrap_or_default();
    if !name.is_empty() && label != name {
        warnings.push(format!(
            "label {LABEL_SERVICE} is {label:?} but must equal the Deployment's name {name:?}"
        ));
    }
    let (annotations, not_strings) = string_map(at(deployment, &["metadata", "annotations"]));
    for key in &not_strings {
        let value = &annotations[key];
        errors.push(format!("{key}: {value}: annotation values must be strings; quote it: \"{value}\""));
    }
    let config = match resolve_service(&annotations, global) {
        Ok(diagnosed) => {
            warnings.extend(diagnosed.warnings.iter().map(ToString::to_string));
            Some(diagnosed.value)
        }
        Err(invalid) => {
            errors.extend(invalid.errors.iter().map(ToString::to_string));
            None
        }
    };

    let Some(pod) = at_mut(deployment, &["spec", "template", "spec"]).filter(|p| p.is_mapping()) else {
        errors.push("has no spec.template.spec; nothing to inject into".to_owned());
        return Err(errors);
    };
    let containers = pod.get("containers").and_then(Value::as_sequence).cloned().unwrap_or_default();
    let Some(user_index) = containers.iter().position(|c| str_at(c, &["name"]) != Some(SIDECAR)) else {
        errors
            .push("has no container besides the queue-proxy; the sidecar needs a user container".to_owned());
        return Err(errors);
    };
    let sidecar_index = containers.iter().position(|c| str_at(c, &["name"]) == Some(SIDECAR));
    let init_containers = pod.get("initContainers").and_then(Value::as_sequence).cloned().unwrap_or_default();

    // Every port another container of the pod listens on must be free for the queue-proxy: they share the
    // pod's network namespace.
    for container in
        containers.iter().chain(&init_containers).filter(|c| str_at(c, &["name"]) != Some(SIDECAR))
    {
        let cname = str_at(container, &["name"]).unwrap_or("(unnamed)");
        for port in container_ports(container) {
            if RESERVED_POD_PORTS.contains(&port.number) {
                errors.push(format!(
                    "container {cname:?} uses port {}, which the queue-proxy takes (ebb reserves {}); move the \
                     container to another port",
                    port.number,
                    RESERVED_POD_PORTS.map(|p| p.to_string()).join(", ")
                ));
            }
        }
    }
    let user = &containers[user_index];
    let user_name = str_at(user, &["name"]).unwrap_or("(unnamed)").to_owned();
    let user_ports = container_ports(user);
    let user_port = user_ports.first().map_or(DEFAULT_USER_PORT, |p| p.number);
    let existing_sidecar = sidecar_index.map(|i| &containers[i]);

    // The readiness probe: moved to the queue-proxy when it can probe the same thing.
    let readiness = match user.get("readinessProbe") {
        None => Readiness::Absent,
        Some(probe) => movable_readiness(probe, &user_ports, user_port),
    };
    let (probe_path, probe_timeout) = match &readiness {
        Readiness::Movable { path, timeout } => (path.clone(), timeout.clone()),
        // Already moved by an earlier injection: keep what the sidecar probes.
        Readiness::Absent => (
            existing_sidecar.and_then(|s| literal_env(s, "EBB_PROBE_PATH")),
            existing_sidecar.and_then(|s| literal_env(s, "EBB_PROBE_TIMEOUT")),
        ),
        Readiness::Kept(why) => {
            warnings.push(format!(
                "the readinessProbe of container {user_name:?} stays on it ({why}); the queue-proxy probes a TCP \
                 connect to port {user_port}, and the pod is Ready when both pass"
            ));
            (None, None)
        }
    };
    if let Some(path) = &probe_path
        && !path.starts_with('/')
    {
        errors.push(format!(
            "the readinessProbe path {path:?} of container {user_name:?} must be an absolute path"
        ));
    }
    let user_pre_stop = at(user, &["lifecycle", "preStop"]);
    let user_has_pre_stop = user_pre_stop.is_some();
    if user_pre_stop.is_some_and(|hook| *hook != drain_hook()) {
        warnings.push(format!(
            "container {user_name:?} has its own preStop hook, which is kept: it should wait for GET \
             :{QUEUE_PROXY_ADMIN_PORT}{WAIT_FOR_DRAIN_PATH}, or the container may stop while the queue-proxy still \
             sends it requests"
        ));
    }
    let Some(config) = config else { return Err(errors) };
    if !errors.is_empty() {
        return Err(errors);
    }

    // The sidecar's drain: from SIGTERM, which it gets at once (it has no preStop hook), it serves what is in
    // flight and still arriving, and ends once nothing arrived for the quiet period, or at the drain deadline
    // (default timeout + quiet period) at the latest. The user container's preStop hook blocks its SIGTERM until
    // then, and the kubelet counts hook time against terminationGracePeriodSeconds, so the grace period must
    // cover the whole drain:
    //   grace >= drain deadline + margin = timeout + quiet period + 5 s (hook round trip, process exit),
    // rounded up to whole seconds. A longer grace period already on the Deployment is kept.
    let quiet = existing_sidecar
        .and_then(|s| literal_env(s, sidecar::env::DRAIN_QUIET_PERIOD))
        .and_then(|t| parse_duration(&t))
        .unwrap_or(DEFAULT_DRAIN_QUIET_PERIOD);
    let deadline = existing_sidecar
        .and_then(|s| literal_env(s, sidecar::env::DRAIN_DEADLINE))
        .and_then(|t| parse_duration(&t))
        .unwrap_or(config.data_plane.timeout + quiet);
    let grace = (deadline + GRACE_MARGIN).as_secs_f64().ceil() as u64;

    let mut env = vec![
        env_value(sidecar::env::UPSTREAM, &format!("127.0.0.1:{user_port}")),
        env_field(sidecar::env::SERVICE_NAMESPACE, "metadata.namespace"),
        env_value(sidecar::env::SERVICE_NAME, &name),
        env_field(sidecar::env::POD_NAME, "metadata.name"),
        env_field(sidecar::env::POD_NAMESPACE, "metadata.namespace"),
        env_field(sidecar::env::POD_IP, "status.podIP"),
    ];
    env.extend(data_plane_settings(&config.data_plane).iter().map(|s| env_value(s.env, &s.value)));
    if let Some(path) = &probe_path {
        env.push(env_value(sidecar::env::PROBE_PATH, path));
    }
    if let Some(timeout) = &probe_timeout {
        env.push(env_value(sidecar::env::PROBE_TIMEOUT, timeout));
    }
    // The user's own variables on the sidecar (RUST_LOG, EBB_DRAIN_QUIET_PERIOD, ...) are kept, after ours.
    let own = |e: &&Value| str_at(e, &["name"]).is_some_and(|n| MANAGED_ENV.contains(&n));
    env.extend(
        existing_sidecar
            .and_then(|s| s.get("env"))
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter(|e| !own(e))
            .cloned(),
    );

    let mut sidecar = existing_sidecar.and_then(|s| s.as_mapping().cloned()).unwrap_or_default();
    set(&mut sidecar, "name", SIDECAR.into());
    set(&mut sidecar, "image", image.into());
    set(&mut sidecar, "command", Value::Sequence(vec![SIDECAR.into()]));
    let ports = [
        (QUEUE_PROXY_DATA_PORT, "queue-data"),
        (QUEUE_PROXY_ADMIN_PORT, "queue-admin"),
        (QUEUE_PROXY_STATS_PORT, "queue-stats"),
        (QUEUE_PROXY_METRICS_PORT, "queue-metrics"),
    ]
    .map(|(port, name)| map([("name", name.into()), ("containerPort", port.into())]));
    set(&mut sidecar, "ports", Value::Sequence(ports.to_vec()));
    set(&mut sidecar, "env", Value::Sequence(env));
    let header = map([("name", title_case(HEADER_PROBE).into()), ("value", PROBE_QUEUE.into())]);
    let http_get = map([
        ("path", "/".into()),
        ("port", QUEUE_PROXY_ADMIN_PORT.into()),
        ("httpHeaders", Value::Sequence(vec![header])),
    ]);
    set(
        &mut sidecar,
        "readinessProbe",
        map([
            ("httpGet", http_get),
            ("periodSeconds", 1.into()),
            ("timeoutSeconds", 1.into()),
            ("failureThreshold", 3.into()),
        ]),
    );
    // No preStop hook: SIGTERM starts the drain. (A hook that asked the admin port to drain would let anything
    // on the pod network drain the pod; one injected by an earlier ebb is removed.)
    if let Some(Value::Mapping(lifecycle)) = sidecar.get_mut("lifecycle") {
        if lifecycle.get("preStop") == Some(&drain_hook()) {
            lifecycle.remove("preStop");
        }
        if lifecycle.is_empty() {
            sidecar.remove("lifecycle");
        }
    }
    // Defaults the user may tune: left alone when present.
    if !sidecar.contains_key("resources") {
        let requests = map([("cpu", "25m".into()), ("memory", "32Mi".into())]);
        set(&mut sidecar, "resources", map([("requests", requests)]));
    }
    if !sidecar.contains_key("securityContext") {
        let drop = map([("drop", Value::Sequence(vec!["ALL".into()]))]);
        set(
            &mut sidecar,
            "securityContext",
            map([
                ("runAsNonRoot", true.into()),
                // The distroless `nonroot` user; numeric, so the kubelet can check it is not root.
                ("runAsUser", 65532.into()),
                ("readOnlyRootFilesystem", true.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("capabilities", drop),
            ]),
        );
    }

    // Write back: the user container loses its readinessProbe (when moved) and gets the drain hook.
    let mut containers = containers;
    if let Some(user) = containers[user_index].as_mapping_mut() {
        if matches!(readiness, Readiness::Movable { .. }) {
            user.remove("readinessProbe");
        }
        if !user_has_pre_stop {
            let lifecycle = user.entry("lifecycle".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
            if !lifecycle.is_mapping() {
                *lifecycle = Value::Mapping(Mapping::new());
            }
            if let Some(lifecycle) = lifecycle.as_mapping_mut() {
                lifecycle.insert("preStop".into(), drain_hook());
            }
        }
    }
    match sidecar_index {
        Some(i) => containers[i] = Value::Mapping(sidecar),
        None => containers.push(Value::Mapping(sidecar)),
    }
    let Some(pod) = pod.as_mapping_mut() else {
        return Err(vec!["spec.template.spec is not a mapping".into()]);
    };
    pod.insert("containers".into(), Value::Sequence(containers));
    let current_grace = pod.get("terminationGracePeriodSeconds").and_then(Value::as_u64);
    let wanted = grace.max(current_grace.unwrap_or(KUBERNETES_DEFAULT_GRACE_SECS));
    if current_grace != Some(wanted) {
        pod.insert("terminationGracePeriodSeconds".into(), wanted.into());
    }

    // The activator and autoscaler find the pods by the label. Added when missing; another value is only
    // reported, since the Deployment's selector may rely on it.
    let labels = ensure_mapping(deployment, &["spec", "template", "metadata", "labels"]);
    match labels.get(LABEL_SERVICE) {
        None => drop(labels.insert(LABEL_SERVICE.into(), name.clone().into())),
        Some(value) if value.as_str() == Some(name.as_str()) => {}
        Some(value) => warnings.push(format!(
            "the pod template's label {LABEL_SERVICE} is {value:?} but must be {name:?}: the activator and \
             autoscaler find the pods by it"
        )),
    }
    Ok(warnings)
}

/// What happens to the user container's readinessProbe.
enum Readiness {
    /// None there (or moved already).
    Absent,
    /// The queue-proxy can probe the same thing: an HTTP path (`None` for a TCP probe), and the timeout.
    Movable { path: Option<String>, timeout: Option<String> },
    /// The queue-proxy cannot probe it (why); the kubelet keeps running it on the user container.
    Kept(String),
}

fn movable_readiness(probe: &Value, ports: &[Port], user_port: u16) -> Readiness {
    let timeout = probe.get("timeoutSeconds").and_then(Value::as_u64).map(|s| format!("{s}s"));
    let on_user_port = |action: &Value| match action.get("port") {
        Some(Value::Number(n)) => n.as_u64() == Some(u64::from(user_port)),
        Some(Value::String(name)) => {
            ports.iter().any(|p| p.name.as_deref() == Some(name) && p.number == user_port)
        }
        _ => false,
    };
    if let Some(http) = probe.get("httpGet") {
        if !on_user_port(http) {
            return Readiness::Kept(format!("it probes another port than the served one, {user_port}"));
        }
        if str_at(http, &["scheme"]).is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
            return Readiness::Kept("the queue-proxy probes plain HTTP only".into());
        }
        if http.get("host").is_some() {
            return Readiness::Kept("it sets a host".into());
        }
        if http.get("httpHeaders").and_then(Value::as_sequence).is_some_and(|h| !h.is_empty()) {
            return Readiness::Kept("the queue-proxy's probe sends no custom headers".into());
        }
        let path = str_at(http, &["path"]).filter(|p| !p.is_empty()).unwrap_or("/").to_owned();
        return Readiness::Movable { path: Some(path), timeout };
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        if !on_user_port(tcp) {
            return Readiness::Kept(format!("it probes another port than the served one, {user_port}"));
        }
        return Readiness::Movable { path: None, timeout };
    }
    Readiness::Kept("the queue-proxy probes HTTP paths and TCP connects only".into())
}

/// A container port.
struct Port {
    number: u16,
    name: Option<String>,
}

/// The TCP `containerPort`s of a container.
fn container_ports(container: &Value) -> Vec<Port> {
    let ports = container.get("ports").and_then(Value::as_sequence).into_iter().flatten();
    ports
        .filter(|p| str_at(p, &["protocol"]).is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| {
            let number = p.get("containerPort")?.as_u64().and_then(|n| u16::try_from(n).ok())?;
            Some(Port { number, name: str_at(p, &["name"]).map(str::to_owned) })
        })
        .collect()
}

/// The preStop hook that waits until the queue-proxy has drained.
fn drain_hook() -> Value {
    let http_get = map([("path", WAIT_FOR_DRAIN_PATH.into()), ("port", QUEUE_PROXY_ADMIN_PORT.into())]);
    map([("httpGet", http_get)])
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

fn env_value(name: &str, value: &str) -> Value {
    map([("name", name.into()), ("value", value.into())])
}

fn env_field(name: &str, path: &str) -> Value {
    let field_ref = map([("fieldPath", path.into())]);
    map([("name", name.into()), ("valueFrom", map([("fieldRef", field_ref)]))])
}

/// A literal env value of a container (the last of duplicates wins, as in Kubernetes).
fn literal_env(container: &Value, name: &str) -> Option<String> {
    let env = container.get("env")?.as_sequence()?;
    let entry = env.iter().rfind(|e| str_at(e, &["name"]) == Some(name))?;
    str_at(entry, &["value"]).filter(|v| !v.is_empty()).map(str::to_owned)
}

fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
}

fn set(mapping: &mut Mapping, key: &str, value: Value) {
    mapping.insert(key.into(), value);
}

fn at_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(key))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// The mapping at `path`, created (replacing a non-mapping) where missing.
fn ensure_mapping<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Mapping {
    let mut current = value;
    for key in path {
        if !current.is_mapping() {
            *current = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(mapping) = current else { unreachable!("made a mapping above") };
        current = mapping.entry((*key).into()).or_insert(Value::Null);
    }
    if !current.is_mapping() {
        *current = Value::Mapping(Mapping::new());
    }
    match current {
        Value::Mapping(mapping) => mapping,
        _ => unreachable!("made a mapping above"),
    }
}

/// `Kind NAMESPACE/NAME`, or `Kind NAME` when the object has no namespace.
fn describe(object: &Value) -> String {
    let kind = str_at(object, &["kind"]).unwrap_or("object");
    let name = str_at(object, &["metadata", "name"]).unwrap_or("(unnamed)");
    match str_at(object, &["metadata", "namespace"]) {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = r#"# the model
apiVersion: apps/v1
kind: Deployment
metadata:
  name: chat
  labels: {ebb.dev/service: chat}
  annotations:
    ebb.dev/container-concurrency: "4"
    ebb.dev/timeout: "1m"
spec:
  template:
    spec:
      containers:
        - name: model
          image: example.com/model:1
          ports: [{name: http, containerPort: 8000}]
          readinessProbe: {httpGet: {path: /health, port: http}, timeoutSeconds: 2}
          livenessProbe: {httpGet: {path: /live, port: 8000}}
"#;

    fn one(text: &str) -> Value {
        let out = inject(text, IMAGE).unwrap();
        serde_yaml::from_str(&out.yaml).unwrap()
    }

    fn env_of(container: &Value) -> Vec<(String, String)> {
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| {
                let value = str_at(e, &["value"]).map_or_else(
                    || format!("from {}", str_at(e, &["valueFrom", "fieldRef", "fieldPath"]).unwrap()),
                    str::to_owned,
                );
                (str_at(e, &["name"]).unwrap().to_owned(), value)
            })
            .collect()
    }

    #[test]
    fn the_sidecar_gets_the_resolved_settings() {
        let d = one(DEPLOYMENT);
        let pod = &d["spec"]["template"]["spec"];
        let containers = pod["containers"].as_sequence().unwrap();
        assert_eq!(containers.len(), 2);
        let env = env_of(&containers[1]);
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("EBB_UPSTREAM"), Some("127.0.0.1:8000"));
        assert_eq!(get("EBB_CONTAINER_CONCURRENCY"), Some("4"));
        assert_eq!(get("EBB_QUEUE_DEPTH"), Some("40"));
        assert_eq!(get("EBB_TIMEOUT"), Some("1m"));
        assert_eq!(get("EBB_RESPONSE_START_TIMEOUT"), Some("1m"));
        assert_eq!(get("EBB_IDLE_TIMEOUT"), Some("0s"));
        assert_eq!(get("EBB_PROTOCOL"), None);
        assert_eq!(get("EBB_PROBE_PATH"), Some("/health"));
        assert_eq!(get("EBB_PROBE_TIMEOUT"), Some("2s"));
        assert_eq!(get("EBB_SERVICE_NAME"), Some("chat"));
        assert_eq!(get("EBB_SERVICE_NAMESPACE"), Some("from metadata.namespace"));
        // 60 s timeout + 30 s quiet period + 5 s margin.
        assert_eq!(pod["terminationGracePeriodSeconds"].as_u64(), Some(95));
        assert_eq!(d["spec"]["template"]["metadata"]["labels"][LABEL_SERVICE], "chat");
        let model = &containers[0];
        assert!(model.get("readinessProbe").is_none());
        assert!(model.get("livenessProbe").is_some());
        assert_eq!(model["lifecycle"]["preStop"], drain_hook());
        assert!(containers[1].get("lifecycle").is_none(), "the queue-proxy has no preStop hook");
    }

    #[test]
    fn injecting_twice_is_injecting_once() {
        let once = inject(DEPLOYMENT, IMAGE).unwrap().yaml;
        let twice = inject(&once, IMAGE).unwrap().yaml;
        assert_eq!(once, twice);
        // A changed annotation updates the sidecar in place; the moved probe path survives.
        let changed = once.replace("ebb.dev/timeout: 1m", "ebb.dev/timeout: 10m");
        assert_ne!(changed, once);
        let d: Value = serde_yaml::from_str(&inject(&changed, IMAGE).unwrap().yaml).unwrap();
        let containers = d["spec"]["template"]["spec"]["containers"].as_sequence().unwrap();
        assert_eq!(containers.len(), 2);
        let env = env_of(&containers[1]);
        assert!(env.contains(&("EBB_TIMEOUT".into(), "10m".into())), "{env:?}");
        assert!(env.contains(&("EBB_PROBE_PATH".into(), "/health".into())), "{env:?}");
        assert_eq!(d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64(), Some(635));
    }

    #[test]
    fn untouched_documents_keep_their_text() {
        let other = "# a comment kept\nkind: ConfigMap\nmetadata: {name: x}   # inline\ndata: {a: \"1\"}\n";
        let text = format!("---\n{other}---\n{DEPLOYMENT}---\n{other}");
        let out = inject(&text, IMAGE).unwrap().yaml;
        let parts: Vec<&str> = out.split("---\n").collect();
        assert_eq!(parts.len(), 3, "{out}");
        assert_eq!(parts[0], other);
        assert_eq!(parts[2], other);
        assert!(parts[1].contains("queue-proxy"));
    }

    #[test]
    fn readiness_the_queue_proxy_cannot_probe_stays() {
        let text = DEPLOYMENT.replace(
            "{httpGet: {path: /health, port: http}, timeoutSeconds: 2}",
            "{exec: {command: [ready]}}",
        );
        let out = inject(&text, IMAGE).unwrap();
        assert!(out.warnings[0].contains("stays on it"), "{:?}", out.warnings);
        let d: Value = serde_yaml::from_str(&out.yaml).unwrap();
        assert!(d["spec"]["template"]["spec"]["containers"][0].get("readinessProbe").is_some());
        let text = DEPLOYMENT.replace("port: http}", "port: 9000}");
        assert!(inject(&text, IMAGE).unwrap().warnings[0].contains("another port"));
    }

    #[test]
    fn reserved_ports_and_bad_annotations_are_errors() {
        let text = DEPLOYMENT.replace("containerPort: 8000", "containerPort: 9090");
        let errors = inject(&text, IMAGE).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, 1);
        assert_eq!(errors[0].object.as_deref(), Some("Deployment chat"));
        assert!(errors[0].message.contains("port 9090"), "{}", errors[0]);
        let text = DEPLOYMENT.replace("\"1m\"", "\"forever\"").replace("\"4\"", "4");
        let errors = inject(&text, IMAGE).unwrap_err();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("ebb.dev/timeout: \"forever\"")), "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("must be strings")), "{messages:?}");
    }

    #[test]
    fn default_port_and_lists() {
        let text = "kind: List\nitems:\n- kind: Deployment\n  metadata: {name: a, labels: {ebb.dev/service: a}}\n  \
                    spec: {template: {spec: {containers: [{name: app, image: x}]}}}\n";
        let d = one(text);
        let env = env_of(&d["items"][0]["spec"]["template"]["spec"]["containers"][1]);
        assert!(env.contains(&("EBB_UPSTREAM".into(), "127.0.0.1:8080".into())), "{env:?}");
    }

    #[test]
    fn streams_that_cannot_be_cut_are_rewritten_whole() {
        // A directive makes the text before the first `---` unparseable alone: every document is re-serialized,
        // with the same values.
        let text = format!("%YAML 1.2\n---\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n{DEPLOYMENT}");
        let out = inject(&text, IMAGE).unwrap().yaml;
        let values: Vec<Value> =
            serde_yaml::Deserializer::from_str(&out).map(|d| Value::deserialize(d).unwrap()).collect();
        assert_eq!(values.len(), 2, "{out}");
        assert_eq!(values[0], serde_yaml::from_str::<Value>("kind: ConfigMap\nmetadata: {name: x}").unwrap());
        assert_eq!(values[1]["spec"]["template"]["spec"]["containers"][1]["name"], SIDECAR);
        assert_eq!(inject(&out, IMAGE).unwrap().yaml, out, "and then it is idempotent");
    }

    #[test]
    fn a_template_label_of_another_value_is_reported_not_changed() {
        let text = DEPLOYMENT.replace(
            "spec:\n  template:\n",
            "spec:\n  template:\n    metadata: {labels: {ebb.dev/service: other}}\n",
        );
        let out = inject(&text, IMAGE).unwrap();
        assert!(out.warnings.iter().any(|w| w.contains("\"other\"")), "{:?}", out.warnings);
        let d: Value = serde_yaml::from_str(&out.yaml).unwrap();
        assert_eq!(d["spec"]["template"]["metadata"]["labels"][LABEL_SERVICE], "other");
    }

    #[test]
    fn header_spelling() {
        assert_eq!(title_case("ebb-probe"), "Ebb-Probe");
    }
}
