//! Whether the API server answers, as every part of the controller sees it: requests, watch events and Lease
//! renewals report to one [`ApiHealth`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ebb_process::sync::Locked;

/// Whether the API server answers: the last success is recent and no failure came after it. Scale-downs
/// wait while it does not (scale-ups do not): a view of the cluster that may be stale is good enough to add
/// capacity, not to take it away.
#[derive(Debug)]
pub struct ApiHealth {
    last_ok: Mutex<Option<Instant>>,
    last_failure: Mutex<Option<Instant>>,
    stale_after: Duration,
}

impl ApiHealth {
    /// Unreachable until the first success.
    pub fn new(stale_after: Duration) -> Self {
        Self { last_ok: Mutex::new(None), last_failure: Mutex::new(None), stale_after }
    }

    /// A request or watch event succeeded.
    pub fn ok(&self) {
        *self.last_ok.locked() = Some(Instant::now());
    }

    /// A request or watch failed.
    pub fn failed(&self) {
        *self.last_failure.locked() = Some(Instant::now());
    }

    /// Whether the API server answered recently and has not failed since.
    pub fn reachable(&self) -> bool {
        let ok = *self.last_ok.locked();
        let failure = *self.last_failure.locked();
        match ok {
            Some(ok) => ok.elapsed() < self.stale_after && failure.is_none_or(|f| f <= ok),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_unreachable_until_it_answers_after_a_failure_and_when_silent_too_long() {
        let health = ApiHealth::new(Duration::from_millis(200));
        assert!(!health.reachable(), "unknown at start: no scale-down");
        health.ok();
        assert!(health.reachable());
        health.failed();
        assert!(!health.reachable(), "a failure after the last success");
        health.ok();
        assert!(health.reachable());
        std::thread::sleep(Duration::from_millis(250));
        assert!(!health.reachable(), "silent for longer than stale_after");
    }
}
