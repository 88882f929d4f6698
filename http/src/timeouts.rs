//! The request timeouts the queue-proxy owns: total (from arrival to the end of the response body, queueing
//! included), response-start (from arrival to the response headers) and idle (the longest time the upstream
//! sends nothing: from forwarding the request to the headers, then between response body chunks, as Knative
//! counts it). Before the response starts they end in a 504; after, the stream is cut, since the status has
//! been sent. A fourth watches the client: the request body (the longest time the client sends nothing while
//! its body is still coming, nginx's `client_body_timeout`), answered 408.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ebb_config::value::MAX_DURATION;
use tokio::time::{Instant, Sleep};

/// `start + after`, saturating: configuration caps durations at a year, but a deadline must never panic.
pub fn deadline_after(start: Instant, after: Duration) -> Instant {
    start.checked_add(after).or_else(|| start.checked_add(MAX_DURATION)).unwrap_or(start)
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// The whole request took longer than the total timeout (including time queued for a slot).
    Total,
    /// The response did not start in time.
    ResponseStart,
    /// The upstream sent nothing (no headers, then no body chunk) for longer than the idle timeout.
    Idle,
    /// The client sent nothing for longer than the request-body timeout while its body was still coming.
    RequestBody,
}

impl TimeoutKind {
    /// Every kind, for initialising metric series.
    pub const ALL: [TimeoutKind; 4] =
        [TimeoutKind::Total, TimeoutKind::ResponseStart, TimeoutKind::Idle, TimeoutKind::RequestBody];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            TimeoutKind::Total => "total",
            TimeoutKind::ResponseStart => "response_start",
            TimeoutKind::Idle => "idle",
            TimeoutKind::RequestBody => "request_body",
        }
    }
}

/// The timeouts of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From arrival to the end of the response.
    pub total: Duration,
    /// From arrival to the response headers; capped by `total`.
    pub response_start: Duration,
    /// Longest time the upstream may send nothing, from forwarding on; `None` is off.
    pub idle: Option<Duration>,
    /// Longest time the client may send nothing while its request body is still coming; `None` is off.
    pub request_body: Option<Duration>,
}

impl Timeouts {
    /// The deadline for the whole request that arrived at `start`.
    pub fn total_deadline(&self, start: Instant) -> Instant {
        deadline_after(start, self.total)
    }

    /// The deadline for the response headers and which timeout it stands for. It also bounds the wait for a
    /// concurrency slot: a request that got a slot only after this would be answered 504 at once.
    pub fn response_start_deadline(&self, start: Instant) -> (Instant, TimeoutKind) {
        if self.response_start < self.total {
            (deadline_after(start, self.response_start), TimeoutKind::ResponseStart)
        } else {
            (self.total_deadline(start), TimeoutKind::Total)
        }
    }

    /// The deadline for the response headers of a request that arrived at `start` and was sent upstream at
    /// `forwarded`: the response-start deadline, or the idle timeout counted from forwarding if that is
    /// earlier. The idle clock starts at forwarding, not arrival: time queued for a slot is not the upstream
    /// being silent, and the total and response-start timeouts already bound it.
    pub fn header_deadline(&self, start: Instant, forwarded: Instant) -> (Instant, TimeoutKind) {
        let (deadline, kind) = self.response_start_deadline(start);
        match self.idle.map(|idle| deadline_after(forwarded, idle)) {
            Some(idle_at) if idle_at < deadline => (idle_at, TimeoutKind::Idle),
            _ => (deadline, kind),
        }
    }
}

