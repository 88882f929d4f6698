//! The queue-proxy's inputs, named once: every `EBB_*` variable it reads (each also a `--flag`), and the one
//! function that turns a service's data-plane settings into them. `ebb inject` writes them on a pod's sidecar,
//! `ebb up` passes them as flags, the autoscaler reads them back from running pods to report a ConfigMismatch,
//! and the queue-proxy declares its flags with these names.

use std::time::Duration;

use crate::spec::DataPlaneSpec;
use crate::value::format_duration;

/// The queue-proxy's environment variables.
pub mod env {
    /// The user container's `HOST:PORT`.
    pub const UPSTREAM: &str = "EBB_UPSTREAM";
    /// Address every port binds to.
    pub const BIND_ADDRESS: &str = "EBB_BIND_ADDRESS";
    /// Data port.
    pub const DATA_PORT: &str = "EBB_DATA_PORT";
    /// Admin port (readiness, liveness, `/wait-for-drain`).
    pub const ADMIN_PORT: &str = "EBB_ADMIN_PORT";
    /// Stats port.
    pub const STATS_PORT: &str = "EBB_STATS_PORT";
    /// Prometheus port.
    pub const METRICS_PORT: &str = "EBB_METRICS_PORT";
    /// `ebb.dev/container-concurrency`.
    pub const CONTAINER_CONCURRENCY: &str = "EBB_CONTAINER_CONCURRENCY";
    /// `ebb.dev/queue-depth`.
    pub const QUEUE_DEPTH: &str = "EBB_QUEUE_DEPTH";
    /// `ebb.dev/timeout`.
    pub const TIMEOUT: &str = "EBB_TIMEOUT";
    /// `ebb.dev/response-start-timeout`.
    pub const RESPONSE_START_TIMEOUT: &str = "EBB_RESPONSE_START_TIMEOUT";
    /// `ebb.dev/idle-timeout`.
    pub const IDLE_TIMEOUT: &str = "EBB_IDLE_TIMEOUT";
    /// `ebb.dev/request-body-timeout`.
    pub const REQUEST_BODY_TIMEOUT: &str = "EBB_REQUEST_BODY_TIMEOUT";
    /// `ebb.dev/protocol`.
    pub const PROTOCOL: &str = "EBB_PROTOCOL";
    /// The user container's readiness path (a TCP connect without it).
    pub const PROBE_PATH: &str = "EBB_PROBE_PATH";
    /// Probe period while starting.
    pub const PROBE_PERIOD: &str = "EBB_PROBE_PERIOD";
    /// How long to probe at that period.
    pub const PROBE_AGGRESSIVE_FOR: &str = "EBB_PROBE_AGGRESSIVE_FOR";
    /// Longest probe period after backing off.
    pub const PROBE_MAX_PERIOD: &str = "EBB_PROBE_MAX_PERIOD";
    /// Time allowed for one probe.
    pub const PROBE_TIMEOUT: &str = "EBB_PROBE_TIMEOUT";
    /// Quiet period that ends a drain.
    pub const DRAIN_QUIET_PERIOD: &str = "EBB_DRAIN_QUIET_PERIOD";
    /// Longest drain.
    pub const DRAIN_DEADLINE: &str = "EBB_DRAIN_DEADLINE";
    /// The pod's name (the Downward API's usual variable).
    pub const POD_NAME: &str = "POD_NAME";
    /// The pod's namespace.
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// The pod's IP.
    pub const POD_IP: &str = "POD_IP";
    /// The service's namespace.
    pub const SERVICE_NAMESPACE: &str = "EBB_SERVICE_NAMESPACE";
    /// The service's name.
    pub const SERVICE_NAME: &str = "EBB_SERVICE_NAME";
    /// `Retry-After` on 503s.
    pub const RETRY_AFTER: &str = "EBB_RETRY_AFTER";
    /// Tokio worker threads.
    pub const WORKER_THREADS: &str = "EBB_WORKER_THREADS";
    /// `text` or `json`.
    pub const LOG_FORMAT: &str = "EBB_LOG_FORMAT";
    /// Where to write the bound addresses.
    pub const READY_FILE: &str = "EBB_READY_FILE";
}

/// How long a draining queue-proxy waits with nothing in flight before it exits, unless told otherwise.
pub const DEFAULT_DRAIN_QUIET_PERIOD: Duration = Duration::from_secs(30);

/// One input of the queue-proxy, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The variable (one of [`env`]).
    pub env: &'static str,
    /// Its value.
    pub value: String,
}

impl Setting {
    /// The same input as a flag: `EBB_IDLE_TIMEOUT` is `--idle-timeout`.
    pub fn flag(&self) -> String {
        flag(self.env)
    }
}

/// The flag that stands for variable `env`: `EBB_IDLE_TIMEOUT` is `--idle-timeout`, `POD_NAME` `--pod-name`.
pub fn flag(env: &str) -> String {
    let name = env.strip_prefix("EBB_").unwrap_or(env);
    format!("--{}", name.to_ascii_lowercase().replace('_', "-"))
}

/// A service's data-plane settings as the queue-proxy reads them: concurrency, queue depth, the four timeouts
/// (a timeout that is off is `0s`) and, when set, the protocol. In this order, always.
pub fn data_plane_settings(spec: &DataPlaneSpec) -> Vec<Setting> {
    let setting = |env, value: String| Setting { env, value };
    let mut settings = vec![
        setting(env::CONTAINER_CONCURRENCY, spec.container_concurrency.to_string()),
        setting(env::QUEUE_DEPTH, spec.queue_depth.to_string()),
        setting(env::TIMEOUT, format_duration(spec.timeout)),
        setting(env::RESPONSE_START_TIMEOUT, format_duration(spec.response_start_timeout)),
        setting(env::IDLE_TIMEOUT, format_duration(spec.idle_timeout.unwrap_or_default())),
        setting(env::REQUEST_BODY_TIMEOUT, format_duration(spec.request_body_timeout.unwrap_or_default())),
    ];
    // Unset means "the client's protocol", the queue-proxy's default.
    if let Some(protocol) = spec.protocol {
        settings.push(setting(env::PROTOCOL, protocol.as_str().to_owned()));
    }
    settings
}

/// [`data_plane_settings`] as command-line arguments: `--flag value` pairs.
pub fn data_plane_args(spec: &DataPlaneSpec) -> Vec<String> {
    data_plane_settings(spec).into_iter().flat_map(|s| [s.flag(), s.value]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Protocol, ServiceConfig};

    #[test]
    fn every_variable_has_its_flag() {
        assert_eq!(flag(env::REQUEST_BODY_TIMEOUT), "--request-body-timeout");
        assert_eq!(flag(env::POD_NAME), "--pod-name");
    }

    #[test]
    fn settings_follow_the_spec_and_leave_an_unset_protocol_out() {
        let mut spec = ServiceConfig::default().data_plane;
        let envs: Vec<&str> = data_plane_settings(&spec).iter().map(|s| s.env).collect();
        assert!(!envs.contains(&env::PROTOCOL));
        spec.protocol = Some(Protocol::H2c);
        spec.idle_timeout = None;
        let args = data_plane_args(&spec);
        let after = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str());
        assert_eq!(after("--protocol"), Some("h2c"));
        assert_eq!(after("--idle-timeout"), Some("0s"));
        assert_eq!(after("--timeout"), Some("5m"));
        assert_eq!(after("--request-body-timeout"), Some("1m"));
    }
}
