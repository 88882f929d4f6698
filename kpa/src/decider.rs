//! The KPA decision, one call per tick: observed load and ready pods in, desired pods, excess burst capacity
//! and panic state out, with Knative's semantics (`pkg/autoscaler/scaling/autoscaler.go`).
//!
//! Per tick, with `readyF = max(1, ready)`:
//! 1. `maxUp = ceil(maxScaleUpRate * readyF)`; `maxDown = floor(readyF / maxScaleDownRate)` when reachable,
//!    else 0.
//! 2. `ceil(stable / target)` and `ceil(panic / target)`, each clamped to `[maxDown, maxUp]`, then lifted to
//!    `activation-scale` when it is above 1 and the unclamped result is non-zero.
//! 3. Panic starts (or its clock restarts) on every tick with `ceil(panic / target) / readyF >= threshold`,
//!    and ends on the first tick below the threshold more than a stable window after the last one above it.
//!    In panic the result is the larger of the two counts, and never below the highest of this panic.
//! 4. With a `scale-down-delay` (and only while reachable), the result is the maximum over the delay, in 2 s
//!    buckets.
//! 5. Excess burst capacity `floor(ready * total - TBC - panic)`; `0` when TBC is 0, `-1` when TBC is -1.
//!
//! No decision is made (the last one stays in force) without data or without a ready pod count.

use std::fmt;
use std::time::Duration;

use ebb_config::{Metric, ScalingSpec};

use crate::delay::MaxWindow;
use crate::reason::{Reason, ReasonKind, Undecided};
use crate::{Error, MetricWindows, Observed, Timestamp};

/// Longest accepted scale-down delay (Knative's limit).
const MAX_SCALE_DOWN_DELAY: Duration = Duration::from_secs(3600);

/// The decider's inputs that change only with configuration (Knative's `DeciderSpec`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeciderSpec {
    /// The scaling metric (only used to word reasons).
    pub metric: Metric,
    /// Per-pod target: `max(0.01, total x utilisation)`.
    pub target: f64,
    /// Per-pod total capacity before utilisation, for the excess burst capacity.
    pub total: f64,
    /// Target burst capacity: `-1`, `0` or positive.
    pub target_burst_capacity: f64,
    /// Panic threshold as a ratio of pods wanted by the panic window to ready pods (`2.0` = 200%).
    pub panic_threshold: f64,
    /// The stable window: panic ends a full stable window after the last tick over the threshold.
    pub stable_window: Duration,
    /// Largest growth factor of one decision (> 1).
    pub max_scale_up_rate: f64,
    /// Largest shrink factor of one decision (> 1).
    pub max_scale_down_rate: f64,
    /// A non-zero result is lifted to at least this (`0` or `1`: no lift).
    pub activation_scale: u32,
    /// Scale-downs wait this long (whole seconds, `0` = off).
    pub scale_down_delay: Duration,
    /// Whether the service receives traffic; unreachable services may scale down without limit or delay.
    pub reachable: bool,
}

impl DeciderSpec {
    /// The decider inputs of a service's resolved configuration.
    pub fn from_scaling(spec: &ScalingSpec, reachable: bool) -> Self {
        Self {
            metric: spec.metric,
            target: spec.target(),
            total: spec.total_target,
            target_burst_capacity: spec.target_burst_capacity,
            panic_threshold: spec.panic_threshold,
            stable_window: spec.stable_window,
            max_scale_up_rate: spec.max_scale_up_rate,
            max_scale_down_rate: spec.max_scale_down_rate,
            activation_scale: spec.activation_scale,
            scale_down_delay: spec.scale_down_delay,
            reachable,
        }
    }

    /// Checks the ranges the arithmetic relies on.
    pub fn validate(&self) -> Result<(), Error> {
        let setting = |name, expected, value: f64, ok: bool| {
            if ok && value.is_finite() { Ok(()) } else { Err(Error::Setting { name, expected, value }) }
        };
        setting("target", "positive", self.target, self.target > 0.0)?;
        setting("total target", "positive", self.total, self.total > 0.0)?;
        let tbc = self.target_burst_capacity;
        setting("target-burst-capacity", "-1 or at least 0", tbc, tbc >= 0.0 || tbc == -1.0)?;
        setting("panic threshold", "positive", self.panic_threshold, self.panic_threshold > 0.0)?;
        setting("max-scale-up-rate", "above 1", self.max_scale_up_rate, self.max_scale_up_rate > 1.0)?;
        setting("max-scale-down-rate", "above 1", self.max_scale_down_rate, self.max_scale_down_rate > 1.0)?;
        if self.stable_window.is_zero() {
            return Err(Error::StableWindow(self.stable_window));
        }
        let delay = self.scale_down_delay;
        if delay.subsec_nanos() != 0 || delay > MAX_SCALE_DOWN_DELAY {
            return Err(Error::ScaleDownDelay(delay));
        }
        Ok(())
    }
}

