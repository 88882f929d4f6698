//! The explicit time every decision takes, so that nothing in this crate reads a clock.

use std::fmt;
use std::ops::Add;
use std::time::Duration;

/// A point in time, as the time elapsed since an epoch the caller chooses (process start, the UNIX epoch, or
/// the start of a simulated trace). Only differences and whole seconds are used, so any epoch works as long
/// as one service's calls all use the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// The epoch itself.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// The time `since_epoch` after the epoch.
    pub const fn from_duration(since_epoch: Duration) -> Self {
        Self(since_epoch)
    }

    /// Whole seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// Milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// The time elapsed since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// The 1-second bucket this time falls in (seconds since the epoch, truncated).
    pub const fn whole_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// How long after `earlier` this is; zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(rhs))
    }
}

impl fmt::Display for Timestamp {
    /// Seconds since the epoch, with milliseconds when there are any: `12s`, `12.5s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.subsec_millis();
        if millis == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else {
            let frac = format!("{millis:03}");
            write!(f, "{}.{}s", self.0.as_secs(), frac.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_truncate_and_differences_saturate() {
        let t = Timestamp::from_millis(12_999);
        assert_eq!(t.whole_secs(), 12);
        assert_eq!(t.saturating_since(Timestamp::from_secs(10)), Duration::from_millis(2_999));
        assert_eq!(Timestamp::from_secs(10).saturating_since(t), Duration::ZERO);
        assert_eq!(Timestamp::from_secs(1) + Duration::from_secs(2), Timestamp::from_secs(3));
        assert_eq!(t.to_string(), "12.999s");
        assert_eq!(Timestamp::from_millis(1_500).to_string(), "1.5s");
        assert_eq!(Timestamp::from_secs(4).to_string(), "4s");
    }
}
