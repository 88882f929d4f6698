//! Graceful drain. On SIGTERM readiness fails at once, but requests in flight and requests still arriving are
//! served: the endpoints that route here take a while to notice. (Only the process's own signal starts it; the
//! admin port's `/wait-for-drain` waits for the end and starts nothing.)
//! The proxy exits once nothing has been in flight for a quiet period since the last arrival, or at the drain
//! deadline, whichever is first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Nothing in flight and the quiet period passed.
    Quiet,
    /// The drain deadline was reached first.
    Deadline,
}

/// Drain state shared by the data plane (which records arrivals), the admin endpoints and the main task.
#[derive(Debug)]
pub struct Drainer {
    base: Instant,
    /// Nanoseconds after `base` of the latest arrival.
    last_arrival: AtomicU64,
    draining: watch::Sender<bool>,
    drained: watch::Sender<bool>,
}

impl Default for Drainer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drainer {
    /// Not draining.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            last_arrival: AtomicU64::new(0),
            draining: watch::Sender::new(false),
            drained: watch::Sender::new(false),
        }
    }

    /// Starts draining (idempotent): readiness fails from now on.
    pub fn start(&self) {
        self.touch(Instant::now());
        self.draining.send_if_modified(|draining| !std::mem::replace(draining, true));
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Records an arrival at `now`.
    pub fn touch(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.base).as_nanos() as u64;
        self.last_arrival.fetch_max(nanos, Ordering::Relaxed);
    }

    fn last_arrival(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_arrival.load(Ordering::Relaxed))
    }

    /// Waits until `in_flight()` is zero and `quiet` has passed since the last arrival (or since draining
    /// started), or until `deadline`.
    pub async fn wait_quiet(
        &self,
        in_flight: impl Fn() -> u64,
        quiet: Duration,
        deadline: Instant,
    ) -> DrainOutcome {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return DrainOutcome::Deadline;
            }
            let quiet_at = crate::timeouts::deadline_after(self.last_arrival(), quiet);
            let busy = in_flight() > 0;
            if !busy && now >= quiet_at {
                return DrainOutcome::Quiet;
            }
            let next = if busy { now + Duration::from_millis(20) } else { quiet_at };
            tokio::time::sleep_until(next.min(deadline)).await;
        }
    }

    /// Records that the drain is complete (wakes `/wait-for-drain`).
    pub fn mark_drained(&self) {
        self.drained.send_replace(true);
    }

    /// Resolves once the drain is complete.
    pub async fn drained(&self) {
        let mut rx = self.drained.subscribe();
        let _ = rx.wait_for(|drained| *drained).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[tokio::test(start_paused = true)]
    async fn waits_for_in_flight_then_quiet_period_and_restarts_on_arrivals() {
        let drainer = Drainer::new();
        let in_flight = AtomicU64::new(1);
        drainer.start();
        assert!(drainer.is_draining());
        let start = Instant::now();
        let deadline = start + Duration::from_secs(60);
        let wait = drainer.wait_quiet(|| in_flight.load(Ordering::Relaxed), Duration::from_secs(5), deadline);
        let drive = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drainer.touch(Instant::now()); // a new arrival at t = 3 s
            tokio::time::sleep(Duration::from_secs(4)).await;
            in_flight.store(0, Ordering::Relaxed); // everything done at t = 7 s
        };
        let (outcome, ()) = tokio::join!(wait, drive);
        assert_eq!(outcome, DrainOutcome::Quiet);
        // Quiet from the arrival at 3 s plus 5 s, and nothing in flight after 7 s: done at 8 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(8) && took < Duration::from_millis(8100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_wins_over_stuck_requests() {
        let drainer = Drainer::new();
        drainer.start();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(drainer.wait_quiet(|| 1, Duration::from_secs(1), deadline).await, DrainOutcome::Deadline);
    }
}
