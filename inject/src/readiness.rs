//! Whether the queue-proxy can take over the user container's readinessProbe. It probes the user container
//! itself (`EBB_PROBE_PATH`: an HTTP GET of that path, or a TCP connect without one) on the port it forwards
//! to, and nothing else; a probe it cannot repeat stays with the kubelet on the user container.

use crate::model::{Port, PortRef, Probe, ProbeAction};

/// What happens to the user container's readinessProbe.
pub enum Readiness {
    /// None there (or moved already).
    Absent,
    /// The queue-proxy can probe the same thing: an HTTP path (`None` for a TCP probe), and the timeout.
    Movable { path: Option<String>, timeout: Option<String> },
    /// The queue-proxy cannot probe it (why); the kubelet keeps running it on the user container.
    Kept(String),
}

/// What becomes of `probe`, a readinessProbe of a container with `ports` served on `user_port`.
pub fn movable_readiness(probe: &Probe, ports: &[Port], user_port: u16) -> Readiness {
    let timeout = probe.timeout_seconds.map(|s| format!("{s}s"));
    let on_user_port = |port: &Option<PortRef>| match port {
        Some(PortRef::Number(n)) => *n == u64::from(user_port),
        Some(PortRef::Name(name)) => {
            ports.iter().any(|p| p.name.as_deref() == Some(name) && p.number == user_port)
        }
        None => false,
    };
    match &probe.action {
        ProbeAction::HttpGet(http) => {
            if !on_user_port(&http.port) {
                return Readiness::Kept(format!("it probes another port than the served one, {user_port}"));
            }
            if http.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
                return Readiness::Kept("the queue-proxy probes plain HTTP only".into());
            }
            if http.host {
                return Readiness::Kept("it sets a host".into());
            }
            if http.headers {
                return Readiness::Kept("the queue-proxy's probe sends no custom headers".into());
            }
            let path = http.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/").to_owned();
            Readiness::Movable { path: Some(path), timeout }
        }
        ProbeAction::TcpSocket(port) => {
            if !on_user_port(port) {
                return Readiness::Kept(format!("it probes another port than the served one, {user_port}"));
            }
            Readiness::Movable { path: None, timeout }
        }
        ProbeAction::Other => {
            Readiness::Kept("the queue-proxy probes HTTP paths and TCP connects only".into())
        }
    }
}