/// One tick's decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Desired pods, before bounds and the scale-to-zero policy.
    pub desired: u32,
    /// Spare capacity beyond the target burst capacity; negative means the activator must stay in the path.
    pub excess_burst_capacity: i64,
    /// Whether the decider is in panic after this tick.
    pub panic: bool,
    /// What set `desired`.
    pub reason: Reason,
}

impl Decision {
    /// Whether the excess burst capacity asks for the activator in the request path (it is negative).
    pub fn needs_activator(&self) -> bool {
        self.excess_burst_capacity < 0
    }
}

/// What one tick produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A decision to apply.
    Decided(Decision),
    /// No decision: the previous one stays in force.
    Undecided(Undecided),
}

impl Outcome {
    /// The decision, if one was made.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Self::Decided(d) => Some(d),
            Self::Undecided(_) => None,
        }
    }

    /// The reason's kind, for metric labels.
    pub fn kind(&self) -> ReasonKind {
        match self {
            Self::Decided(d) => d.reason.kind(),
            Self::Undecided(u) => u.kind(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decided(d) => d.reason.fmt(f),
            Self::Undecided(u) => u.fmt(f),
        }
    }
}

/// One service's decider: its spec and the state carried from tick to tick (panic, scale-down delay).
#[derive(Debug, Clone, PartialEq)]
pub struct Decider {
    spec: DeciderSpec,
    /// The last tick over the panic threshold, while in panic.
    panic_since: Option<Timestamp>,
    /// The highest count of the current panic.
    max_panic_pods: u32,
    delay: Option<MaxWindow>,
}

/// One window's clamped result and why.
#[derive(Clone, Copy)]
struct Candidate {
    pods: u32,
    reason: Reason,
}

impl Decider {
    /// A decider created at `now` while `ready` pods are ready. With more than one ready pod it starts in
    /// panic holding that count, so that a restart (which loses the windows' history) never shrinks a scaled
    /// service before a stable window of fresh data.
    pub fn new(spec: DeciderSpec, now: Timestamp, ready: u32) -> Result<Self, Error> {
        spec.validate()?;
        let delay = (!spec.scale_down_delay.is_zero()).then(|| MaxWindow::new(spec.scale_down_delay));
        let start_in_panic = ready > 1;
        Ok(Self {
            spec,
            panic_since: start_in_panic.then_some(now),
            max_panic_pods: if start_in_panic { ready } else { 0 },
            delay,
        })
    }

    /// Applies a changed configuration; the panic state and the delay window's contents are kept.
    pub fn update(&mut self, spec: DeciderSpec) -> Result<(), Error> {
        spec.validate()?;
        match (&mut self.delay, spec.scale_down_delay.is_zero()) {
            (_, true) => self.delay = None,
            (Some(window), false) => window.set_delay(spec.scale_down_delay),
            (None, false) => self.delay = Some(MaxWindow::new(spec.scale_down_delay)),
        }
        self.spec = spec;
        Ok(())
    }

    /// The current spec.
    pub fn spec(&self) -> &DeciderSpec {
        &self.spec
    }

    /// Whether the decider is in panic.
    pub fn in_panic(&self) -> bool {
        self.panic_since.is_some()
    }

    /// The last tick over the panic threshold, while in panic.
    pub fn panic_since(&self) -> Option<Timestamp> {
        self.panic_since
    }

