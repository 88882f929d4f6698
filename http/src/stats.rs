//! Request statistics: time-weighted average concurrency and request counts, with the part that came through
//! the activator kept apart (the autoscaler subtracts it, since the activator reports that load itself).
//!
//! Concurrency is the integral of "requests inside" over time, divided by the period: a request that is queued
//! in the breaker counts, since it is load the pod has been asked to carry. Entering and leaving are O(1): the
//! integral is brought up to date and the count changed, under one short uncontended lock. Time is passed in
//! explicitly where it matters, so the arithmetic is testable without a clock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ebb_config::wire::PodStat;
use ebb_process::sync::Locked;

/// One period's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Snapshot {
    /// Time-weighted average of requests inside (queued or in flight) over the period.
    pub average_concurrency: f64,
    /// The same for requests that came through the activator.
    pub average_proxied_concurrency: f64,
    /// The part of `average_concurrency` that waited for a slot (entered with [`RequestStats::enter_queued`]
    /// and not yet [`StatsGuard::admitted`]).
    pub average_queued: f64,
    /// Requests that arrived during the period.
    pub request_count: u64,
    /// Requests that arrived through the activator during the period.
    pub proxied_request_count: u64,
    /// Length of the period.
    pub period: Duration,
}

/// Time-weighted request statistics. Cloning gives another handle to the same counters.
#[derive(Debug, Clone)]
pub struct RequestStats {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    period_start: Instant,
    last_change: Instant,
    concurrency: u64,
    proxied_concurrency: u64,
    queued: u64,
    /// Request-seconds accumulated this period up to `last_change`.
    integral: f64,
    proxied_integral: f64,
    queued_integral: f64,
    requests: u64,
    proxied_requests: u64,
}

impl State {
    fn advance(&mut self, now: Instant) {
        // A clock read by another thread just before ours may be slightly later; never go backwards.
        if now > self.last_change {
            let dt = (now - self.last_change).as_secs_f64();
            self.integral += self.concurrency as f64 * dt;
            self.proxied_integral += self.proxied_concurrency as f64 * dt;
            self.queued_integral += self.queued as f64 * dt;
            self.last_change = now;
        }
    }
}

impl RequestStats {
    /// Starts the first period at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                period_start: now,
                last_change: now,
                concurrency: 0,
                proxied_concurrency: 0,
                queued: 0,
                integral: 0.0,
                proxied_integral: 0.0,
                queued_integral: 0.0,
                requests: 0,
                proxied_requests: 0,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The lock guards plain arithmetic that cannot panic halfway; a poisoned lock still holds good data.
        self.inner.locked()
    }

    /// A request arrived now; it counts until the returned guard is dropped.
    pub fn enter(&self, proxied: bool) -> StatsGuard {
        self.enter_at(Instant::now(), proxied)
    }

    /// A request arrived now and waits for a slot: it also counts as queued until
    /// [`StatsGuard::admitted`] (or until it leaves).
    pub fn enter_queued(&self, proxied: bool) -> StatsGuard {
        self.enter_queued_at(Instant::now(), proxied)
    }

    /// A request arrived at `now`.
    pub fn enter_at(&self, now: Instant, proxied: bool) -> StatsGuard {
        self.enter_with(now, proxied, false)
    }

    /// A request arrived at `now` and waits for a slot.
    pub fn enter_queued_at(&self, now: Instant, proxied: bool) -> StatsGuard {
        self.enter_with(now, proxied, true)
    }

    fn enter_with(&self, now: Instant, proxied: bool, queued: bool) -> StatsGuard {
        let mut state = self.state();
        state.advance(now);
        state.concurrency += 1;
        state.requests += 1;
        state.queued += u64::from(queued);
        if proxied {
            state.proxied_concurrency += 1;
            state.proxied_requests += 1;
        }
        drop(state);
        StatsGuard { stats: Some(self.clone()), proxied, queued }
    }

    fn dequeue_at(&self, now: Instant) {
        let mut state = self.state();
        state.advance(now);
        state.queued = state.queued.saturating_sub(1);
    }

    fn leave_at(&self, now: Instant, proxied: bool, queued: bool) {
        let mut state = self.state();
        state.advance(now);
        state.concurrency = state.concurrency.saturating_sub(1);
        if queued {
            state.queued = state.queued.saturating_sub(1);
        }
        if proxied {
            state.proxied_concurrency = state.proxied_concurrency.saturating_sub(1);
        }
    }

    /// Requests inside right now.
    pub fn concurrency(&self) -> u64 {
        self.state().concurrency
    }

    /// Closes the period at `now`, returns its measurements and starts the next one.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut state = self.state();
        state.advance(now);
        let period = now.saturating_duration_since(state.period_start);
        let secs = period.as_secs_f64();
        let (average_concurrency, average_proxied_concurrency, average_queued) = if secs > 0.0 {
            (state.integral / secs, state.proxied_integral / secs, state.queued_integral / secs)
        } else {
            (state.concurrency as f64, state.proxied_concurrency as f64, state.queued as f64)
        };
        let snapshot = Snapshot {
            average_concurrency,
            average_proxied_concurrency,
            average_queued,
            request_count: state.requests,
            proxied_request_count: state.proxied_requests,
            period,
        };
        state.period_start = now.max(state.period_start);
        state.integral = 0.0;
        state.proxied_integral = 0.0;
        state.queued_integral = 0.0;
        state.requests = 0;
        state.proxied_requests = 0;
        snapshot
    }
}

