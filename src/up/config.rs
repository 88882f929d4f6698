//! `ebb.yaml`: the services `ebb up` runs, and optional `config-autoscaler` keys. Every problem is reported
//! with the file, line and field, and `ebb up` exits with code 2.
//!
//! ```yaml
//! config:                        # optional: config-autoscaler keys over ebb up's local defaults
//!   scale-to-zero-grace-period: 10s
//! services:
//!   - name: demo                 # a DNS label; requests with `Host: demo` go to it
//!     command: ebb demo-model    # run with `sh -c`, or a list for an argv; gets HOST and PORT
//!     port: 8080                 # optional, the port the command listens on (default 8080)
//!     annotations:               # as on a Deployment
//!       ebb.dev/container-concurrency: 4
//!     hosts: [demo.localhost]    # optional extra host names
//!     env: {LOG_LEVEL: debug}    # optional extra environment
//!   - name: chat                 # a service of roles (prefill and decode): `roles:` instead of `command:`
//!     roles:
//!       - name: prefill          # a DNS label; the pod's EBB_ROLE
//!         command: $EBB demo-model --role prefill
//!         count: 2               # pods per instance (default 1)
//!       - name: decode
//!         command: $EBB demo-model --role decode
//!         entry: true            # exactly one role: its pod takes the traffic (1 per instance)
//! ```
//!
//! A service of roles scales in instances: each instance runs `count` pods of every role, and only the entry's
//! pod (with the queue-proxy) receives requests and reports load (`super::pods`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use ebb_config::names::EBB_PREFIX;
use ebb_config::{GlobalConfig, ServiceConfig, resolve_service};
use serde::Deserialize;

/// The port a service's command listens on when `port` is not given.
pub const DEFAULT_PORT: u16 = 8080;

/// The demo's port: not the gateway's default (8080), so `--bind-address 0.0.0.0` does not take it.
pub const DEMO_PORT: u16 = 8000;

/// `config-autoscaler` keys that differ in local mode: services start at zero, so the first request shows a
/// cold start. `config:` in `ebb.yaml` overrides them.
pub const LOCAL_GLOBAL_DEFAULTS: [(&str, &str); 2] =
    [("allow-zero-initial-scale", "true"), ("initial-scale", "0")];

/// Pods per CPU core a local service may have when neither its `max-scale` annotation nor `config:` bounds
/// it: a burst at zero asks for a pod per few requests, and on a laptop each pod is a queue-proxy and a model
/// process (500 requests at zero once started 179 pods on 2 cores).
pub const LOCAL_PODS_PER_CORE: u32 = 4;

/// The most pods a local service may have unless it says otherwise: [`LOCAL_PODS_PER_CORE`] per core.
pub fn local_max_scale() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    LOCAL_PODS_PER_CORE.saturating_mul(cores)
}

/// Bounds an unbounded service by the machine ([`local_max_scale`] pods, so `pods_per_instance` times fewer
/// instances, at least 1), unless its file asked for no bound: a `max-scale` annotation (or its alias) or a
/// `max-scale` in `config:`. The bound never goes below what the service itself asks for at least (min-scale,
/// activation-scale).
fn bound_locally(
    config: &mut ServiceConfig,
    annotations: &BTreeMap<String, String>,
    global: &BTreeMap<String, String>,
    pods_per_instance: u32,
) {
    let asked = annotations
        .keys()
        .any(|k| k == "autoscaling.knative.dev/max-scale" || k == "autoscaling.knative.dev/maxScale")
        || global.contains_key("max-scale");
    let scaling = &mut config.scaling;
    if !asked && scaling.max_scale == 0 {
        let instances = (local_max_scale() / pods_per_instance.max(1)).max(1);
        scaling.max_scale = instances.max(scaling.min_scale).max(scaling.activation_scale);
    }
}

/// How a service's process is started.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Command {
    /// A shell command line, run with `sh -c`.
    Shell(String),
    /// A program and its arguments.
    Argv(Vec<String>),
}

