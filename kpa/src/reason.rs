//! Why a decision came out as it did: a value for logs (its `Display` is a sentence with the numbers that
//! mattered) and a [`ReasonKind`] for metric labels.

use std::fmt;
use std::time::Duration;

use ebb_config::Metric;

/// What set a decision's desired pod count: the last rule that changed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// The stable window's average over the per-pod target.
    Stable {
        /// The scaling metric.
        metric: Metric,
        /// Observed stable-window load, service total.
        observed: f64,
        /// Per-pod target.
        target: f64,
        /// `ceil(observed / target)`.
        pods: u32,
    },
    /// In panic, the panic window's average over the per-pod target (over the panic threshold this tick, or
    /// still higher than the stable result).
    Panic {
        /// The scaling metric.
        metric: Metric,
        /// Observed panic-window load, service total.
        observed: f64,
        /// Per-pod target.
        target: f64,
        /// Ready pods the load was compared with (at least 1).
        ready: u32,
        /// `ceil(observed / target)`.
        pods: u32,
    },
    /// The load wanted more than `max-scale-up-rate` allows in one step.
    ScaleUpLimited {
        /// What the load asked for.
        wanted: u32,
        /// `ceil(max-scale-up-rate x max(1, ready))`.
        limit: u32,
        /// The rate.
        rate: f64,
        /// Ready pods (at least 1).
        ready: u32,
    },
    /// The load wanted fewer than `max-scale-down-rate` allows in one step.
    ScaleDownLimited {
        /// What the load asked for.
        wanted: u32,
        /// `floor(max(1, ready) / max-scale-down-rate)`.
        limit: u32,
        /// The rate.
        rate: f64,
        /// Ready pods (at least 1).
        ready: u32,
    },
    /// A non-zero count was lifted to `activation-scale`.
    ActivationScale {
        /// What the load asked for.
        wanted: u32,
        /// The activation scale.
        activation_scale: u32,
    },
    /// In panic the count never goes down: this is the highest count of the current panic.
    PanicHold {
        /// What the load asked for.
        wanted: u32,
        /// The count held.
        held: u32,
    },
    /// A scale-down waits for `scale-down-delay`: this is the highest count within it.
    ScaleDownDelay {
        /// What the load asked for.
        wanted: u32,
        /// The count held.
        held: u32,
        /// The delay.
        delay: Duration,
    },
}

/// Why a tick made no decision (the last one stays in force: never scale on missing data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecided {
    /// No stat within the last stable window.
    NoData,
    /// The ready pod count could not be read.
    PodsUnknown,
}

/// The kind of a [`Reason`] or [`Undecided`], for metric labels and CSV columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonKind {
    /// [`Reason::Stable`].
    Stable,
    /// [`Reason::Panic`].
    Panic,
    /// [`Reason::ScaleUpLimited`].
    ScaleUpLimited,
    /// [`Reason::ScaleDownLimited`].
    ScaleDownLimited,
    /// [`Reason::ActivationScale`].
    ActivationScale,
    /// [`Reason::PanicHold`].
    PanicHold,
    /// [`Reason::ScaleDownDelay`].
    ScaleDownDelay,
    /// [`Undecided::NoData`].
    NoData,
    /// [`Undecided::PodsUnknown`].
    PodsUnknown,
}

impl ReasonKind {
    /// The label value: `stable`, `panic`, `scale_up_limited`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Panic => "panic",
            Self::ScaleUpLimited => "scale_up_limited",
            Self::ScaleDownLimited => "scale_down_limited",
            Self::ActivationScale => "activation_scale",
            Self::PanicHold => "panic_hold",
            Self::ScaleDownDelay => "scale_down_delay",
            Self::NoData => "no_data",
            Self::PodsUnknown => "pods_unknown",
        }
    }
}

impl fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    /// The kind, for metric labels.
    pub const fn kind(&self) -> ReasonKind {
        match self {
            Self::Stable { .. } => ReasonKind::Stable,
            Self::Panic { .. } => ReasonKind::Panic,
            Self::ScaleUpLimited { .. } => ReasonKind::ScaleUpLimited,
            Self::ScaleDownLimited { .. } => ReasonKind::ScaleDownLimited,
            Self::ActivationScale { .. } => ReasonKind::ActivationScale,
            Self::PanicHold { .. } => ReasonKind::PanicHold,
            Self::ScaleDownDelay { .. } => ReasonKind::ScaleDownDelay,
        }
    }
}

