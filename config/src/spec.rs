//! The resolved configuration of one service: what the decider, the scale-to-zero policy and the data plane
//! read. Produced by [`crate::resolve_service`] from a Deployment's annotations merged over the global
//! `config-autoscaler` ConfigMap; every value here is already validated.

use std::time::Duration;

/// Everything ebb needs to know about one autoscaled service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Inputs of the KPA decider and of the bounds / scale-to-zero policy.
    pub scaling: ScalingSpec,
    /// Inputs of the queue-proxy and the activator.
    pub data_plane: DataPlaneSpec,
    /// `ebb.dev/paused: "true"`: the autoscaler leaves replicas as they are.
    pub paused: bool,
}

/// Which autoscaler owns the service (`autoscaling.knative.dev/class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalerClass {
    /// `kpa.autoscaling.knative.dev`: ebb's request-driven autoscaler (the default).
    Kpa,
    /// `hpa.autoscaling.knative.dev`: a HorizontalPodAutoscaler scales it; ebb only routes.
    Hpa,
}

/// What load is measured against the per-pod target (`autoscaling.knative.dev/metric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Time-weighted in-flight requests per pod (the default).
    Concurrency,
    /// Requests per second per pod.
    Rps,
}

/// How a window of 1-second buckets is averaged (`autoscaling.knative.dev/metric-aggregation-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// Sum of buckets over the seconds between the first and last write, capped at the window.
    Linear,
    /// Exponentially decaying weights, newest first.
    WeightedExponential,
}

/// Upstream protocol override (`ebb.dev/protocol`); without it the client's protocol is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 cleartext with prior knowledge.
    H2c,
}

impl Protocol {
    /// `http1` or `h2c`, as the annotation and the queue-proxy's flag spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2c => "h2c",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "http1" => Ok(Self::Http1),
            "h2c" => Ok(Self::H2c),
            _ => Err(format!("'{text}' is not a protocol; use http1 or h2c")),
        }
    }
}

/// The decider's and the scale policy's inputs for one service, with Knative's semantics.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingSpec {
    /// Which autoscaler scales this service.
    pub class: ScalerClass,
    /// The scaling metric.
    pub metric: Metric,
    /// Per-pod `total` before utilisation: CC, the metric's default, or the `target` annotation (capped at CC).
    pub total_target: f64,
    /// Target utilisation as a fraction in (0, 1].
    pub target_utilization: f64,
    /// Target burst capacity: `-1` keeps the activator in the path, `0` never, `>0` a spare-capacity goal.
    pub target_burst_capacity: f64,
    /// The stable window (whole seconds, 6 s to 1 h).
    pub stable_window: Duration,
    /// Panic window as a percentage of the stable window (1 to 100).
    pub panic_window_percentage: f64,
    /// Panic threshold as a ratio (`panic-threshold-percentage / 100`).
    pub panic_threshold: f64,
    /// Largest factor by which one decision may grow the ready pod count (> 1).
    pub max_scale_up_rate: f64,
    /// Largest factor by which one decision may shrink the ready pod count (> 1).
    pub max_scale_down_rate: f64,
    /// Lower bound on replicas while reachable.
    pub min_scale: u32,
    /// Upper bound on replicas; `0` means unbounded.
    pub max_scale: u32,
    /// Replicas on creation, held until first reached.
    pub initial_scale: u32,
    /// A non-zero desired count is lifted to at least this (`1` means no lift).
    pub activation_scale: u32,
    /// Scale-down decisions are the maximum over this window (whole seconds).
    pub scale_down_delay: Duration,
    /// Global switch: `false` floors replicas at 1.
    pub enable_scale_to_zero: bool,
    /// How long the activator must be in the path before replicas go to zero.
    pub scale_to_zero_grace_period: Duration,
    /// How long the last pod is kept after the service went idle.
    pub scale_to_zero_pod_retention_period: Duration,
    /// How windows are averaged.
    pub aggregation: Aggregation,
    /// Per-activator capacity in requests, used to size the activator share (`activator-capacity`).
    pub activator_capacity: f64,
}

impl ScalingSpec {
    /// The per-pod target the decider divides observed load by: `max(0.01, total * utilisation)`.
    pub fn target(&self) -> f64 {
        (self.total_target * self.target_utilization).max(MIN_TARGET)
    }

    /// The panic window: the stable window times the panic percentage, rounded to whole seconds, at least 1 s.
    pub fn panic_window(&self) -> Duration {
        let secs = (self.stable_window.as_secs_f64() * self.panic_window_percentage / 100.0).round();
        Duration::from_secs((secs as u64).max(1))
    }
}

/// The smallest per-pod target Knative allows.
pub const MIN_TARGET: f64 = 0.01;

/// The queue-proxy's and the activator's inputs for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPlaneSpec {
    /// Per-pod concurrency limit; `0` means unlimited.
    pub container_concurrency: u32,
    /// Total request timeout, enforced by the queue-proxy.
    pub timeout: Duration,
    /// Time allowed until the response starts (defaults to `timeout`).
    pub response_start_timeout: Duration,
    /// Longest time the upstream sends nothing (before its first byte or between bytes); `None` means off.
    pub idle_timeout: Option<Duration>,
    /// Longest time the client sends nothing while its request body is still coming (nginx's
    /// `client_body_timeout`); `None` means off.
    pub request_body_timeout: Option<Duration>,
    /// Requests the queue-proxy queues beyond the concurrency limit (default 10 x CC).
    pub queue_depth: u32,
    /// How long the activator holds a request while the service is starting.
    pub activation_timeout: Duration,
    /// Requests the activator may hold for this service.
    pub max_queued: u32,
    /// Extra host names that route to this service.
    pub hosts: Vec<String>,
    /// Upstream protocol override; `None` follows the client.
    pub protocol: Option<Protocol>,
}