/// A scalar YAML value, so that `container-concurrency: 4` need not be quoted.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => b.fmt(f),
            Self::Int(i) => i.fmt(f),
            Self::Float(x) => x.fmt(f),
            Self::Text(t) => t.fmt(f),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileYaml {
    services: Vec<ServiceYaml>,
    #[serde(default)]
    config: BTreeMap<String, Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceYaml {
    name: String,
    #[serde(default)]
    command: Option<Command>,
    #[serde(default)]
    roles: Option<Vec<RoleYaml>>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    annotations: BTreeMap<String, Scalar>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleYaml {
    name: String,
    command: Command,
    // Signed, so that `count: 0` and `count: -1` get our message rather than serde's.
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    entry: bool,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    env: BTreeMap<String, Scalar>,
}

/// The most pods of one role an instance may have: a typo such as `count: 20000` would otherwise start that
/// many processes.
pub const MAX_ROLE_COUNT: u32 = 1000;

/// One role of a service: pods of one kind, `count` of them in every instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Its name (a DNS label): the pods' `EBB_ROLE` and part of their names.
    pub name: String,
    /// How to start one of its pods.
    pub command: Command,
    /// Pods per instance (1 for the entry).
    pub count: u32,
    /// Whether its pods take the traffic (with a queue-proxy) and report the load.
    pub entry: bool,
    /// The port its command listens on.
    pub port: u16,
    /// Extra environment, over the service's.
    pub env: BTreeMap<String, String>,
}

/// One service, resolved and validated.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its name (namespace `default`).
    pub name: String,
    /// Its roles, the entry among them. A plain service (a `command:`) has one: the entry, named after the
    /// service, one pod per instance, so that an instance is a pod.
    pub roles: Vec<Role>,
    /// Whether the file gave `roles:`: then its pods are told their instance and peers (`EBB_INSTANCE`,
    /// `EBB_ROLE`, `EBB_PEERS_*`) and named `SERVICE-INSTANCE-ROLE-N`; a plain service's are `SERVICE-N`.
    pub has_roles: bool,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Its resolved configuration; its replicas count instances.
    pub config: ServiceConfig,
}

impl Service {
    /// The role whose pods take the traffic.
    pub fn entry(&self) -> &Role {
        self.roles.iter().find(|r| r.entry).expect("a validated service has exactly one entry role")
    }
}

impl Role {
    /// A plain service's one role: the entry, named after the service, one pod per instance.
    fn plain_entry(service: &str, command: Command, port: u16) -> Self {
        Self { name: service.to_owned(), command, count: 1, entry: true, port, env: BTreeMap::new() }
    }
}

/// The whole file.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// The services, in file order.
    pub services: Vec<Service>,
}

/// Why the file cannot be used: one line per problem, each naming the file, line and field.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

/// The global configuration: local defaults, then `overrides`.
pub fn global(overrides: &BTreeMap<String, String>) -> Result<GlobalConfig, ebb_config::Invalid> {
    let mut data: BTreeMap<String, String> =
        LOCAL_GLOBAL_DEFAULTS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    data.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
    GlobalConfig::from_data(&data).map(|d| d.value)
}

/// The service `ebb up` runs without a file: `ebb demo-model` as `demo`, tuned so the walkthrough is
/// watchable: concurrency 4 per pod, the shortest stable window (6 s) and a 10 s grace period, so it scales
/// up within seconds of a load and back to zero about 20 s after it.
pub fn default_demo(exe: &Path) -> UpConfig {
    let overrides = BTreeMap::from([("scale-to-zero-grace-period".to_owned(), "10s".to_owned())]);
    let global = global(&overrides).expect("the demo's global config is valid");
    let annotations = BTreeMap::from([
        ("ebb.dev/container-concurrency".to_owned(), "4".to_owned()),
        ("autoscaling.knative.dev/window".to_owned(), "6s".to_owned()),
        ("ebb.dev/activation-timeout".to_owned(), "60s".to_owned()),
    ]);
    let mut config = resolve_service(&annotations, &global).expect("the demo's annotations are valid").value;
    bound_locally(&mut config, &annotations, &overrides, 1);
    let command = Command::Argv(vec![
        exe.display().to_string(),
        "demo-model".into(),
        "--startup-delay".into(),
        "500ms".into(),
    ]);
    let roles = vec![Role::plain_entry("demo", command, DEMO_PORT)];
    UpConfig {
        services: vec![Service {
            name: "demo".into(),
            roles,
            has_roles: false,
            env: BTreeMap::new(),
            config,
        }],
    }
}

