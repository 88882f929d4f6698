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
/// How often the warnings remembered longer than [`REPEAT_AFTER`] are swept out: a sweep goes through every
/// one, and a new leader's first pass over 10,000 services with a warning each publishes 10,000.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Publishes Events as the autoscaler.
pub struct Events {
    queue: mpsc::Sender<(Event, ObjectReference)>,
    /// Whether the last event found the queue full.
    dropping: AtomicBool,
    reporter: Reporter,
    seen: Mutex<Seen>,
}

/// The warnings published lately, by object, reason and note.
#[derive(Debug)]
struct Seen {
    at: HashMap<(String, String, String), Instant>,
    swept: Instant,
}

impl Seen {
    fn new(now: Instant) -> Self {
        Self { at: HashMap::new(), swept: now }
    }

    /// Whether `key` was not published within [`REPEAT_AFTER`] of `now`; if so, it is remembered as published.
    fn fresh(&mut self, key: (String, String, String), now: Instant) -> bool {
        if now.saturating_duration_since(self.swept) >= SWEEP_EVERY {
            self.at.retain(|_, at| now.saturating_duration_since(*at) < REPEAT_AFTER);
            self.swept = now;
        }
        if self.at.get(&key).is_some_and(|at| now.saturating_duration_since(*at) < REPEAT_AFTER) {
            return false;
        }
        self.at.insert(key, now);
        true
    }
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
        Self {
            queue,
            dropping: AtomicBool::new(false),
            reporter,
            seen: Mutex::new(Seen::new(Instant::now())),
        }
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
        self.seen.locked().at.retain(|(object, _, _), _| *object != key);
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
            if !self.seen.locked().fresh(key, Instant::now()) {
                return;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(object: &str) -> (String, String, String) {
        (object.to_owned(), "InvalidAnnotation".to_owned(), "bad".to_owned())
    }

    #[test]
    fn a_warning_is_not_repeated_within_its_time_and_is_after_it() {
        let t0 = Instant::now();
        let mut seen = Seen::new(t0);
        assert!(seen.fresh(key("a"), t0));
        assert!(!seen.fresh(key("a"), t0 + Duration::from_secs(1)));
        assert!(seen.fresh(key("b"), t0 + Duration::from_secs(1)), "another object");
        // Past its time, even before a sweep has removed it.
        assert!(seen.fresh(key("a"), t0 + REPEAT_AFTER));
    }

    #[test]
    fn the_remembered_warnings_are_swept_once_a_minute_not_at_every_warning() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut seen = Seen::new(t0);
        for i in 0..1000 {
            seen.fresh(key(&i.to_string()), t0);
        }
        assert!(seen.fresh(key("x"), at(590)), "a sweep, and nothing expired yet");
        assert_eq!(seen.at.len(), 1001);
        // The thousand have expired, but the last sweep was a moment ago: a warning costs no pass over them.
        assert!(seen.fresh(key("y"), at(600)));
        assert_eq!(seen.at.len(), 1002);
        assert!(seen.fresh(key("z"), at(650)), "a minute after the last sweep");
        assert_eq!(seen.at.len(), 3, "the expired ones swept, the recent kept");
    }
}