impl Undecided {
    /// The kind, for metric labels.
    pub const fn kind(&self) -> ReasonKind {
        match self {
            Self::NoData => ReasonKind::NoData,
            Self::PodsUnknown => ReasonKind::PodsUnknown,
        }
    }
}

/// `70` rather than `70.0`; at most two decimals otherwise (`12.35`).
pub(crate) struct Num(pub f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rounded = (self.0 * 100.0).round() / 100.0;
        if rounded.fract() == 0.0 && rounded.abs() < 1e15 {
            write!(f, "{}", rounded as i64)
        } else {
            let text = format!("{rounded:.2}");
            f.write_str(text.trim_end_matches('0'))
        }
    }
}

/// `1 pod`, `3 pods`.
pub(crate) struct Pods(pub u32);

impl fmt::Display for Pods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pod{}", self.0, if self.0 == 1 { "" } else { "s" })
    }
}

fn unit(metric: Metric) -> &'static str {
    match metric {
        Metric::Concurrency => "concurrent",
        Metric::Rps => "rps",
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Stable { metric, observed, target, pods } => write!(
                f,
                "stable: {} {} at target {} per pod -> {}",
                Num(observed),
                unit(metric),
                Num(target),
                Pods(pods)
            ),
            Self::Panic { metric, observed, target, ready, pods } => write!(
                f,
                "panic: {} {} over target {} x {} -> {}",
                Num(observed),
                unit(metric),
                Num(target),
                Pods(ready),
                Pods(pods)
            ),
            Self::ScaleUpLimited { wanted, limit, rate, ready } => write!(
                f,
                "scale-up limited: load wants {}, max-scale-up-rate {} x {} ready allows {}",
                Pods(wanted),
                Num(rate),
                ready,
                limit
            ),
            Self::ScaleDownLimited { wanted, limit, rate, ready } => write!(
                f,
                "scale-down limited: load wants {}, {} ready / max-scale-down-rate {} keeps {}",
                Pods(wanted),
                ready,
                Num(rate),
                limit
            ),
            Self::ActivationScale { wanted, activation_scale } => {
                write!(f, "activation-scale: load wants {}, lifted to {}", Pods(wanted), activation_scale)
            }
            Self::PanicHold { wanted, held } => {
                write!(f, "panic hold: load wants {}, keeping {} (highest of this panic)", Pods(wanted), held)
            }
            Self::ScaleDownDelay { wanted, held, delay } => write!(
                f,
                "scale-down-delay {}s: load wants {}, keeping {}",
                delay.as_secs(),
                Pods(wanted),
                held
            ),
        }
    }
}

impl fmt::Display for Undecided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoData => {
                f.write_str("no data: no stat within the stable window, keeping the last decision")
            }
            Self::PodsUnknown => {
                f.write_str("pods unknown: ready pods could not be counted, keeping the last decision")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_sentences_with_their_numbers() {
        let panic =
            Reason::Panic { metric: Metric::Concurrency, observed: 210.0, target: 70.0, ready: 1, pods: 3 };
        assert_eq!(panic.to_string(), "panic: 210 concurrent over target 70 x 1 pod -> 3 pods");
        assert_eq!(panic.kind().as_str(), "panic");
        let stable = Reason::Stable { metric: Metric::Rps, observed: 12.346, target: 140.0, pods: 1 };
        assert_eq!(stable.to_string(), "stable: 12.35 rps at target 140 per pod -> 1 pod");
        let up = Reason::ScaleUpLimited { wanted: 30, limit: 2, rate: 1.5, ready: 1 };
        assert_eq!(
            up.to_string(),
            "scale-up limited: load wants 30 pods, max-scale-up-rate 1.5 x 1 ready allows 2"
        );
        assert_eq!(Undecided::NoData.kind().to_string(), "no_data");
    }
}