/// Reads and validates `ebb.yaml`; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<UpConfig, ConfigError> {
    let yaml: FileYaml = crate::yaml::from_str(text).map_err(|err| {
        let at = err.at.map_or_else(String::new, |(line, column)| format!("line {line}, column {column}: "));
        let limits = if err.limit { "beyond ebb's limits: " } else { "" };
        ConfigError(vec![format!("{file}: {at}{limits}{}", err.message)])
    })?;
    let lines: Vec<&str> = text.lines().collect();
    let mut errors = Vec::new();

    let overrides: BTreeMap<String, String> =
        yaml.config.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    let global = match global(&overrides) {
        Ok(global) => global,
        Err(invalid) => {
            let start = find_line(&lines, 0, "config:").unwrap_or(0);
            for e in &invalid.errors {
                let line = find_line(&lines, start, &e.key).map_or(0, |l| l + 1);
                errors.push(format!("{file}: line {line}: config: {e}"));
            }
            GlobalConfig::default()
        }
    };

    if yaml.services.is_empty() {
        let line = lines.iter().position(|l| l.starts_with("services:")).map_or(1, |l| l + 1);
        errors.push(format!("{file}: line {line}: services: at least one service is needed"));
    }
    let mut services = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, s) in yaml.services.into_iter().enumerate() {
        // The n-th service of this name starts at the n-th `name:` line with exactly this value.
        let nth = names.iter().filter(|n| **n == s.name).count();
        let start = name_line(&lines, &s.name, nth).unwrap_or(0);
        let at = |key: &str| find_line(&lines, start, key).map_or(start + 1, |l| l + 1);
        let what = format!("services[{i}] ({})", s.name);
        if !ebb_config::value::is_dns_name(&s.name) || s.name.contains('.') || s.name.len() > 63 {
            errors.push(format!(
                "{file}: line {}: {what}: name: {:?} must be a lower-case DNS label (a-z, 0-9, '-')",
                at("name:"),
                s.name
            ));
        }
        if names.contains(&s.name) {
            errors.push(format!("{file}: line {}: {what}: name: {:?} is used twice", at("name:"), s.name));
        }
        names.push(s.name.clone());
        if s.port == Some(0) {
            errors.push(format!("{file}: line {}: {what}: port: must be between 1 and 65535", at("port:")));
        }
        let port = s.port.unwrap_or(DEFAULT_PORT);
        // The service's roles, and whether the file gave them; `None` after an error.
        let roles = match (s.command, s.roles) {
            (Some(command), None) => {
                if command_is_empty(&command) {
                    errors
                        .push(format!("{file}: line {}: {what}: command: must not be empty", at("command:")));
                    None
                } else {
                    Some((vec![Role::plain_entry(&s.name, command, port)], false))
                }
            }
            (None, Some(roles)) => {
                let at = RoleLines { lines: &lines, service_start: start, file, what: &what };
                roles_of(roles, port, &at, &mut errors).map(|roles| (roles, true))
            }
            (Some(_), Some(_)) => {
                errors.push(format!(
                    "{file}: line {}: {what}: roles: a service has either a command or roles, not both (give each \
                     role its command)",
                    at("roles:")
                ));
                None
            }
            (None, None) => {
                errors.push(format!(
                    "{file}: line {}: {what}: command: missing: a service needs a command, or roles",
                    start + 1
                ));
                None
            }
        };
        let mut annotations: BTreeMap<String, String> =
            s.annotations.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        if !s.hosts.is_empty() {
            let mut hosts: Vec<String> = annotations
                .get("ebb.dev/hosts")
                .map(|h| h.split(',').map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()).collect())
                .unwrap_or_default();
            hosts.extend(s.hosts.iter().cloned());
            annotations.insert(format!("{EBB_PREFIX}hosts"), hosts.join(","));
        }
        match resolve_service(&annotations, &global) {
            Ok(config) => {
                for w in &config.warnings {
                    tracing::warn!(service = %s.name, "{w}");
                }
                // Without roles there was an error above: the file is refused.
                let Some((roles, has_roles)) = roles else { continue };
                let mut config = config.value;
                let pods_per_instance = roles.iter().map(|r| r.count).sum();
                bound_locally(&mut config, &annotations, &overrides, pods_per_instance);
                let env = s.env.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
                services.push(Service { name: s.name, roles, has_roles, env, config });
            }
            Err(invalid) => {
                for e in &invalid.errors {
                    let field =
                        if e.key == "ebb.dev/hosts" && !s.hosts.is_empty() { "hosts:" } else { &e.key };
                    errors.push(format!("{file}: line {}: {what}: annotations: {e}", at(field)));
                }
            }
        }
    }
    if errors.is_empty() { Ok(UpConfig { services }) } else { Err(ConfigError(errors)) }
}

