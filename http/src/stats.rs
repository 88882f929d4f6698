//! Request statistics: time-weighted average concurrency and request counts, with the part that came through
//! the activator kept apart.
//!
//! Concurrency is the integral of "requests inside" over time, divided by the period: a request that is queued
//! in the breaker counts, since it is load the pod has been asked to carry. Entering and leaving are O(1): the
//! integral is brought up to date and the count changed, under one short uncontended lock. Time is passed in
//! explicitly where it matters, so the arithmetic is testable without a clock.
//!
//! Every measurement is of one wall-clock second ([`RequestStats::second_ending`] at [`last_whole_second`]):
//! the autoscaler adds up what the pods of a service and the activators report, and that sum means something
//! only when they all measured the same second. (Each process's own once-a-second period, as Knative's
//! queue-proxy and activator report, ends at a different moment in each: while load moved from one to
//! another, a pod just ready or an activator stepping out of the path, the sum counted the same requests in
//! both, and read up to 18.5 for 10 concurrent.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ebb_config::wire::PodStat;
use ebb_process::sync::Locked;

/// One second's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Snapshot {
    /// Time-weighted average of requests inside (queued or in flight) over the second.
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
    /// Requests entered as waiting for a slot ([`RequestStats::enter_queued`]) that got it during the period,
    /// whenever they arrived: what an activator forwarded.
    pub admitted_count: u64,
    /// How much of the period the stats measured (a second, less for stats younger than that); the averages
    /// are over the whole second.
    pub period: Duration,
}

/// Time-weighted request statistics. Cloning gives another handle to the same counters.
#[derive(Debug, Clone)]
pub struct RequestStats {
    inner: Arc<Mutex<State>>,
}

/// How far apart the marks a measured second starts and ends at are: the seconds of two processes end at most
/// this far apart.
const MARK_STEP: Duration = Duration::from_millis(100);
/// Marks kept: a second that ended up to a second ago (a read at any moment of the next second), and a step.
const MARKS: usize = 22;
/// What is measured.
const SECOND: Duration = Duration::from_secs(1);

/// Running totals since the start, never reset: a period or a window is the difference of two.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    /// Request-seconds inside (queued or in flight).
    integral: f64,
    proxied_integral: f64,
    queued_integral: f64,
    requests: u64,
    proxied_requests: u64,
    /// Requests that waited for a slot and got it.
    admitted: u64,
}

#[derive(Debug)]
struct State {
    last_change: Instant,
    concurrency: u64,
    proxied_concurrency: u64,
    queued: u64,
    /// The totals up to `last_change`.
    totals: Totals,
    /// The totals at every [`MARK_STEP`] since the start, the last [`MARKS`] of them, oldest first.
    marks: VecDeque<(Instant, Totals)>,
    next_mark: Instant,
}

impl State {
    /// Brings the totals up to `now`, marking each step passed on the way.
    fn advance(&mut self, now: Instant) {
        // A clock read by another thread just before ours may be slightly later; never go backwards.
        if now <= self.last_change {
            return;
        }
        if now >= self.next_mark {
            self.mark_until(now);
        }
        self.integrate(now);
    }

    /// Marks every step up to `now` (once in [`MARK_STEP`] at most: requests in between only integrate).
    fn mark_until(&mut self, now: Instant) {
        // After a quiet spell only the last marks are kept anyway, and the counts were constant meanwhile.
        let steps = (now - self.next_mark).as_nanos() / MARK_STEP.as_nanos();
        if let Some(skipped) = steps.checked_sub(MARKS as u128) {
            let skip =
                Duration::from_nanos(u64::try_from(skipped * MARK_STEP.as_nanos()).unwrap_or(u64::MAX));
            self.next_mark = self.next_mark.checked_add(skip).unwrap_or(now);
        }
        while self.next_mark <= now {
            self.integrate(self.next_mark);
            if self.marks.len() == MARKS {
                self.marks.pop_front();
            }
            self.marks.push_back((self.next_mark, self.totals));
            self.next_mark += MARK_STEP;
        }
    }