/// Counts one request as inside until dropped. Move it into the response body so that a streamed response
/// counts until it ends.
#[derive(Debug)]
pub struct StatsGuard {
    stats: Option<RequestStats>,
    proxied: bool,
    queued: bool,
}

impl StatsGuard {
    /// Whether the request came through the activator.
    pub fn proxied(&self) -> bool {
        self.proxied
    }

    /// The request got its slot: it stops counting as queued (it still counts as inside).
    pub fn admitted(&mut self) {
        self.admitted_at(Instant::now());
    }

    /// [`Self::admitted`] at `now`.
    pub fn admitted_at(&mut self, now: Instant) {
        if std::mem::take(&mut self.queued)
            && let Some(stats) = &self.stats
        {
            stats.dequeue_at(now);
        }
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        if let Some(stats) = self.stats.take() {
            stats.leave_at(Instant::now(), self.proxied, self.queued);
        }
    }
}

/// Turns a snapshot into the wire format the autoscaler scrapes.
pub fn pod_stat(pod: &str, snapshot: &Snapshot, uptime: Duration, at: SystemTime) -> PodStat {
    PodStat {
        pod: pod.to_owned(),
        average_concurrency: snapshot.average_concurrency,
        average_proxied_concurrency: snapshot.average_proxied_concurrency,
        request_count: snapshot.request_count as f64,
        proxied_request_count: snapshot.proxied_request_count as f64,
        process_uptime_secs: uptime.as_secs_f64(),
        timestamp_ms: at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        average_queued: Some(snapshot.average_queued),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn average_is_the_time_weighted_integral() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        // One request for the whole second, one for the second half, one proxied for the last quarter.
        let a = stats.enter_at(t0, false);
        let b = stats.enter_at(t0 + 500 * MS, false);
        let c = stats.enter_at(t0 + 750 * MS, true);
        let snap = stats.snapshot(t0 + 1000 * MS);
        assert!((snap.average_concurrency - (1.0 + 0.5 + 0.25)).abs() < 1e-9, "{snap:?}");
        assert!((snap.average_proxied_concurrency - 0.25).abs() < 1e-9);
        assert_eq!((snap.request_count, snap.proxied_request_count), (3, 1));
        // Still inside in the next period: they count fully there, but are not new arrivals.
        let next = stats.snapshot(t0 + 2000 * MS);
        assert!((next.average_concurrency - 3.0).abs() < 1e-9);
        assert_eq!(next.request_count, 0);
        stats.leave_at(t0 + 2500 * MS, false, false);
        std::mem::forget(a);
        drop((b, c));
        assert_eq!(stats.concurrency(), 0);
    }

    #[test]
    fn steady_load_of_ten_one_second_requests_per_second_averages_ten() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        let mut leaves: Vec<(Instant, bool)> = Vec::new();
        let leave_until = |leaves: &mut Vec<(Instant, bool)>, now: Instant| {
            while leaves.first().is_some_and(|&(end, _)| end <= now) {
                let (end, proxied) = leaves.remove(0);
                stats.leave_at(end, proxied, false);
            }
        };
        // One request every 100 ms, each held 1 s: from t = 1 s on, exactly 10 are inside.
        for i in 0..30u32 {
            let start = t0 + i * 100 * MS;
            leave_until(&mut leaves, start);
            if i == 20 {
                stats.snapshot(start);
            }
            std::mem::forget(stats.enter_at(start, i % 2 == 0));
            leaves.push((start + 1000 * MS, i % 2 == 0));
        }
        leave_until(&mut leaves, t0 + 3000 * MS);
        let snap = stats.snapshot(t0 + 3000 * MS);
        assert!((snap.average_concurrency - 10.0).abs() < 1e-6, "{snap:?}");
        assert!((snap.average_proxied_concurrency - 5.0).abs() < 1e-6, "{snap:?}");
        assert_eq!((snap.request_count, snap.proxied_request_count), (10, 5));
    }

    #[test]
    fn queued_time_counts_until_admitted_or_gone() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        // Queued for 250 ms then served; queued for 500 ms then gone (a timeout or a client that left).
        let mut served = stats.enter_queued_at(t0, true);
        served.admitted_at(t0 + 250 * MS);
        served.admitted_at(t0 + 900 * MS); // a second call changes nothing
        let gave_up = stats.enter_queued_at(t0 + 250 * MS, false);
        let plain = stats.enter_at(t0 + 500 * MS, false);
        stats.leave_at(t0 + 750 * MS, false, true);
        std::mem::forget(gave_up);
        let snap = stats.snapshot(t0 + 1000 * MS);
        assert!((snap.average_queued - (0.25 + 0.5)).abs() < 1e-9, "{snap:?}");
        assert!((snap.average_concurrency - (1.0 + 0.5 + 0.5)).abs() < 1e-9, "{snap:?}");
        assert_eq!(snap.request_count, 3);
        drop((served, plain));
        let next = stats.snapshot(t0 + 2000 * MS);
        assert_eq!(next.average_queued, 0.0, "{next:?}");
        assert_eq!(stats.concurrency(), 0);
    }
    #[test]
    fn pod_stat_encodes() {
        let snap = Snapshot { average_concurrency: 1.5, request_count: 3, ..Default::default() };
        let stat = pod_stat("pod-a", &snap, Duration::from_secs(2), UNIX_EPOCH + Duration::from_millis(1234));
        let decoded = PodStat::decode(&stat.encode().unwrap()).unwrap();
        assert_eq!(decoded.timestamp_ms, 1234);
        assert_eq!(decoded.request_count, 3.0);
        assert_eq!(decoded.average_queued, Some(0.0));
    }
}