fn command_is_empty(command: &Command) -> bool {
    match command {
        Command::Shell(c) => c.trim().is_empty(),
        Command::Argv(v) => v.is_empty(),
    }
}

/// Where a service's roles are written, for errors naming their lines.
struct RoleLines<'a> {
    lines: &'a [&'a str],
    service_start: usize,
    file: &'a str,
    what: &'a str,
}

impl RoleLines<'_> {
    /// "FILE: line N: services[i] (NAME): roles[j] (ROLE): " for the first line that holds `key` at or after
    /// the `name:` of the `nth` role of this name (from 0).
    fn at(&self, j: usize, nth: usize, role: &str, key: &str) -> String {
        let roles = find_line(self.lines, self.service_start, "roles:").unwrap_or(self.service_start);
        let start = name_line(&self.lines[roles..], role, nth).map_or(roles, |l| l + roles);
        let line = find_line(self.lines, start, key).map_or(start + 1, |l| l + 1);
        format!("{}: line {line}: {}: roles[{j}] ({role}): ", self.file, self.what)
    }

    /// "FILE: line N: services[i] (NAME): roles: " at the `roles:` line.
    fn roles(&self) -> String {
        let line =
            find_line(self.lines, self.service_start, "roles:").map_or(self.service_start + 1, |l| l + 1);
        format!("{}: line {line}: {}: roles: ", self.file, self.what)
    }
}

/// Validates a service's roles: DNS-label names used once, a command each, a count from 1 to
/// [`MAX_ROLE_COUNT`], exactly one entry (`entry: true`) with a count of 1. `None` when any is wrong (each
/// problem is in `errors`).
fn roles_of(
    roles: Vec<RoleYaml>,
    port: u16,
    at: &RoleLines<'_>,
    errors: &mut Vec<String>,
) -> Option<Vec<Role>> {
    let before = errors.len();
    if roles.is_empty() {
        errors.push(format!("{}at least one role is needed", at.roles()));
        return None;
    }
    let mut names: Vec<&str> = Vec::new();
    for (j, r) in roles.iter().enumerate() {
        let name = r.name.as_str();
        let nth = names.iter().filter(|n| **n == name).count();
        if !ebb_config::value::is_dns_name(name) || name.contains('.') || name.len() > 63 {
            errors.push(format!(
                "{}name: {name:?} must be a lower-case DNS label (a-z, 0-9, '-')",
                at.at(j, nth, name, "name:")
            ));
        }
        if names.contains(&name) {
            errors.push(format!("{}name: {name:?} is used twice", at.at(j, nth, name, "name:")));
        }
        names.push(name);
        if command_is_empty(&r.command) {
            errors.push(format!("{}command: must not be empty", at.at(j, nth, name, "command:")));
        }
        match r.count {
            Some(count) if count < 1 || count > i64::from(MAX_ROLE_COUNT) => errors.push(format!(
                "{}count: {count}: must be a whole number from 1 to {MAX_ROLE_COUNT} (pods of this role per \
                 instance)",
                at.at(j, nth, name, "count:")
            )),
            Some(count) if r.entry && count != 1 => errors.push(format!(
                "{}count: {count}: the entry role runs 1 pod per instance (its queue-proxy takes the instance's \
                 traffic); give the other roles more pods",
                at.at(j, nth, name, "count:")
            )),
            _ => {}
        }
        if r.port == Some(0) {
            errors.push(format!("{}port: must be between 1 and 65535", at.at(j, nth, name, "port:")));
        }
    }
    let entries: Vec<&RoleYaml> = roles.iter().filter(|r| r.entry).collect();
    match entries.as_slice() {
        [_] => {}
        [] => errors.push(format!(
            "{}no entry: mark exactly one role `entry: true` (the one that takes the traffic, e.g. decode)",
            at.roles()
        )),
        _ => {
            let names: Vec<String> = entries.iter().map(|r| format!("{:?}", r.name)).collect();
            errors.push(format!(
                "{}{} entries ({}): exactly one role may be `entry: true`",
                at.roles(),
                entries.len(),
                names.join(", ")
            ))
        }
    }
    if errors.len() > before {
        return None;
    }
    let roles = roles
        .into_iter()
        .map(|r| Role {
            count: r.count.map_or(1, |c| c as u32),
            port: r.port.unwrap_or(port),
            env: r.env.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            name: r.name,
            command: r.command,
            entry: r.entry,
        })
        .collect();
    Some(roles)
}