/// Watches a response body for the total and idle timeouts. The timer is armed only when the body has to
/// wait for data, so a response whose body is already at hand costs no timer at all.
#[derive(Debug)]
pub struct BodyTimer {
    total_deadline: Instant,
    idle: Option<Duration>,
    last_progress: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl BodyTimer {
    /// A timer for a body that must end by `total_deadline` and never pause longer than `idle`.
    pub fn new(total_deadline: Instant, idle: Option<Duration>) -> Self {
        Self { total_deadline, idle, last_progress: None, sleep: None }
    }

    /// Records that a chunk arrived (restarts the idle clock).
    pub fn progress(&mut self) {
        if self.idle.is_some() {
            self.last_progress = Some(Instant::now());
            // Re-armed lazily at the next wait.
            let deadline = self.next_deadline();
            if let Some(sleep) = &mut self.sleep {
                sleep.as_mut().reset(deadline);
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        match (self.idle, self.last_progress) {
            (Some(idle), Some(last)) => deadline_after(last, idle).min(self.total_deadline),
            (Some(idle), None) => deadline_after(Instant::now(), idle).min(self.total_deadline),
            _ => self.total_deadline,
        }
    }

    /// Called while the body waits for data: `Ready(kind)` once a timeout has passed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<TimeoutKind> {
        if self.sleep.is_none() {
            if self.idle.is_some() && self.last_progress.is_none() {
                self.last_progress = Some(Instant::now());
            }
            let deadline = self.next_deadline();
            self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
        let Some(sleep) = &mut self.sleep else { return Poll::Pending };
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let kind = if Instant::now() >= self.total_deadline {
                    TimeoutKind::Total
                } else {
                    TimeoutKind::Idle
                };
                Poll::Ready(kind)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_start_is_capped_by_total() {
        let start = Instant::now();
        let t = Timeouts {
            total: Duration::from_secs(10),
            response_start: Duration::from_secs(20),
            idle: None,
            request_body: None,
        };
        assert_eq!(t.response_start_deadline(start), (start + Duration::from_secs(10), TimeoutKind::Total));
        let t = Timeouts { response_start: Duration::from_secs(2), ..t };
        assert_eq!(
            t.response_start_deadline(start),
            (start + Duration::from_secs(2), TimeoutKind::ResponseStart)
        );
    }

    #[test]
    fn idle_bounds_the_wait_for_headers_from_forwarding_on() {
        let start = Instant::now();
        let secs = Duration::from_secs;
        let t =
            Timeouts { total: secs(10), response_start: secs(6), idle: Some(secs(2)), request_body: None };
        // Forwarded at once: the idle timeout is the earliest.
        assert_eq!(t.header_deadline(start, start), (start + secs(2), TimeoutKind::Idle));
        // Forwarded after 5 s in the queue: response-start comes first.
        assert_eq!(t.header_deadline(start, start + secs(5)), (start + secs(6), TimeoutKind::ResponseStart));
        // Without an idle timeout, nothing changes.
        let t = Timeouts { idle: None, ..t };
        assert_eq!(t.header_deadline(start, start), t.response_start_deadline(start));
    }

    #[test]
    fn deadlines_saturate_instead_of_panicking() {
        let start = Instant::now();
        let t = Timeouts {
            total: Duration::MAX,
            response_start: Duration::MAX,
            idle: Some(Duration::MAX),
            request_body: None,
        };
        assert!(t.total_deadline(start) > start);
        assert!(t.response_start_deadline(start).0 > start);
        assert!(t.header_deadline(start, start).0 > start);
        let mut timer = BodyTimer::new(t.total_deadline(start), t.idle);
        timer.progress();
        assert!(timer.next_deadline() > start);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_restarts_on_progress_and_total_wins_at_the_end() {
        let start = Instant::now();
        let mut timer = BodyTimer::new(start + Duration::from_secs(5), Some(Duration::from_secs(2)));
        let poll = |timer: &mut BodyTimer| {
            let waker = std::task::Waker::noop();
            timer.poll_expired(&mut Context::from_waker(waker))
        };
        assert_eq!(poll(&mut timer), Poll::Pending);
        tokio::time::advance(Duration::from_millis(1500)).await;
        timer.progress();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(poll(&mut timer), Poll::Pending);
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(poll(&mut timer), Poll::Ready(TimeoutKind::Idle));
        timer.progress();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(poll(&mut timer), Poll::Ready(TimeoutKind::Total));
    }
}
