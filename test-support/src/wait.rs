//! Polling with a deadline: the way end-to-end tests wait for the cluster to reach a state. Nothing here
//! asserts by sleeping; a timeout names what was awaited and the last reason it was not there yet.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// The first pause between two checks; it doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(20);
/// The longest pause between two checks.
const MAX_INTERVAL: Duration = Duration::from_millis(250);

/// Calls `check` until it returns `Ok`, and returns that value; panics once `timeout` has passed, with `what`
/// and the message of the last `Err` (so a failure says "waiting for 2 ready pods: 1 of 2 ready").
///
/// `Err` means "not yet": return it for states the cluster passes through (objects not created yet, a
/// transient API error). The check is always run at least once, and once more at the deadline.
///
/// ```ignore
/// let pods = wait_for(Duration::from_secs(30), "2 pending pods", || async {
///     let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
///     if list.items.len() == 2 { Ok(list.items) } else { Err(format!("{} pods", list.items.len())) }
/// })
/// .await;
/// ```
pub async fn wait_for<T, E: Display>(
    timeout: Duration,
    what: &str,
    check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    match try_wait_for(timeout, what, check).await {
        Ok(value) => value,
        Err(message) => panic!("{message}"),
    }
}

/// [`wait_for`] that returns the timeout message as an `Err` instead of panicking (for helpers that add
/// context, such as component logs, before failing).
pub async fn try_wait_for<T, E: Display>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut interval = FIRST_INTERVAL;
    loop {
        let last = match check().await {
            Ok(value) => return Ok(value),
            Err(not_yet) => not_yet.to_string(),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "timed out after {:.1?} waiting for {what}; last state: {last}",
                now.duration_since(start)
            ));
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}
