//! The typed model of what ebb reads and edits in a pod template (a Deployment's `spec.template`) or a Pod (both
//! are `metadata` and a pod `spec`): the user container's ports, readiness probe and preStop hook, the
//! queue-proxy container, the pod's grace period and the service label. [`PodTemplate::read`] takes these parts
//! from the value; [`PodTemplate::write`] puts them back into that same value, so every field the model does not
//! name, unknown ones included, stays as it was written, where it was.

use ebb_config::names::LABEL_SERVICE;
use serde_json::{Map, Value};

use crate::drain::drain_hook;
use crate::value::{at, ensure_mapping, str_at};

/// The sidecar's container name.
pub const SIDECAR: &str = "queue-proxy";
/// The user container's port when it declares none: the queue-proxy's default upstream port.
pub const DEFAULT_USER_PORT: u16 = 8080;

/// A TCP container port.
pub struct Port {
    /// `containerPort`.
    pub number: u16,
    /// `name`, when it has one.
    pub name: Option<String>,
}

/// The TCP `containerPort`s of a container.
fn container_ports(container: &Value) -> Vec<Port> {
    let ports = container.get("ports").and_then(Value::as_array).into_iter().flatten();
    ports
        .filter(|p| str_at(p, &["protocol"]).is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| {
            let number = p.get("containerPort")?.as_u64().and_then(|n| u16::try_from(n).ok())?;
            Some(Port { number, name: str_at(p, &["name"]).map(str::to_owned) })
        })
        .collect()
}

/// A container's name and TCP ports.
pub struct ContainerPorts {
    /// Its name, `(unnamed)` without one.
    pub container: String,
    /// Its TCP ports.
    pub ports: Vec<Port>,
}

/// The port a probe action targets.
pub enum PortRef {
    /// A port number.
    Number(u64),
    /// The name of one of the container's ports.
    Name(String),
}

impl PortRef {
    /// The `port` of a probe action; `None` when it is missing or neither a number nor a name.
    fn read(action: &Value) -> Option<Self> {
        match action.get("port") {
            Some(Value::Number(n)) => n.as_u64().map(Self::Number),
            Some(Value::String(name)) => Some(Self::Name(name.clone())),
            _ => None,
        }
    }
}

/// An `httpGet` probe action.
pub struct HttpGet {
    /// `port`.
    pub port: Option<PortRef>,
    /// `scheme`, when it is a string.
    pub scheme: Option<String>,
    /// Whether it sets `host`.
    pub host: bool,
    /// Whether it sends headers of its own (a non-empty `httpHeaders`).
    pub headers: bool,
    /// `path`, when it is a string.
    pub path: Option<String>,
}

/// What a probe does.
pub enum ProbeAction {
    /// `httpGet`.
    HttpGet(HttpGet),
    /// `tcpSocket`, with its `port`.
    TcpSocket(Option<PortRef>),
    /// Anything else (`exec`, `grpc`, nothing).
    Other,
}

/// A probe of the user container.
pub struct Probe {
    /// What it does.
    pub action: ProbeAction,
    /// `timeoutSeconds`.
    pub timeout_seconds: Option<u64>,
}

impl Probe {
    fn read(probe: &Value) -> Self {
        let action = if let Some(http) = probe.get("httpGet") {
            ProbeAction::HttpGet(HttpGet {
                port: PortRef::read(http),
                scheme: str_at(http, &["scheme"]).map(str::to_owned),
                host: http.get("host").is_some(),
                headers: http.get("httpHeaders").and_then(Value::as_array).is_some_and(|h| !h.is_empty()),
                path: str_at(http, &["path"]).map(str::to_owned),
            })
        } else if let Some(tcp) = probe.get("tcpSocket") {
            ProbeAction::TcpSocket(PortRef::read(tcp))
        } else {
            ProbeAction::Other
        };
        Self { action, timeout_seconds: probe.get("timeoutSeconds").and_then(Value::as_u64) }
    }
}

/// The user container's `lifecycle.preStop` hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreStop {
    /// None.
    Absent,
    /// ebb's: it waits until the queue-proxy has drained ([`drain_hook`]).
    WaitForDrain,
    /// The user's own.
    Own,
}

/// The container the queue-proxy serves: the first one not named `queue-proxy`.
pub struct UserContainer {
    /// Its name, `(unnamed)` without one.
    pub name: String,
    /// Its TCP ports.
    pub ports: Vec<Port>,
    /// `readinessProbe`; set to `None`, [`PodTemplate::write`] removes it.
    pub readiness_probe: Option<Probe>,
    /// `lifecycle.preStop`; set to [`PreStop::WaitForDrain`], [`PodTemplate::write`] writes ebb's hook.
    pub pre_stop: PreStop,
}

impl UserContainer {
    fn read(container: &Value) -> Self {
        let pre_stop = match at(container, &["lifecycle", "preStop"]) {
            None => PreStop::Absent,
            Some(hook) if *hook == drain_hook() => PreStop::WaitForDrain,
            Some(_) => PreStop::Own,
        };
        Self {
            name: str_at(container, &["name"]).unwrap_or("(unnamed)").to_owned(),
            ports: container_ports(container),
            readiness_probe: container.get("readinessProbe").map(Probe::read),
            pre_stop,
        }
    }

    /// The port it serves: its first TCP port, or [`DEFAULT_USER_PORT`].
    pub fn port(&self) -> u16 {
        self.ports.first().map_or(DEFAULT_USER_PORT, |p| p.number)
    }

