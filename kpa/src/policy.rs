//! From decision to replicas: bounds, initial scale and scale-to-zero on top of the decider, as Knative's
//! `pkg/reconciler/autoscaling/kpa` (scaler.go, kpa.go) applies them, kept as a state machine with named
//! [`Phase`]s so that logs and metrics can say why a service is where it is.
//!
//! Each tick:
//! 1. Bounds: `min-scale` (ignored when unreachable; raised to `initial-scale` until that many pods were first
//!    ready, when `initial-scale > 1`) and `max-scale` (`0` = unbounded) clamp the decider's count. Without a
//!    decision the replicas are left alone, except while activating, where the bounds still apply.
//! 2. A bounded count of zero goes through the scale-to-zero rules:
//!    - `enable-scale-to-zero: false` keeps 1 pod;
//!    - activating: the replicas stay until the activation timeout, then go to 0;
//!    - active for less than a stable window: keep 1 pod; after that the service is marked inactive and the
//!      activator is put in the request path;
//!    - inactive: replicas go to 0 only once the activator is verified in the path, and after the grace
//!      period (or sooner if the activator has already been in the path, proxy mode, that long) and the
//!      pod retention period; the longer of the two always suffices.
//! 3. The phase follows the wanted count and the ready pods (Knative's `computeActiveCondition`), and the
//!    routing mode follows: serve iff pods are wanted, the excess burst capacity is >= 0 and a pod is ready;
//!    serve is forced while no activator is ready.

use std::fmt;
use std::time::Duration;

use ebb_config::{Mode, ServiceConfig};

use crate::reason::Pods;
use crate::{Decision, Timestamp};

/// The policy's inputs that change only with configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    /// Lower bound while reachable.
    pub min_scale: u32,
    /// Upper bound, `0` = unbounded.
    pub max_scale: u32,
    /// Replicas at creation, a lower bound until first reached.
    pub initial_scale: u32,
    /// `false` floors replicas at 1.
    pub enable_scale_to_zero: bool,
    /// A service must have been active this long before it may be marked inactive.
    pub stable_window: Duration,
    /// How long the activator must have been in the path before replicas go to 0.
    pub scale_to_zero_grace_period: Duration,
    /// How long the last pod stays after the service went inactive.
    pub scale_to_zero_pod_retention_period: Duration,
    /// How long activating may last before giving up and going back to 0.
    pub activation_timeout: Duration,
    /// Per-pod total capacity (for the excess burst capacity of a new service).
    pub total: f64,
    /// Target burst capacity (for the excess burst capacity of a new service).
    pub target_burst_capacity: f64,
    /// Whether the service receives traffic; `min-scale` applies only while it does.
    pub reachable: bool,
}

impl PolicySpec {
    /// The policy inputs of a service's resolved configuration.
    pub fn from_config(config: &ServiceConfig, reachable: bool) -> Self {
        let s = &config.scaling;
        Self {
            min_scale: s.min_scale,
            max_scale: s.max_scale,
            initial_scale: s.initial_scale,
            enable_scale_to_zero: s.enable_scale_to_zero,
            stable_window: s.stable_window,
            scale_to_zero_grace_period: s.scale_to_zero_grace_period,
            scale_to_zero_pod_retention_period: s.scale_to_zero_pod_retention_period,
            activation_timeout: config.data_plane.activation_timeout,
            total: s.total_target,
            target_burst_capacity: s.target_burst_capacity,
            reachable,
        }
    }

    /// The excess burst capacity of a service that has no decision yet: `initial-scale x total - TBC`
    /// (negative by default, so a new service starts behind the activator).
    pub fn initial_excess_burst_capacity(&self) -> i64 {
        let tbc = self.target_burst_capacity;
        if tbc == 0.0 {
            0
        } else if tbc > 0.0 {
            (f64::from(self.initial_scale) * self.total - tbc).floor() as i64
        } else {
            -1
        }
    }
}

/// Where a service is in its life cycle. Each phase carries when it was entered, which is what the
/// scale-to-zero clocks count from (persist it so that a new leader resumes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Pods are wanted but fewer than the activation threshold (1, or `max(min-scale, initial-scale)` before
    /// the first activation) are ready; requests wait in the activator.
    Activating {
        /// When activation started.
        since: Timestamp,
    },
    /// Enough pods are ready.
    Active {
        /// When the service became active.
        since: Timestamp,
    },
    /// Idle after a stable window: the activator goes into the path; replicas wait for the grace and
    /// retention periods.
    Inactive {
        /// When the service was marked inactive.
        since: Timestamp,
    },
    /// Scaled to zero.
    Zero {
        /// When replicas went to 0.
        since: Timestamp,
    },
}