    /// Bytes of decider state (the struct and its delay window, if any).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.delay.as_ref().map_or(0, |w| w.memory_bytes() - std::mem::size_of::<MaxWindow>())
    }

    /// Decides at `now` from the ready pod count (`None`: could not be counted) and the window averages
    /// (`None`: no data). Non-finite averages count as no data; negative ones as zero.
    pub fn decide(&mut self, now: Timestamp, ready: Option<u32>, observed: Option<Observed>) -> Outcome {
        let Some(ready) = ready else {
            return Outcome::Undecided(Undecided::PodsUnknown);
        };
        let Some(observed) = observed.filter(|o| o.stable.is_finite() && o.panic.is_finite()) else {
            return Outcome::Undecided(Undecided::NoData);
        };
        let (stable_load, panic_load) = (observed.stable.max(0.0), observed.panic.max(0.0));
        let spec = &self.spec;
        let ready_f = f64::from(ready.max(1));
        // Always allow growth by at least one pod, whatever the rate (hence ceil).
        let max_up = (spec.max_scale_up_rate * ready_f).ceil();
        let max_down = if spec.reachable { (ready_f / spec.max_scale_down_rate).floor() } else { 0.0 };
        let stable_raw = (stable_load / spec.target).ceil();
        let panic_raw = (panic_load / spec.target).ceil();
        let stable = self.candidate(stable_raw, stable_load, max_up, max_down, ready_f, false);
        let panic = self.candidate(panic_raw, panic_load, max_up, max_down, ready_f, true);

        if panic_raw / ready_f >= spec.panic_threshold {
            // Enter panic, or restart its clock.
            self.panic_since = Some(now);
        } else if self.panic_since.is_some_and(|since| since + spec.stable_window < now) {
            // The surge has had a full stable window to reach the stable average.
            self.panic_since = None;
            self.max_panic_pods = 0;
        }

        let Candidate { pods: mut desired, mut reason } = stable;
        if self.panic_since.is_some() {
            // The stable window may see more than the panic window; provision for the larger.
            let larger = if panic.pods >= stable.pods { panic } else { stable };
            if larger.pods >= self.max_panic_pods {
                self.max_panic_pods = larger.pods;
                (desired, reason) = (larger.pods, larger.reason);
            } else {
                // Never scale down in panic.
                desired = self.max_panic_pods;
                reason = Reason::PanicHold { wanted: larger.pods, held: desired };
            }
        }

        if spec.reachable
            && let Some(window) = &mut self.delay
        {
            let held = window.record(now, desired);
            if held > desired {
                reason = Reason::ScaleDownDelay { wanted: desired, held, delay: spec.scale_down_delay };
                desired = held;
            }
        }

        let tbc = spec.target_burst_capacity;
        let excess_burst_capacity = if tbc == 0.0 {
            0
        } else if tbc > 0.0 {
            (f64::from(ready) * spec.total - tbc - panic_load).floor() as i64
        } else {
            -1
        };

        Outcome::Decided(Decision { desired, excess_burst_capacity, panic: self.in_panic(), reason })
    }

    /// Decides at `now` from a service's windows: [`Decider::decide`] with their averages at `now`.
    pub fn decide_from_windows(
        &mut self,
        now: Timestamp,
        ready: Option<u32>,
        windows: &MetricWindows,
    ) -> Outcome {
        self.decide(now, ready, windows.observe(now))
    }

    /// Clamps one window's raw count to the rate limits and applies the activation scale.
    fn candidate(
        &self,
        raw: f64,
        observed: f64,
        max_up: f64,
        max_down: f64,
        ready_f: f64,
        panic: bool,
    ) -> Candidate {
        let spec = &self.spec;
        // Float-to-int casts saturate, so absurd loads cannot wrap around.
        let ready = ready_f as u32;
        let mut pods = raw.max(max_down).min(max_up) as u32;
        let mut reason = if raw > max_up {
            Reason::ScaleUpLimited { wanted: raw as u32, limit: pods, rate: spec.max_scale_up_rate, ready }
        } else if raw < max_down {
            Reason::ScaleDownLimited {
                wanted: raw as u32,
                limit: pods,
                rate: spec.max_scale_down_rate,
                ready,
            }
        } else if panic {
            Reason::Panic { metric: spec.metric, observed, target: spec.target, ready, pods }
        } else {
            Reason::Stable { metric: spec.metric, observed, target: spec.target, pods }
        };
        if spec.activation_scale > 1 && raw > 0.0 && spec.activation_scale > pods {
            reason = Reason::ActivationScale { wanted: pods, activation_scale: spec.activation_scale };
            pods = spec.activation_scale;
        }
        Candidate { pods, reason }
    }
}