    fn write(&self, container: &mut Map<String, Value>) {
        // The fields after it move up, in their order.
        if self.readiness_probe.is_none() {
            container.shift_remove("readinessProbe");
        }
        if self.pre_stop == PreStop::WaitForDrain {
            let lifecycle = container.entry("lifecycle").or_insert_with(|| Value::Object(Map::new()));
            if !lifecycle.is_object() {
                *lifecycle = Value::Object(Map::new());
            }
            if let Some(lifecycle) = lifecycle.as_object_mut() {
                lifecycle.insert("preStop".to_owned(), drain_hook());
            }
        }
    }
}

/// The queue-proxy container: its fields as written (ebb sets some, the user may add others).
pub struct SidecarContainer {
    /// Every field of the container.
    pub fields: Map<String, Value>,
}

impl SidecarContainer {
    /// `env`, as written.
    pub fn env(&self) -> &[Value] {
        self.fields.get("env").and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    /// A literal env value (the last of duplicates wins, as in Kubernetes); `None` when unset or empty.
    pub fn literal_env(&self, name: &str) -> Option<&str> {
        let entry = self.env().iter().rfind(|e| str_at(e, &["name"]) == Some(name))?;
        str_at(entry, &["value"]).filter(|v| !v.is_empty())
    }
}

/// The parts of a pod template that `ebb inject` reads and edits.
pub struct PodTemplate {
    /// The template as read; [`Self::write`] puts the parts below back into it.
    raw: Value,
    /// `spec.containers` as read.
    containers: Vec<Value>,
    user_index: usize,
    sidecar_index: Option<usize>,
    /// The user container.
    pub user: UserContainer,
    /// The queue-proxy container: an earlier injection's when read; the one to write after editing.
    pub sidecar: Option<SidecarContainer>,
    /// Every container besides the queue-proxy, init containers included: they share the pod's network
    /// namespace, so each of their ports is taken for the queue-proxy.
    pub ports_in_use: Vec<ContainerPorts>,
    /// `spec.terminationGracePeriodSeconds`.
    pub grace_period: Option<u64>,
    /// `metadata.labels` `ebb.dev/service`, as written (it may not be a string).
    pub service_label: Option<Value>,
}

impl PodTemplate {
    /// Reads a pod template or a pod; `Err` says why there is nothing to inject into. `spec` names its `spec`
    /// in that message (`spec.template.spec` in a Deployment).
    pub fn read(template: &Value, spec: &str) -> Result<Self, String> {
        let Some(pod) = template.get("spec").filter(|p| p.is_object()) else {
            return Err(format!("has no {spec}; nothing to inject into"));
        };
        let containers = pod.get("containers").and_then(Value::as_array).cloned().unwrap_or_default();
        let is_sidecar = |c: &Value| str_at(c, &["name"]) == Some(SIDECAR);
        let Some(user_index) = containers.iter().position(|c| !is_sidecar(c)) else {
            return Err(
                "has no container besides the queue-proxy; the sidecar needs a user container".to_owned()
            );
        };
        let sidecar_index = containers.iter().position(is_sidecar);
        let init_containers = pod.get("initContainers").and_then(Value::as_array).into_iter().flatten();
        let ports_in_use = containers
            .iter()
            .chain(init_containers)
            .filter(|c| !is_sidecar(c))
            .map(|c| ContainerPorts {
                container: str_at(c, &["name"]).unwrap_or("(unnamed)").to_owned(),
                ports: container_ports(c),
            })
            .collect();
        Ok(Self {
            user: UserContainer::read(&containers[user_index]),
            sidecar: sidecar_index
                .map(|i| SidecarContainer { fields: containers[i].as_object().cloned().unwrap_or_default() }),
            ports_in_use,
            grace_period: pod.get("terminationGracePeriodSeconds").and_then(Value::as_u64),
            service_label: at(template, &["metadata", "labels", LABEL_SERVICE]).cloned(),
            raw: template.clone(),
            containers,
            user_index,
            sidecar_index,
        })
    }

    /// The template with the parts written back: fields the model does not name are as they were read.
    pub fn write(self) -> Value {
        let Self {
            mut raw,
            mut containers,
            user_index,
            sidecar_index,
            user,
            sidecar,
            grace_period,
            service_label,
            ..
        } = self;
        if let Some(container) = containers[user_index].as_object_mut() {
            user.write(container);
        }
        match (sidecar, sidecar_index) {
            (Some(sidecar), Some(i)) => containers[i] = Value::Object(sidecar.fields),
            (Some(sidecar), None) => containers.push(Value::Object(sidecar.fields)),
            (None, _) => {}
        }
        if let Some(pod) = raw.get_mut("spec").and_then(Value::as_object_mut) {
            pod.insert("containers".to_owned(), Value::Array(containers));
            let current = pod.get("terminationGracePeriodSeconds").and_then(Value::as_u64);
            if let Some(grace) = grace_period.filter(|g| current != Some(*g)) {
                pod.insert("terminationGracePeriodSeconds".to_owned(), grace.into());
            }
        }
        if let Some(label) = service_label {
            let labels = ensure_mapping(&mut raw, &["metadata", "labels"]);
            if labels.get(LABEL_SERVICE) != Some(&label) {
                labels.insert(LABEL_SERVICE.to_owned(), label);
            }
        }
        raw
    }
}
