//! The KPA autoscaler's decision core, with Knative Serving's semantics (`docs/architecture.md`, "Autoscaling
//! decisions (KPA)"):
//!
//! - [`window`]: per-second buckets of observed load and their stable and panic window averages;
//! - [`decider`]: one decision per tick, from observed load and ready pods to a desired pod count;
//! - [`policy`]: bounds and scale-to-zero on top of the decider, as a state machine with named phases;
//! - [`reason`]: why each decision came out as it did, for logs and metric labels.
//!
//! Everything here is a pure function of its inputs: nothing reads a clock (every call takes an explicit
//! [`Timestamp`]), does I/O or spawns tasks, so the same code runs in the autoscaler, in `ebb simulate` and
//! in tests with simulated time. The autoscaler's engine drives it: it collects stats, reads the clock and
//! passes `now` in.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod decider;
mod delay;
mod error;
pub mod policy;
pub mod reason;
mod time;
pub mod window;

pub use decider::{Decider, DeciderSpec, Decision, Outcome};
pub use error::Error;
pub use policy::{Phase, PolicyInput, PolicyOutput, PolicyReason, PolicySpec, ScalePolicy};
pub use reason::{Reason, ReasonKind, Undecided};
pub use time::Timestamp;
pub use window::{MetricWindows, Observed};

/// How often the autoscaler decides for each service (Knative's tick interval); also the bucket width of the
/// scale-down-delay window.
pub const TICK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
