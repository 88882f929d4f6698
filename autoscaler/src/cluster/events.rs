//! Kubernetes Events (events.k8s.io/v1) through kube's `Recorder`, with a small dedupe so that a problem that
//! is found again on every pass (an invalid annotation, a pod stuck pulling) is reported once per
//! [`REPEAT_AFTER`], not every second. Publishing never blocks the caller: events wait in a queue of
//! [`QUEUE`] for one task that publishes [`IN_FLIGHT`] at a time, and an event that finds the queue full is
//! only logged (as every event is), as client-go's broadcaster drops beyond its queue. Unbounded, the first
//! pass over 1,000 services with a problem each published 1,000 Events at once, and kube's HTTP/1.1 pool
//! opened a connection for each and kept them: 1,023 connections to the API server and 22 MB of their state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ebb_process::sync::Locked;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;

/// The same event (object, reason, note) is not published again within this time.
pub const REPEAT_AFTER: Duration = Duration::from_secs(600);
/// Longest note the API accepts is 1 kB.
const MAX_NOTE: usize = 1000;
/// Events waiting to be published.
pub const QUEUE: usize = 1024;
/// Events being published at once (each a request, and a connection while it is in flight).
pub const IN_FLIGHT: usize = 8;

/// Publishes Events as the autoscaler.
pub struct Events {
    queue: mpsc::Sender<(Event, ObjectReference)>,
    /// Whether the last event found the queue full.
    dropping: AtomicBool,
    reporter: Reporter,
    seen: Mutex<HashMap<(String, String, String), Instant>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("reporter", &self.reporter).finish_non_exhaustive()
    }
}

impl Events {
    /// A publisher reporting as `controller` (instance: this replica's identity).
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        let reporter = Reporter { controller: controller.to_owned(), instance: Some(instance.to_owned()) };
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(publish_all(client, reporter.clone(), waiting));
        Self { queue, dropping: AtomicBool::new(false), reporter, seen: Mutex::default() }
    }

    /// A Normal event (always published: each one records a distinct action, such as a scale change).
    pub fn normal(&self, regarding: ObjectReference, reason: &str, note: String) {
        self.publish(regarding, EventType::Normal, reason, note, false);
    }

    /// A Warning event, not repeated within [`REPEAT_AFTER`].
    pub fn warning(&self, regarding: ObjectReference, reason: &str, note: String) {
        self.publish(regarding, EventType::Warning, reason, note, true);
    }

    /// Forgets what was reported about an object, so the next problem with it is reported at once.
    pub fn forget(&self, regarding: &ObjectReference) {
        let key = object_key(regarding);
        self.seen.locked().retain(|(object, _, _), _| *object != key);
    }

    fn publish(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
        dedupe: bool,
    ) {
        let mut note = note;
        if note.len() > MAX_NOTE {
            let mut cut = MAX_NOTE - 3;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        if dedupe {
            let key = (object_key(&regarding), reason.to_owned(), note.clone());
            let mut seen = self.seen.locked();
            seen.retain(|_, at| at.elapsed() < REPEAT_AFTER);
            if seen.contains_key(&key) {
                return;
            }
            seen.insert(key, Instant::now());
        }
        match type_ {
            EventType::Warning => tracing::warn!(object = %object_key(&regarding), reason, "{note}"),
            EventType::Normal => tracing::info!(object = %object_key(&regarding), reason, "{note}"),
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        // Every event is logged above; a full queue is said once per burst, not once per event.
        match self.queue.try_send((event, regarding)) {
            Ok(()) => self.dropping.store(false, Ordering::Relaxed),
            Err(_) if !self.dropping.swap(true, Ordering::Relaxed) => {
                tracing::warn!("events not published while {QUEUE} wait already (they are logged)");
            }
            Err(_) => {}
        }
    }
}

/// Publishes the queued events, [`IN_FLIGHT`] at a time, until every sender is gone.
async fn publish_all(client: Client, reporter: Reporter, waiting: mpsc::Receiver<(Event, ObjectReference)>) {
    futures::stream::unfold(waiting, async |mut waiting| waiting.recv().await.map(|next| (next, waiting)))
        .map(|(event, regarding)| {
            // A fresh recorder each time: kube's recorder folds events with the same reason into one series
            // and keeps the first note, which would hide every later scale change's reason.
            let recorder = Recorder::new(client.clone(), reporter.clone());
            async move {
                if let Err(err) = recorder.publish(&event, &regarding).await {
                    tracing::warn!("cannot publish an event: {err}");
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<()>()
        .await;
}

fn object_key(r: &ObjectReference) -> String {
    format!(
        "{}/{}/{}",
        r.kind.as_deref().unwrap_or_default(),
        r.namespace.as_deref().unwrap_or_default(),
        r.name.as_deref().unwrap_or_default()
    )
}