impl Phase {
    /// The phase's name, for logs and metric labels.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Activating { .. } => "activating",
            Self::Active { .. } => "active",
            Self::Inactive { .. } => "inactive",
            Self::Zero { .. } => "zero",
        }
    }

    /// When the phase was entered.
    pub const fn since(&self) -> Timestamp {
        match *self {
            Self::Activating { since }
            | Self::Active { since }
            | Self::Inactive { since }
            | Self::Zero { since } => since,
        }
    }

    fn is_idle(&self) -> bool {
        matches!(self, Self::Inactive { .. } | Self::Zero { .. })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the policy set (or left) the replicas as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyReason {
    /// The decider's count, within bounds.
    Desired {
        /// The count.
        desired: u32,
    },
    /// Raised to `min-scale`.
    MinScale {
        /// The decider's count.
        desired: u32,
        /// The bound.
        min: u32,
    },
    /// Raised to `initial-scale`, not yet reached once.
    InitialScale {
        /// The decider's count (0 when there was no decision).
        desired: u32,
        /// The initial scale.
        initial: u32,
    },
    /// Capped at `max-scale`.
    MaxScale {
        /// The decider's count.
        desired: u32,
        /// The bound.
        max: u32,
    },
    /// No decision: replicas left as they are.
    NoDecision,
    /// `enable-scale-to-zero` is off: 1 pod stays.
    ScaleToZeroDisabled,
    /// Idle, but active for less than a stable window: 1 pod stays.
    ActiveWindow {
        /// Time left until a stable window of activity.
        left: Duration,
    },
    /// Idle after a stable window: marked inactive this tick, the activator goes into the path.
    Deactivated,
    /// Inactive, waiting for the activator to be verified in the path.
    AwaitingActivator,
    /// Inactive, keeping the last pod for the retention period.
    PodRetention {
        /// Time left.
        left: Duration,
    },
    /// Inactive, waiting out the grace period.
    GracePeriod {
        /// Time left.
        left: Duration,
    },
    /// Scaled to zero this tick.
    ScaledToZero,
    /// Staying at zero.
    AtZero,
    /// Activating: waiting for pods, replicas left as they are.
    Activating {
        /// Time spent activating.
        elapsed: Duration,
        /// The activation timeout.
        timeout: Duration,
    },
    /// Activation took longer than the activation timeout: back to 0.
    ActivationTimedOut {
        /// The activation timeout.
        timeout: Duration,
    },
}

impl PolicyReason {
    /// The kind, for metric labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Desired { .. } => "desired",
            Self::MinScale { .. } => "min_scale",
            Self::InitialScale { .. } => "initial_scale",
            Self::MaxScale { .. } => "max_scale",
            Self::NoDecision => "no_decision",
            Self::ScaleToZeroDisabled => "scale_to_zero_disabled",
            Self::ActiveWindow { .. } => "active_window",
            Self::Deactivated => "deactivated",
            Self::AwaitingActivator => "awaiting_activator",
            Self::PodRetention { .. } => "pod_retention",
            Self::GracePeriod { .. } => "grace_period",
            Self::ScaledToZero => "scaled_to_zero",
            Self::AtZero => "at_zero",
            Self::Activating { .. } => "activating",
            Self::ActivationTimedOut { .. } => "activation_timed_out",
        }
    }
}

/// Whole seconds, rounded up, for the "time left" in reasons.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0))
    }
}

impl fmt::Display for PolicyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Desired { desired } => write!(f, "decider: {}", Pods(desired)),
            Self::MinScale { desired, min } => write!(f, "min-scale {min} (decider: {})", Pods(desired)),
            Self::InitialScale { desired, initial } => {
                write!(f, "initial-scale {initial} until first reached (decider: {})", Pods(desired))
            }
            Self::MaxScale { desired, max } => write!(f, "max-scale {max} (decider: {})", Pods(desired)),
            Self::NoDecision => f.write_str("no decision: replicas left as they are"),
            Self::ScaleToZeroDisabled => f.write_str("enable-scale-to-zero is false: keeping 1 pod"),
            Self::ActiveWindow { left } => {
                write!(f, "idle, keeping 1 pod until active for a stable window ({} left)", Secs(left))
            }
            Self::Deactivated => {
                f.write_str("idle for a stable window: inactive, putting the activator in the path")
            }
            Self::AwaitingActivator => f.write_str("inactive: waiting for the activator to be in the path"),
            Self::PodRetention { left } => {
                write!(f, "inactive: keeping the last pod for the retention period ({} left)", Secs(left))
            }
            Self::GracePeriod { left } => write!(f, "inactive: grace period ({} left)", Secs(left)),
            Self::ScaledToZero => f.write_str("inactive with the activator in the path: scaled to zero"),
            Self::AtZero => f.write_str("at zero"),
            Self::Activating { elapsed, timeout } => write!(
                f,
                "activating: waiting for ready pods ({} of the {} activation timeout)",
                Secs(elapsed),
                Secs(timeout)
            ),
            Self::ActivationTimedOut { timeout } => {
                write!(f, "activation timed out after {}: scaled to zero", Secs(timeout))
            }
        }
    }
}

