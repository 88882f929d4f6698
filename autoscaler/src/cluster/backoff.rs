//! Per-service backoff for API writes: after a failed write the same kind of write waits, doubling from
//! [`FIRST`] up to [`MAX`], and a success resets it. A failure that is not the API server's answer (a
//! connection error, a timeout) also marks the API server unreachable, which holds every scale-down.

use std::time::{Duration, Instant};

use super::health::ApiHealth;

/// The wait after the first failure.
pub const FIRST: Duration = Duration::from_millis(500);
/// The longest wait.
pub const MAX: Duration = Duration::from_secs(30);

/// When the next write of one kind may be tried.
#[derive(Debug, Default)]
pub struct Backoff {
    retry_at: Option<Instant>,
    current: Duration,
}

impl Backoff {
    /// Whether a write may be tried now.
    pub fn ready(&self) -> bool {
        self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// A write failed with `err`: wait longer before the next.
    pub fn failed(&mut self, health: &ApiHealth, err: &kube::Error) {
        if !matches!(err, kube::Error::Api(_)) {
            health.failed();
        }
        self.current = (self.current * 2).clamp(FIRST, MAX);
        self.retry_at = Some(Instant::now() + self.current);
    }

    /// A write succeeded: the next may follow at once.
    pub fn succeeded(&mut self, health: &ApiHealth) {
        health.ok();
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error() -> kube::Error {
        kube::Error::Api(kube::core::Status::failure("conflict", "Conflict").with_code(409).boxed())
    }

    #[test]
    fn waits_double_up_to_the_cap_and_reset_on_success() {
        let health = ApiHealth::new(Duration::from_secs(10));
        health.ok();
        let mut backoff = Backoff::default();
        assert!(backoff.ready());
        let mut waits = Vec::new();
        for _ in 0..10 {
            backoff.failed(&health, &api_error());
            assert!(!backoff.ready());
            waits.push(backoff.current);
        }
        assert_eq!(waits[0], FIRST);
        assert_eq!(waits[1], FIRST * 2);
        assert_eq!(*waits.last().unwrap(), MAX);
        assert!(health.reachable(), "an answer from the API server is not an outage");
        backoff.succeeded(&health);
        assert!(backoff.ready());
        assert_eq!(backoff.current, Duration::ZERO);
    }
}