    /// The measurements between two marks, as averages over one second: a second is all they ever span, but
    /// for stats younger than that, which had nothing before they started.
    fn measure((start, then): (Instant, Totals), (end, totals): (Instant, Totals)) -> Snapshot {
        let average = |now: f64, then: f64| (now - then).max(0.0) / SECOND.as_secs_f64();
        Snapshot {
            average_concurrency: average(totals.integral, then.integral),
            average_proxied_concurrency: average(totals.proxied_integral, then.proxied_integral),
            average_queued: average(totals.queued_integral, then.queued_integral),
            request_count: totals.requests - then.requests,
            proxied_request_count: totals.proxied_requests - then.proxied_requests,
            admitted_count: totals.admitted - then.admitted,
            period: end.saturating_duration_since(start),
        }
    }

    /// Adds the time from `last_change` to `to` at the current counts.
    fn integrate(&mut self, to: Instant) {
        if to > self.last_change {
            let dt = (to - self.last_change).as_secs_f64();
            self.totals.integral += self.concurrency as f64 * dt;
            self.totals.proxied_integral += self.proxied_concurrency as f64 * dt;
            self.totals.queued_integral += self.queued as f64 * dt;
            self.last_change = to;
        }
    }
}

impl RequestStats {
    /// Starts counting at `now`.
    pub fn new(now: Instant) -> Self {
        let mut marks = VecDeque::with_capacity(MARKS);
        marks.push_back((now, Totals::default()));
        Self {
            inner: Arc::new(Mutex::new(State {
                last_change: now,
                concurrency: 0,
                proxied_concurrency: 0,
                queued: 0,
                totals: Totals::default(),
                marks,
                next_mark: now + MARK_STEP,
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
        state.totals.requests += 1;
        state.queued += u64::from(queued);
        if proxied {
            state.proxied_concurrency += 1;
            state.totals.proxied_requests += 1;
        }
        drop(state);
        StatsGuard { stats: Some(self.clone()), proxied, queued }
    }

    fn dequeue_at(&self, now: Instant) {
        let mut state = self.state();
        state.advance(now);
        state.queued = state.queued.saturating_sub(1);
        state.totals.admitted += 1;
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

    /// The measurements of the second that ends at the last mark at or before `end` (at most [`MARK_STEP`]
    /// before it). Reading changes nothing, so any number of readers may ask.
    pub fn second_ending(&self, end: Instant) -> Snapshot {
        let mut state = self.state();
        state.advance(end);
        let marks = &state.marks;
        let Some(last) = marks.iter().rposition(|(at, _)| *at <= end) else { return Snapshot::default() };
        let to = marks[last];
        let from = marks.iter().take(last + 1).rev().find(|(at, _)| *at + SECOND <= to.0);
        State::measure(*from.or(marks.front()).unwrap_or(&to), to)
    }
}

/// The last whole second of the wall clock at `now` (whose wall-clock time is `wall`): the moment it ended, on
/// `now`'s clock and on the wall clock. Every process measures this second, so that what they report adds up.
pub fn last_whole_second(now: Instant, wall: SystemTime) -> (Instant, SystemTime) {
    let into = wall
        .duration_since(UNIX_EPOCH)
        .map(|d| Duration::from_nanos(d.subsec_nanos().into()))
        .unwrap_or_default();
    (now.checked_sub(into).unwrap_or(now), wall.checked_sub(into).unwrap_or(wall))
}

/// Ticks every `period` at `offset` past the wall clock's whole seconds (a late tick delays the next rather
/// than bunching them): the rhythm of whoever reports or reads [`last_whole_second`].
pub fn every_wall_second(offset: Duration, period: Duration) -> tokio::time::Interval {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let next = last_whole_second(now, wall).0 + SECOND;
    let first = tokio::time::Instant::now() + (next - now) + offset;
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
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
        let snap = stats.second_ending(t0 + 1000 * MS);
        assert!((snap.average_concurrency - (1.0 + 0.5 + 0.25)).abs() < 1e-9, "{snap:?}");
        assert!((snap.average_proxied_concurrency - 0.25).abs() < 1e-9);
        assert_eq!((snap.request_count, snap.proxied_request_count), (3, 1));
        // Still inside in the next period: they count fully there, but are not new arrivals.
        let next = stats.second_ending(t0 + 2000 * MS);
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
            std::mem::forget(stats.enter_at(start, i % 2 == 0));
            leaves.push((start + 1000 * MS, i % 2 == 0));
        }
        leave_until(&mut leaves, t0 + 3000 * MS);
        let snap = stats.second_ending(t0 + 3000 * MS);
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
        let snap = stats.second_ending(t0 + 1000 * MS);
        assert!((snap.average_queued - (0.25 + 0.5)).abs() < 1e-9, "{snap:?}");
        assert!((snap.average_concurrency - (1.0 + 0.5 + 0.5)).abs() < 1e-9, "{snap:?}");
        assert_eq!((snap.request_count, snap.admitted_count), (3, 1), "one of the two queued got its slot");
        drop((served, plain));
        let next = stats.second_ending(t0 + 2000 * MS);
        assert_eq!(next.average_queued, 0.0, "{next:?}");
        assert_eq!(stats.concurrency(), 0);
    }
    #[test]
    fn processes_measuring_one_second_add_up() {
        // Two pods whose stats started 650 ms apart; 10 requests inside the first until 2 s, then inside the
        // second. Their own once-a-second periods ([1, 2] s and [1.65, 2.65] s) held 10 + 6.5 requests, more
        // than were ever inside at once; the second ending at 2.7 s holds 3 + 6.5 (the second pod's marks
        // fall 50 ms before the first's).
        let t0 = Instant::now();
        let (a, b) = (RequestStats::new(t0), RequestStats::new(t0 + 650 * MS));
        let moved = t0 + 2000 * MS;
        for _ in 0..10 {
            std::mem::forget(a.enter_at(t0, false));
        }
        (0..10).for_each(|_| a.leave_at(moved, false, false));
        (0..10).for_each(|_| std::mem::forget(b.enter_at(moved, false)));
        let own_periods =
            a.second_ending(moved).average_concurrency + b.second_ending(t0 + 2650 * MS).average_concurrency;
        assert!((own_periods - 16.5).abs() < 1e-6, "what each process's own period held: {own_periods}");

        let end = t0 + 2700 * MS;
        let (first, second) = (a.second_ending(end), b.second_ending(end));
        assert!((first.average_concurrency - 3.0).abs() < 1e-6, "{first:?}");
        assert!((second.average_concurrency - 6.5).abs() < 1e-6, "{second:?}");
        assert_eq!((first.period, second.period), (1000 * MS, 1000 * MS));
        assert_eq!((first.request_count, second.request_count), (0, 10));
        // Reading changes nothing: the same second reads the same, before and after a later one.
        assert_eq!(a.second_ending(t0 + 3000 * MS).average_concurrency, 0.0);
        assert_eq!(a.second_ending(end), first);
    }

    #[test]
    fn a_second_after_a_quiet_minute_and_before_the_first() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        let early = stats.enter_at(t0, false);
        // Younger than a second: nothing before the start.
        let young = stats.second_ending(t0 + 400 * MS);
        assert!((young.average_concurrency - 0.4).abs() < 1e-9, "{young:?}");
        assert_eq!((young.period, young.request_count), (400 * MS, 1));
        drop(early);
        // A minute without a request, then 5 arrive at 60.5 s and stay: half of the second to 61 s.
        let burst = t0 + 60_500 * MS;
        let inside: Vec<_> = (0..5).map(|_| stats.enter_at(burst, false)).collect();
        let snap = stats.second_ending(t0 + 61_000 * MS);
        assert!((snap.average_concurrency - 2.5).abs() < 1e-6, "{snap:?}");
        assert_eq!((snap.request_count, snap.period), (5, 1000 * MS));
        // Between marks, the second ends at the last one; a second that ended a second before is still there.
        assert_eq!(stats.second_ending(t0 + 61_050 * MS), snap);
        let later = stats.second_ending(t0 + 62_000 * MS);
        assert!((later.average_concurrency - 5.0).abs() < 1e-6, "{later:?}");
        assert_eq!(stats.second_ending(t0 + 61_000 * MS).period, 1000 * MS);
        drop(inside);
    }

    #[test]
    fn the_last_whole_second_of_the_wall_clock() {
        let now = Instant::now() + 10_000 * MS;
        let wall = UNIX_EPOCH + 1_234_567 * MS;
        assert_eq!(last_whole_second(now, wall), (now - 567 * MS, UNIX_EPOCH + 1_234_000 * MS));
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