/// One tick's inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyInput {
    /// The tick's time.
    pub now: Timestamp,
    /// The decider's decision, `None` when it made none.
    pub decision: Option<Decision>,
    /// Ready, non-terminating pods.
    pub ready: u32,
    /// Whether the activator is verified in the request path (the activator-only endpoints were written and
    /// seen back, and the activators answered their probe).
    pub activator_in_path: bool,
    /// Whether at least one activator is ready; without one, serve mode is forced.
    pub activators_ready: bool,
}

/// One tick's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyOutput {
    /// Replicas to apply; `None` leaves them as they are.
    pub replicas: Option<u32>,
    /// The count the service wants (0 while inactive even when the last pod is kept); `None` when unknown.
    pub want: Option<u32>,
    /// Where requests go.
    pub mode: Mode,
    /// The phase after this tick.
    pub phase: Phase,
    /// Why `replicas` is what it is.
    pub reason: PolicyReason,
}

/// One service's bounds and scale-to-zero state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePolicy {
    spec: PolicySpec,
    phase: Phase,
    /// Whether the activation threshold (`max(min, initial)`) was reached once.
    initialized: bool,
    mode: Mode,
    mode_since: Timestamp,
    last_ebc: i64,
}

/// What the scale-to-zero rules decided.
struct Step {
    replicas: Option<u32>,
    want: Option<u32>,
    reason: PolicyReason,
}

impl ScalePolicy {
    /// A service first seen at `now` with `ready` ready pods. With `initial-scale` 0 it starts at zero; with
    /// enough ready pods, active; otherwise activating.
    pub fn new(spec: PolicySpec, now: Timestamp, ready: u32) -> Self {
        let threshold = spec.initial_scale.max(spec.effective_min());
        let phase = if threshold == 0 {
            Phase::Zero { since: now }
        } else if ready >= threshold {
            Phase::Active { since: now }
        } else {
            Phase::Activating { since: now }
        };
        let last_ebc = spec.initial_excess_burst_capacity();
        let serve = matches!(phase, Phase::Active { .. }) && last_ebc >= 0 && ready > 0;
        let mode = if serve { Mode::Serve } else { Mode::Proxy };
        Self {
            spec,
            phase,
            initialized: threshold == 0 || ready >= threshold,
            mode,
            mode_since: now,
            last_ebc,
        }
    }

    /// A service resumed from persisted state (a new leader): the phase and mode with the times they were
    /// entered, and whether the initial scale was reached.
    pub fn resume(
        spec: PolicySpec,
        phase: Phase,
        mode: Mode,
        mode_since: Timestamp,
        initialized: bool,
    ) -> Self {
        let last_ebc = spec.initial_excess_burst_capacity();
        Self { spec, phase, initialized, mode, mode_since, last_ebc }
    }

