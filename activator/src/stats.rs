//! Reporting the activator's load to the autoscaler: a stat per service every second, and one at once when the
//! first request for a service at zero arrives, so the autoscaler decides without waiting for its next tick.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ebb_config::wire::IngestFrame;
use ebb_http::stats::{Snapshot, pod_stat};
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

/// The stat that announces the first request for a service at zero: concurrency 1, one request, queued.
pub fn cold_start_stat(service: &Service, activator: &str, uptime: Duration) -> IngestFrame {
    let one =
        Snapshot { average_concurrency: 1.0, average_queued: 1.0, request_count: 1, ..Snapshot::default() };
    frame(service, pod_stat(activator, &one, uptime, SystemTime::now()))
}

fn frame(service: &Service, stat: ebb_config::wire::PodStat) -> IngestFrame {
    IngestFrame { namespace: service.key.namespace.to_string(), name: service.key.name.to_string(), stat }
}

/// Every second, sends each service's time-weighted concurrency and request count. A service that was idle
/// for the whole of this and the previous second is skipped, so idle services cost nothing; the first idle
/// second after activity is still sent, so the autoscaler sees the load end.
pub async fn report(registry: Arc<Registry>, sink: Arc<dyn StatSink>, activator: String, started: Instant) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut busy_last_second = HashSet::new();
    loop {
        ticks.tick().await;
        let now = Instant::now();
        for service in registry.services() {
            let snapshot = service.stats.snapshot(now);
            let busy = snapshot.request_count > 0 || snapshot.average_concurrency > 0.0;
            let was_busy = busy_last_second.contains(&service.key);
            if busy && !was_busy {
                busy_last_second.insert(service.key.clone());
            } else if !busy && was_busy {
                busy_last_second.remove(&service.key);
            }
            if busy || was_busy {
                let stat = pod_stat(&activator, &snapshot, now - started, SystemTime::now());
                sink.send(frame(&service, stat));
            }
        }
    }
}
