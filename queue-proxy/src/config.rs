//! The validated configuration of one queue-proxy, built from [`crate::cli::Args`].

use std::net::IpAddr;
use std::time::Duration;

use ebb_config::Protocol;
use ebb_config::value::{MAX_DURATION, format_duration};
use ebb_config::wire::MAX_POD_NAME_LEN;
use ebb_http::proxy::ForwarderOptions;
use ebb_http::timeouts::Timeouts;
use http::uri::Authority;

use crate::probe::{ProbeOptions, ProbeTarget};

/// Everything the queue-proxy needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The user container.
    pub upstream: Authority,
    /// Address every port binds to.
    pub bind_address: IpAddr,
    /// Data, admin, stats and metrics ports (0 = any free port).
    pub ports: Ports,
    /// Concurrency limit; 0 is unlimited (no breaker in the path).
    pub container_concurrency: u32,
    /// Requests that may wait beyond the limit.
    pub queue_depth: u32,
    /// Request timeouts.
    pub timeouts: Timeouts,
    /// Upstream protocol override.
    pub protocol: Option<Protocol>,
    /// Start-up and readiness probing.
    pub probe: ProbeOptions,
    /// Quiet period before exiting while draining.
    pub drain_quiet_period: Duration,
    /// Longest drain.
    pub drain_deadline: Duration,
    /// This pod's name, reported in stats.
    pub pod_name: String,
    /// `NAMESPACE/NAME`, named in error bodies and logs.
    pub service: String,
    /// `Retry-After` on 503s.
    pub retry_after: Duration,
    /// Upstream pools.
    pub forwarder: ForwarderOptions,
}

/// The four listening ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Requests for the user container.
    pub data: u16,
    /// Readiness, liveness, `/wait-for-drain`.
    pub admin: u16,
    /// `GET /stats`.
    pub stats: u16,
    /// Prometheus.
    pub metrics: u16,
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {message}")]
pub struct ConfigError {
    /// The flag (and its environment variable).
    pub option: &'static str,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(option: &'static str, message: impl Into<String>) -> Self {
        Self { option, message: message.into() }
    }
}

/// Parses `HOST:PORT` into an authority that has a port.
pub fn parse_upstream(text: &str) -> Result<Authority, String> {
    let authority: Authority = text.parse().map_err(|_| format!("'{text}' is not HOST:PORT"))?;
    if authority.port_u16().is_none() {
        return Err(format!("'{text}' has no port; give HOST:PORT such as 127.0.0.1:8080"));
    }
    if authority.as_str().contains('@') {
        return Err(format!("'{text}' must not contain user information"));
    }
    Ok(authority)
}

/// Checks a Kubernetes object name used as a pod or service name.
pub fn check_name(option: &'static str, name: &str, max: usize) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= max
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            option,
            format!("'{name}' must be 1 to {max} lowercase letters, digits, '-' or '.'"),
        ))
    }
}

impl Config {
    /// Checks the ranges of durations and the relations between values (each value is checked when parsed).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let durations = [
            ("--timeout", Some(self.timeouts.total)),
            ("--response-start-timeout", Some(self.timeouts.response_start)),
            ("--idle-timeout", self.timeouts.idle),
            ("--request-body-timeout", self.timeouts.request_body),
            ("--probe-period", Some(self.probe.initial_period)),
            ("--probe-aggressive-for", Some(self.probe.aggressive_for)),
            ("--probe-max-period", Some(self.probe.max_period)),
            ("--probe-timeout", Some(self.probe.timeout)),
            ("--drain-quiet-period", Some(self.drain_quiet_period)),
            ("--drain-deadline", Some(self.drain_deadline)),
            ("--retry-after", Some(self.retry_after)),
        ];
        for (option, value) in durations {
            if let Some(value) = value
                && value > MAX_DURATION
            {
                return Err(ConfigError::new(
                    option,
                    format!(
                        "{} is too long; accepted: at most {} (365 days)",
                        format_duration(value),
                        format_duration(MAX_DURATION)
                    ),
                ));
            }
        }
        if self.timeouts.total.is_zero() {
            return Err(ConfigError::new("--timeout", "must be more than 0"));
        }
        if self.timeouts.response_start.is_zero() {
            return Err(ConfigError::new(
                "--response-start-timeout",
                "must be more than 0 (leave it unset to use --timeout)",
            ));
        }
        if self.probe.initial_period.is_zero() || self.probe.max_period < self.probe.initial_period {
            return Err(ConfigError::new(
                "--probe-period",
                "must be more than 0 and at most --probe-max-period",
            ));
        }
        if self.probe.timeout.is_zero() {
            return Err(ConfigError::new("--probe-timeout", "must be more than 0"));
        }
        if let ProbeTarget::Http { path } = &self.probe.target
            && (!path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err())
        {
            return Err(ConfigError::new(
                "--probe-path",
                format!("'{path}' must be an absolute path such as /healthz"),
            ));
        }
        check_name("--pod-name", &self.pod_name, MAX_POD_NAME_LEN)?;
        let Ports { data, admin, stats, metrics } = self.ports;
        let fixed: Vec<u16> = [data, admin, stats, metrics].into_iter().filter(|p| *p != 0).collect();
        for (i, port) in fixed.iter().enumerate() {
            if fixed[..i].contains(port) {
                return Err(ConfigError::new("--*-port", format!("port {port} is given twice")));
            }
        }
        if self.upstream.port_u16() == Some(data) && self.upstream.host() == self.bind_address.to_string() {
            return Err(ConfigError::new("--upstream", "points at the queue-proxy's own data port"));
        }
        Ok(())
    }
}
