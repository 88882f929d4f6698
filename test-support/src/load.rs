//! Closed-loop load for the end-to-end tests: clients that send one request after the other until stopped,
//! counting successes and keeping failures. What a request is comes from the caller (a completion through
//! the cluster's gateway, a streamed chat through `ebb up`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Running clients; [`Load::finish`] stops them.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients, each looping on `request` (`Err` says why a request failed).
    pub fn start<F, Fut>(clients: usize, request: F) -> Load
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let ok: Arc<AtomicU64> = Arc::default();
        let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failures, request) =
                    (stop.clone(), ok.clone(), failures.clone(), request.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match request().await {
                            Ok(()) => drop(ok.fetch_add(1, Ordering::Relaxed)),
                            Err(e) => keep(&failures, e),
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failures, tasks }
    }

    /// Requests that succeeded so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Requests failed so far.
    pub fn failed(&self) -> usize {
        self.failures.lock().unwrap().len()
    }

    /// Stops the clients (each finishes its request) and returns `(successes, failures)`.
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a load client");
        }
        (self.ok.load(Ordering::Relaxed), self.failures.lock().unwrap().clone())
    }
}

/// Keeps a failure: all of them are counted, the first 10 are kept whole (the rest as a marker).
fn keep(failures: &std::sync::Mutex<Vec<String>>, failure: String) {
    let mut failures = failures.lock().unwrap();
    let failure = if failures.len() < 10 { failure } else { String::from("...") };
    failures.push(failure);
}
