//! Reporting the activator's load to the autoscaler: a stat per service every second, and one at once when the
//! first request for a service at zero arrives, so the autoscaler decides without waiting for its next tick.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ebb_config::wire::IngestFrame;
use ebb_http::stats::{Snapshot, every_wall_second, last_whole_second, pod_stat};
use tokio::sync::mpsc;

use crate::registry::Registry;
use crate::service::Service;

/// Where stats go. Sending never blocks: a congested or absent receiver loses the stat (the next second brings
/// a fresh one), so the data path never waits on the autoscaler.
pub trait StatSink: Send + Sync + 'static {
    /// Hands one frame on.
    fn send(&self, frame: IngestFrame);

    /// Frames lost so far because the receiver was absent or congested.
    fn dropped(&self) -> u64;
}

/// In-process delivery (local mode): a bounded channel to the autoscaler.
#[derive(Debug)]
pub struct ChannelSink {
    sender: mpsc::Sender<IngestFrame>,
    dropped: AtomicU64,
}

impl ChannelSink {
    /// Delivers into `sender`.
    pub fn new(sender: mpsc::Sender<IngestFrame>) -> Self {
        Self { sender, dropped: AtomicU64::new(0) }
    }
}

impl StatSink for ChannelSink {
    fn send(&self, frame: IngestFrame) {
        if let Err(err) = self.sender.try_send(frame) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("stat dropped: {err}");
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// How long after the wall clock's whole second the stats of the second before are sent: the request
/// counters have passed the second's mark by then, and the autoscaler reads the pods later in the second.
const AFTER_THE_SECOND: Duration = Duration::from_millis(20);

/// The stat that announces the first request for a service at zero: concurrency 1, one request, queued.
pub fn cold_start_stat(service: &Service, activator: &str, uptime: Duration) -> IngestFrame {
    let one =
        Snapshot { average_concurrency: 1.0, average_queued: 1.0, request_count: 1, ..Snapshot::default() };
    frame(service, pod_stat(activator, &one, uptime, SystemTime::now()))
}

fn frame(service: &Service, stat: ebb_config::wire::PodStat) -> IngestFrame {
    IngestFrame { namespace: service.key.namespace.to_string(), name: service.key.name.to_string(), stat }
}

/// Every second, just after the wall clock's whole second, sends each service's time-weighted concurrency
/// and request count over that second (the one the pods report too). A service that was idle for the whole
/// of this and the previous second is skipped, so idle services cost nothing; the first idle second after
/// activity is still sent, so the autoscaler sees the load end.
pub async fn report(registry: Arc<Registry>, sink: Arc<dyn StatSink>, activator: String, started: Instant) {
    let mut ticks = every_wall_second(AFTER_THE_SECOND, Duration::from_secs(1));
    let mut busy_last_second = HashSet::new();
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let (end, end_wall) = last_whole_second(now, SystemTime::now());
        for service in registry.services() {
            let second = service.stats.second_ending(end);
            let busy = second.request_count > 0 || second.average_concurrency > 0.0;
            let was_busy = busy_last_second.contains(&service.key);
            if busy && !was_busy {
                busy_last_second.insert(service.key.clone());
            } else if !busy && was_busy {
                busy_last_second.remove(&service.key);
            }
            if busy || was_busy {
                let mut stat = pod_stat(&activator, &second, now - started, end_wall);
                // An activator's proxied count is what it forwarded in the second (its requests are its own,
                // none marked): requests held through a cold start arrive in one second and reach a pod,
                // marked, in a later one, and the autoscaler takes that many marked arrivals off the pods'.
                stat.proxied_request_count = second.admitted_count as f64;
                sink.send(frame(&service, stat));
            }
        }
    }
}
