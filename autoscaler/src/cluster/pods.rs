//! What the controller reads off a pod: whether it is ready (and carries the instance gate), and the engine's
//! view of it.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ebb_config::targets::INSTANCE_READY_GATE;
use k8s_openapi::jiff::Timestamp;

use super::watched::WatchedPod;
use crate::engine::PodTarget;

/// Ready condition true, not being deleted.
pub(crate) fn is_ready(pod: &WatchedPod) -> bool {
    pod.meta.deleting.is_none() && pod.status.as_ref().is_some_and(|s| s.conditions.ready == Some(true))
}

/// Whether `pod`'s spec carries the readiness gate of multi-pod instances.
pub(crate) fn has_instance_gate(pod: &WatchedPod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.condition_type == INSTANCE_READY_GATE))
}

/// The engine's view of a pod.
pub(crate) fn target(pod: &WatchedPod, stats_port: u16) -> PodTarget {
    let status = pod.status.as_ref();
    let ip: Option<IpAddr> = status.and_then(|s| s.pod_ip);
    let age = status
        .and_then(|s| s.start_time.as_ref())
        .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or_default();
    PodTarget {
        name: pod.name().to_owned(),
        stats: ip.map(|ip| SocketAddr::new(ip, stats_port)),
        ready: is_ready(pod),
        terminating: pod.meta.deleting.is_some(),
        started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
    }
}
