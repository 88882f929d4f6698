//! The library's error type: inputs the decision core refuses, each worded so a caller can act on it.

use std::time::Duration;

/// Why a window, decider or policy could not be built, or a stat was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A stable window outside 1 s to 1 h, or not a whole number of seconds.
    #[error("the stable window must be a whole number of seconds between 1s and 1h, got {0:?}")]
    StableWindow(Duration),
    /// A panic window longer than the stable window, shorter than 1 s, or with a fraction of a second.
    #[error(
        "the panic window must be a whole number of seconds between 1s and the stable window {stable:?}, got {panic:?}"
    )]
    PanicWindow {
        /// The panic window asked for.
        panic: Duration,
        /// The stable window it must fit in.
        stable: Duration,
    },
    /// A scale-down delay over 1 h or with a fraction of a second.
    #[error("the scale-down delay must be a whole number of seconds up to 1h, got {0:?}")]
    ScaleDownDelay(Duration),
    /// A numeric setting outside its range.
    #[error("{name} must be {expected}, got {value}")]
    Setting {
        /// The setting, in annotation spelling.
        name: &'static str,
        /// The accepted range, as a phrase.
        expected: &'static str,
        /// The value given.
        value: f64,
    },
    /// A metric value that is negative, infinite or not a number.
    #[error("a metric value must be finite and non-negative, got {0}")]
    MetricValue(f64),
}
