//! Restart backoff for one service's pods, like Kubernetes' CrashLoopBackOff: after a pod dies or cannot start,
//! the next start waits 100 ms, doubling with every failure in a row up to 10 s. A pod that stayed ready for
//! [`RESET_AFTER`] before it died starts the count again. From [`BLOCKED_AFTER`] failures in a row, while
//! the service waits out a delay, its pods are reported blocked so that queued requests fail at once with the
//! reason instead of waiting out their activation timeout.
//!
//! Pure: every method takes `now`.

use std::time::{Duration, Instant};

/// The first delay.
pub const INITIAL: Duration = Duration::from_millis(100);
/// The longest delay.
pub const MAX: Duration = Duration::from_secs(10);
/// A pod ready for this long before it died was healthy: the failures before it are forgotten.
pub const RESET_AFTER: Duration = Duration::from_secs(30);
/// Failures in a row after which a waiting service is reported blocked (one crash may be bad luck).
pub const BLOCKED_AFTER: u32 = 3;

/// Why a pod failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Its process exited.
    Crashed,
    /// It could not be started (no free address, spawn failure).
    StartFailed,
}

/// One service's failures and the delay they impose.
#[derive(Debug, Default)]
pub struct Backoff {
    in_a_row: u32,
    total: u64,
    until: Option<Instant>,
    last: Option<(Failure, String)>,
}

impl Backoff {
    /// Records a failure; `ready_for` is how long the failed pod had been ready. Returns the delay before the
    /// next start.
    pub fn failed(
        &mut self,
        now: Instant,
        failure: Failure,
        reason: String,
        ready_for: Option<Duration>,
    ) -> Duration {
        if ready_for.is_some_and(|d| d >= RESET_AFTER) {
            self.in_a_row = 0;
        }
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.total += 1;
        let delay = INITIAL.saturating_mul(1 << (self.in_a_row - 1).min(16)).min(MAX);
        self.until = Some(now + delay);
        self.last = Some((failure, reason));
        delay
    }

    /// When the next start may happen, while that is later than `now`.
    pub fn waiting(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|until| *until > now)
    }

    /// Why the service's pods cannot start, while it waits after [`BLOCKED_AFTER`] failures in a row.
    pub fn blocked(&self, now: Instant) -> Option<String> {
        self.waiting(now)?;
        if self.in_a_row < BLOCKED_AFTER {
            return None;
        }
        let (failure, reason) = self.last.as_ref()?;
        let kind = match failure {
            Failure::Crashed => "CrashLoopBackOff",
            Failure::StartFailed => "StartError",
        };
        Some(format!("{kind}: {reason} ({} times in a row)", self.in_a_row))
    }

    /// Every failure so far (the RESTARTS of `kubectl get pods`, summed over the service).
    pub fn restarts(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_after_a_healthy_pod() {
        let mut b = Backoff::default();
        let now = Instant::now();
        let delays: Vec<u64> =
            (0..10).map(|_| b.failed(now, Failure::Crashed, "x".into(), None).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        // Ready, but not long enough: the count goes on.
        assert_eq!(b.failed(now, Failure::Crashed, "x".into(), Some(Duration::from_secs(1))), MAX);
        assert_eq!(b.failed(now, Failure::Crashed, "x".into(), Some(RESET_AFTER)), INITIAL);
        assert_eq!(b.restarts(), 12);
    }

    #[test]
    fn blocked_after_failures_in_a_row_while_waiting() {
        let mut b = Backoff::default();
        let now = Instant::now();
        for _ in 0..BLOCKED_AFTER - 1 {
            b.failed(now, Failure::Crashed, "`false` exited with status 1".into(), None);
            assert_eq!(b.blocked(now), None);
        }
        let delay = b.failed(now, Failure::Crashed, "`false` exited with status 1".into(), None);
        assert_eq!(
            b.blocked(now).as_deref(),
            Some("CrashLoopBackOff: `false` exited with status 1 (3 times in a row)")
        );
        assert_eq!(b.waiting(now), Some(now + delay));
        // Once the delay is over a new pod starts, and it is not blocked.
        assert_eq!(b.blocked(now + delay), None);
        assert_eq!(b.waiting(now + delay), None);
        b.failed(now, Failure::StartFailed, "no free address".into(), None);
        assert!(b.blocked(now).is_some_and(|r| r.starts_with("StartError: no free address")));
    }
}