    /// Applies a changed configuration; the phase and its clocks are kept.
    pub fn update(&mut self, spec: PolicySpec) {
        self.spec = spec;
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The current routing mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// When the current routing mode was entered.
    pub fn mode_since(&self) -> Timestamp {
        self.mode_since
    }

    /// Whether the initial scale has been reached once.
    pub fn initialized(&self) -> bool {
        self.initialized
    }

    /// The current spec.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// One tick: bounds, scale-to-zero, phase and mode.
    pub fn tick(&mut self, input: PolicyInput) -> PolicyOutput {
        let now = input.now;
        if let Some(d) = &input.decision {
            self.last_ebc = d.excess_burst_capacity;
        }
        let step = match input.decision {
            // Without a decision nothing changes, except that activation keeps its bounds and its timeout.
            None if !matches!(self.phase, Phase::Activating { .. }) => {
                Step { replicas: None, want: None, reason: PolicyReason::NoDecision }
            }
            decision => {
                let desired = decision.map_or(0, |d| d.desired);
                let (bounded, reason) = self.bound(desired);
                if bounded > 0 {
                    Step { replicas: Some(bounded), want: Some(bounded), reason }
                } else {
                    let mut step = self.to_zero(now, input.activator_in_path);
                    if decision.is_none() && step.replicas.is_none() {
                        step.want = None;
                    }
                    step
                }
            }
        };
        self.advance_phase(now, input.ready, &step);
        let want_pods = match step.want {
            Some(n) => n > 0,
            None => !self.phase.is_idle(),
        };
        let serve = (want_pods && self.last_ebc >= 0 && input.ready > 0) || !input.activators_ready;
        let mode = if serve { Mode::Serve } else { Mode::Proxy };
        if mode != self.mode {
            self.mode = mode;
            self.mode_since = now;
        }
        PolicyOutput {
            replicas: step.replicas,
            want: step.want,
            mode,
            phase: self.phase,
            reason: step.reason,
        }
    }

    /// Applies min/initial/max scale.
    fn bound(&self, desired: u32) -> (u32, PolicyReason) {
        let min = self.spec.effective_min();
        // Knative holds the initial scale as a floor only when it is above 1, until first reached.
        let initial =
            if !self.initialized && self.spec.initial_scale > 1 { self.spec.initial_scale } else { 0 };
        let floor = min.max(initial);
        let max = self.spec.max_scale;
        if desired < floor {
            let reason = if initial > min {
                PolicyReason::InitialScale { desired, initial }
            } else {
                PolicyReason::MinScale { desired, min }
            };
            (floor, reason)
        } else if max != 0 && desired > max {
            (max, PolicyReason::MaxScale { desired, max })
        } else {
            (desired, PolicyReason::Desired { desired })
        }
    }

    /// The scale-to-zero rules for a bounded count of zero.
    fn to_zero(&self, now: Timestamp, activator_in_path: bool) -> Step {
        let spec = &self.spec;
        let keep = |want, reason| Step { replicas: None, want: Some(want), reason };
        let apply = |n, reason| Step { replicas: Some(n), want: Some(n), reason };
        if !spec.enable_scale_to_zero {
            return apply(1, PolicyReason::ScaleToZeroDisabled);
        }
        match self.phase {
            Phase::Activating { since } => {
                let elapsed = now.saturating_since(since);
                let timeout = spec.activation_timeout;
                if elapsed > timeout {
                    apply(0, PolicyReason::ActivationTimedOut { timeout })
                } else {
                    Step { replicas: None, want: None, reason: PolicyReason::Activating { elapsed, timeout } }
                }
            }
            Phase::Active { since } => {
                let active_for = now.saturating_since(since);
                if active_for >= spec.stable_window {
                    keep(0, PolicyReason::Deactivated)
                } else {
                    apply(1, PolicyReason::ActiveWindow { left: spec.stable_window - active_for })
                }
            }
            Phase::Inactive { since } => {
                if !activator_in_path {
                    return keep(0, PolicyReason::AwaitingActivator);
                }
                let inactive_for = now.saturating_since(since);
                let grace = spec.scale_to_zero_grace_period;
                let retention = spec.scale_to_zero_pod_retention_period;
                let proxy_for = if self.mode == Mode::Proxy {
                    now.saturating_since(self.mode_since)
                } else {
                    Duration::ZERO
                };
                if inactive_for >= grace.max(retention) {
                    apply(0, PolicyReason::ScaledToZero)
                } else if inactive_for < retention {
                    keep(0, PolicyReason::PodRetention { left: retention - inactive_for })
                } else if proxy_for >= grace {
                    // The activator has been in the path for a grace period already (Knative's fast path).
                    apply(0, PolicyReason::ScaledToZero)
                } else {
                    keep(0, PolicyReason::GracePeriod { left: grace - proxy_for })
                }
            }
            Phase::Zero { .. } => apply(0, PolicyReason::AtZero),
        }
    }

    /// Knative's `computeActiveCondition`: the phase from the wanted count and the ready pods.
    fn advance_phase(&mut self, now: Timestamp, ready: u32, step: &Step) {
        let min = self.spec.effective_min();
        let threshold = if self.initialized { min.max(1) } else { min.max(self.spec.initial_scale) };
        if ready >= threshold {
            self.initialized = true;
        }
        let busy = !self.phase.is_idle();
        self.phase = match (step.want, step.replicas) {
            (Some(0), Some(0)) => match self.phase {
                Phase::Zero { .. } => self.phase,
                _ => Phase::Zero { since: now },
            },
            (Some(0), _) => match self.phase {
                Phase::Inactive { .. } | Phase::Zero { .. } => self.phase,
                _ => Phase::Inactive { since: now },
            },
            (want, _) if want.is_some_and(|n| n > 0) || busy => {
                if ready < threshold {
                    match self.phase {
                        Phase::Activating { .. } => self.phase,
                        _ => Phase::Activating { since: now },
                    }
                } else {
                    match self.phase {
                        Phase::Active { .. } => self.phase,
                        _ => Phase::Active { since: now },
                    }
                }
            }
            _ => self.phase,
        };
    }
}

impl PolicySpec {
    /// `min-scale`, which applies only while the service is reachable.
    fn effective_min(&self) -> u32 {
        if self.reachable { self.min_scale } else { 0 }
    }
}