/// The `nth` line (from 0) that gives `name:` exactly `name` (quoted or not, with or without a comment).
fn name_line(lines: &[&str], name: &str, nth: usize) -> Option<usize> {
    let is_it = |line: &str| {
        let key = line.trim_start().trim_start_matches('-').trim_start();
        let Some(value) = key.strip_prefix("name:") else { return false };
        let value = value.split(" #").next().unwrap_or(value).trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        unquoted == name
    };
    lines.iter().enumerate().filter(|(_, l)| is_it(l)).nth(nth).map(|(i, _)| i)
}

/// The first line at or after `start` containing `needle`.
fn find_line(lines: &[&str], start: usize, needle: &str) -> Option<usize> {
    lines.iter().enumerate().skip(start).find(|(_, l)| l.contains(needle)).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_resolves() {
        let text = "config:\n  scale-to-zero-grace-period: 1s\nservices:\n  - name: demo\n    command: sleep 1\n    \
                    annotations:\n      ebb.dev/container-concurrency: 4\n      autoscaling.knative.dev/window: 6s\n    \
                    hosts: [a.example]\n";
        let config = parse("ebb.yaml", text).unwrap();
        let s = &config.services[0];
        assert_eq!(s.entry().port, DEFAULT_PORT);
        assert_eq!(s.config.data_plane.container_concurrency, 4);
        assert_eq!(s.config.data_plane.hosts, vec!["a.example".to_owned()]);
        assert_eq!(s.config.scaling.scale_to_zero_grace_period, std::time::Duration::from_secs(1));
        assert_eq!(s.config.scaling.initial_scale, 0);
    }

    #[test]
    fn an_unbounded_service_is_bounded_by_the_machine_unless_it_asks_otherwise() {
        let one = |annotations: &str, config: &str| {
            let text = format!(
                "{config}services:\n  - name: demo\n    command: x\n    annotations:\n{annotations}      x.example/y: z\n"
            );
            parse("ebb.yaml", &text).unwrap().services.remove(0).config.scaling
        };
        assert_eq!(one("", "").max_scale, local_max_scale());
        assert_eq!(
            one("      autoscaling.knative.dev/max-scale: 0\n", "").max_scale,
            0,
            "unbounded on request"
        );
        assert_eq!(one("      autoscaling.knative.dev/maxScale: 3\n", "").max_scale, 3);
        assert_eq!(one("", "config:\n  max-scale: 0\n").max_scale, 0);
        let many = local_max_scale() + 5;
        assert_eq!(one(&format!("      autoscaling.knative.dev/min-scale: {many}\n"), "").max_scale, many);
        assert_eq!(default_demo(Path::new("ebb")).services[0].config.scaling.max_scale, local_max_scale());
    }

    #[test]
    fn a_service_is_found_by_its_whole_name() {
        let text = "services:\n  - name: demo2\n    command: x\n    port: 8000\n  - name: \"demo\"  # the second\n    \
                    command: x\n    port: 0\n";
        let err = parse("ebb.yaml", text).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].contains("line 7") && err.0[0].contains("(demo): port"), "{err}");

        // The second of two services with one name is the one named twice.
        let text = "services:\n  - name: a\n    command: x\n  - name: a\n    command: x\n";
        let err = parse("ebb.yaml", text).unwrap_err();
        assert!(err.0[0].contains("line 4") && err.0[0].contains("used twice"), "{err}");
    }

    #[test]
    fn no_service_is_an_error_with_its_line() {
        let err = parse("ebb.yaml", "config:\n  initial-scale: 0\nservices: []\n").unwrap_err();
        assert_eq!(err.0, ["ebb.yaml: line 3: services: at least one service is needed"], "{err}");
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let err = parse("ebb.yaml", "services:\n  - name: demo\n    comand: x\n").unwrap_err();
        assert!(err.0[0].contains("line 3") && err.0[0].contains("comand"), "{err}");
        let text = "services:\n  - name: demo\n    command: x\n    annotations:\n      \
                    autoscaling.knative.dev/window: 3s\n      ebb.dev/container-concurrency: lots\n";
        let err = parse("ebb.yaml", text).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(
            err.0.iter().any(|e| e.contains("line 5") && e.contains("autoscaling.knative.dev/window")),
            "{err}"
        );
        assert!(err.0.iter().any(|e| e.contains("line 6") && e.contains("container-concurrency")), "{err}");
    }

    const TWO_P_ONE_D: &str = "services:\n  - name: chat\n    port: 8000\n    roles:\n      - name: prefill\n        \
                               command: run prefill\n        count: 2\n      - name: decode\n        command: [run, \
                               decode]\n        entry: true\n        port: 9000\n";

    #[test]
    fn roles_resolve_with_their_counts_ports_and_one_entry() {
        let s = parse("ebb.yaml", TWO_P_ONE_D).unwrap().services.remove(0);
        assert!(s.has_roles);
        let roles: Vec<(&str, u32, bool, u16)> =
            s.roles.iter().map(|r| (r.name.as_str(), r.count, r.entry, r.port)).collect();
        assert_eq!(roles, [("prefill", 2, false, 8000), ("decode", 1, true, 9000)]);
        assert_eq!(s.entry().name, "decode");
        assert_eq!(s.roles.iter().map(|r| r.count).sum::<u32>(), 3);
        // Bounded by the machine in instances: a third of the pods.
        assert_eq!(s.config.scaling.max_scale, (local_max_scale() / 3).max(1));

        // A plain service is one entry role named after it, one pod per instance.
        let plain =
            parse("ebb.yaml", "services:\n  - name: demo\n    command: x\n").unwrap().services.remove(0);
        assert!(!plain.has_roles);
        assert_eq!(plain.roles.len(), 1);
        assert_eq!(
            (plain.entry().name.as_str(), plain.entry().count, plain.entry().port),
            ("demo", 1, DEFAULT_PORT)
        );
    }

    #[test]
    fn bad_roles_are_errors_naming_the_line_and_the_rule() {
        let one = |roles: &str| {
            let text = format!("services:\n  - name: chat\n    roles:\n{roles}");
            parse("ebb.yaml", &text).unwrap_err().0
        };
        let err =
            one("      - name: prefill\n        command: x\n      - name: decode\n        command: y\n");
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].starts_with("ebb.yaml: line 3: services[0] (chat): roles: no entry"), "{err:?}");

        let err = one(
            "      - name: prefill\n        command: x\n        entry: true\n      - name: decode\n        \
             command: y\n        entry: true\n",
        );
        assert!(err[0].contains("roles: 2 entries (\"prefill\", \"decode\")"), "{err:?}");

        let err = one(
            "      - name: prefill\n        command: x\n        count: 0\n      - name: decode\n        \
                       command: y\n        entry: true\n",
        );
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(
            err[0].starts_with(
                "ebb.yaml: line 6: services[0] (chat): roles[0] (prefill): count: 0: must be a whole \
                                    number from 1"
            ),
            "{err:?}"
        );

        let err = one("      - name: decode\n        command: x\n        entry: true\n        count: 2\n");
        assert!(
            err[0].contains("line 7") && err[0].contains("the entry role runs 1 pod per instance"),
            "{err:?}"
        );

        let err = one(
            "      - name: decode\n        command: x\n        entry: true\n      - name: decode\n        \
                       command: y\n",
        );
        assert!(
            err.iter()
                .any(|e| e.contains("line 7")
                    && e.contains("roles[1] (decode): name: \"decode\" is used twice")),
            "{err:?}"
        );

        let err = one("      - name: Pre_fill\n        command: x\n        entry: true\n");
        assert!(err[0].contains("line 4") && err[0].contains("must be a lower-case DNS label"), "{err:?}");

        let err = one("      - name: decode\n        command: ''\n        entry: true\n");
        assert!(err[0].contains("line 5") && err[0].contains("command: must not be empty"), "{err:?}");

        let err = parse("ebb.yaml", "services:\n  - name: chat\n    roles: []\n").unwrap_err().0;
        assert!(err[0].contains("line 3") && err[0].contains("at least one role"), "{err:?}");

        let err = parse(
            "ebb.yaml",
            "services:\n  - name: chat\n    command: x\n    roles:\n      - name: decode\n        \
                                     command: y\n        entry: true\n",
        )
        .unwrap_err()
        .0;
        assert!(
            err[0].contains("line 4") && err[0].contains("either a command or roles, not both"),
            "{err:?}"
        );

        let err = parse("ebb.yaml", "services:\n  - name: chat\n    port: 8000\n").unwrap_err().0;
        assert!(err[0].contains("line 2") && err[0].contains("needs a command, or roles"), "{err:?}");

        // Unknown keys in a role are the YAML reader's errors, with their line.
        let err = one("      - name: decode\n        command: x\n        entry: true\n        cuont: 2\n");
        assert!(err[0].contains("cuont"), "{err:?}");
    }
}
