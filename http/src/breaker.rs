//! The breaker: at most `capacity` requests in flight, at most `queue_depth` more waiting for a slot, and an
//! immediate refusal beyond that. The queue-proxy uses one per pod (capacity = container concurrency); the
//! activator uses one per service and changes its capacity live as pods come and go.
//!
//! A slot is a [`Permit`]. It is released when the permit is dropped, so the caller moves it into whatever
//! lives as long as the request (for a proxy: the response body, see [`crate::body::TrackedBody`]); the slot is
//! then held until the body ends or the client goes away, not merely until the response headers arrive.
//!
//! Admission is one atomic add; a free slot costs one more uncontended compare-and-swap (tokio's semaphore);
//! only a request that has to queue allocates a waiter. Waiters are served first come, first served.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use ebb_process::sync::Locked;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Why the breaker gave no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError {
    /// Every slot is taken and the queue is full.
    #[error("the concurrency limit is reached and the queue is full")]
    Overloaded,
    /// The request waited in the queue until its deadline.
    #[error("timed out waiting in the queue for a concurrency slot")]
    QueueTimeout,
}

/// A concurrency limit with a bounded FIFO queue. Cloning gives another handle to the same breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: Semaphore,
    /// The capacity asked for by the last [`Breaker::set_capacity`].
    capacity: AtomicU32,
    queue_depth: AtomicU32,
    /// Requests admitted and not yet finished: in flight plus queued.
    pending: AtomicUsize,
    /// Requests holding a slot.
    in_flight: AtomicUsize,
    /// Slots still to be taken out of circulation after a capacity cut found them in use: a finishing request
    /// pays one unit of debt instead of returning its slot.
    debt: AtomicUsize,
    /// Serialises capacity changes (rare) so that permits added and debt owed stay consistent.
    resize: Mutex<()>,
}

impl Breaker {
    /// A breaker with `capacity` concurrent slots and room for `queue_depth` waiting requests. A capacity of 0
    /// means no slot at all (requests queue until [`Self::set_capacity`] raises it or their deadline passes);
    /// a caller that wants "unlimited" should not put a breaker in the path.
    pub fn new(capacity: u32, queue_depth: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: Semaphore::new(capacity as usize),
                capacity: AtomicU32::new(capacity),
                queue_depth: AtomicU32::new(queue_depth),
                pending: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                debt: AtomicUsize::new(0),
                resize: Mutex::new(()),
            }),
        }
    }

    /// The current capacity.
    pub fn capacity(&self) -> u32 {
        self.inner.capacity.load(Ordering::Relaxed)
    }

    /// The current queue depth.
    pub fn queue_depth(&self) -> u32 {
        self.inner.queue_depth.load(Ordering::Relaxed)
    }

    /// Requests holding a slot.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        let pending = self.inner.pending.load(Ordering::Relaxed);
        pending.saturating_sub(self.in_flight())
    }

    /// Changes the number of slots, live. Growing wakes queued requests at once; shrinking takes free slots
    /// away at once and the rest as the requests holding them finish.
    pub fn set_capacity(&self, capacity: u32) {
        let inner = &*self.inner;
        let _serial = inner.resize.locked();
        let old = inner.capacity.swap(capacity, Ordering::AcqRel);
        if capacity > old {
            let wanted = (capacity - old) as usize;
            // Cancel debt first: those slots are still out there and will now be returned. The closure's last
            // run is the one that took effect, so `paid` ends up matching it.
            let mut paid = 0;
            let _ = inner.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                paid = debt.min(wanted);
                Some(debt - paid)
            });
            if wanted > paid {
                inner.slots.add_permits(wanted - paid);
            }
        } else if capacity < old {
            let shrink = (old - capacity) as usize;
            let taken = inner.slots.forget_permits(shrink);
            inner.debt.fetch_add(shrink - taken, Ordering::AcqRel);
        }
    }

    /// Changes how many requests may wait, live. Requests already queued stay queued.
    pub fn set_queue_depth(&self, queue_depth: u32) {
        self.inner.queue_depth.store(queue_depth, Ordering::Relaxed);
    }

    /// Takes a slot if one is free; otherwise refuses at once without queueing.
    pub fn try_acquire(&self) -> Result<Permit, BreakerError> {
        let admitted = self.admit()?;
        match self.inner.slots.try_acquire() {
            Ok(slot) => {
                slot.forget();
                Ok(admitted.into_permit())
            }
            Err(_) => Err(BreakerError::Overloaded),
        }
    }

    /// Takes a slot, waiting in the queue for one until `deadline` (forever if `None`). Refuses at once when
    /// the slots and the queue are all taken. Dropping the returned future leaves the queue.
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<Permit, BreakerError> {
        let admitted = self.admit()?;
        if let Ok(slot) = self.inner.slots.try_acquire() {
            slot.forget();
            return Ok(admitted.into_permit());
        }
        let wait = self.inner.slots.acquire();
        let slot = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, wait).await {
                Ok(slot) => slot,
                Err(_elapsed) => return Err(BreakerError::QueueTimeout),
            },
            None => wait.await,
        };
        // The semaphore is never closed, so acquiring cannot fail.
        match slot {
            Ok(slot) => slot.forget(),
            Err(_closed) => return Err(BreakerError::Overloaded),
        }
        Ok(admitted.into_permit())
    }

    /// Counts the request as pending if there is room among slots and queue.
    fn admit(&self) -> Result<Admitted, BreakerError> {
        let inner = &self.inner;
        let room = inner.capacity.load(Ordering::Relaxed) as usize
            + inner.queue_depth.load(Ordering::Relaxed) as usize;
        let before = inner.pending.fetch_add(1, Ordering::AcqRel);
        if before >= room {
            inner.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(BreakerError::Overloaded);
        }
        Ok(Admitted { inner: Some(self.inner.clone()) })
    }
}

/// A request counted as pending but without a slot yet; leaving the queue (dropped) uncounts it.
struct Admitted {
    inner: Option<Arc<Inner>>,
}

impl Admitted {
    fn into_permit(mut self) -> Permit {
        let inner = self.inner.take().expect("admitted once");
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        Permit { inner }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(inner) = &self.inner {
            inner.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One concurrency slot. Dropping it frees the slot (or pays down a capacity cut).
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let inner = &*self.inner;
        inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        inner.pending.fetch_sub(1, Ordering::AcqRel);
        let paid_debt =
            inner.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| debt.checked_sub(1)).is_ok();
        if !paid_debt {
            inner.slots.add_permits(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refuses_beyond_capacity_plus_queue() {
        let breaker = Breaker::new(1, 0);
        let first = breaker.try_acquire().unwrap();
        assert_eq!(breaker.try_acquire().unwrap_err(), BreakerError::Overloaded);
        assert_eq!(breaker.in_flight(), 1);
        drop(first);
        assert_eq!(breaker.in_flight(), 0);
        assert!(breaker.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_get_slots_in_order_and_time_out_at_their_deadline() {
        let breaker = Breaker::new(1, 2);
        let held = breaker.acquire(None).await.unwrap();
        let b = breaker.clone();
        let waiter = tokio::spawn(async move { b.acquire(None).await.map(|_| ()) });
        let b = breaker.clone();
        let deadline = Instant::now() + Duration::from_secs(1);
        let timed = tokio::spawn(async move { b.acquire(Some(deadline)).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(breaker.queued(), 2);
        // Slots + queue = 3 are all taken.
        assert_eq!(breaker.acquire(None).await.unwrap_err(), BreakerError::Overloaded);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(timed.await.unwrap(), Err(BreakerError::QueueTimeout));
        assert_eq!(breaker.queued(), 1);
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!((breaker.in_flight(), breaker.queued()), (0, 0));
    }

    #[tokio::test]
    async fn dropping_a_queued_acquire_leaves_the_queue() {
        let breaker = Breaker::new(1, 1);
        let _held = breaker.try_acquire().unwrap();
        let b = breaker.clone();
        let waiter = tokio::spawn(async move { b.acquire(None).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(breaker.queued(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(breaker.queued(), 0);
    }

    #[tokio::test]
    async fn capacity_changes_live_both_ways() {
        let breaker = Breaker::new(0, 10);
        let b = breaker.clone();
        let waiter = tokio::spawn(async move { b.acquire(None).await });
        tokio::task::yield_now().await;
        assert_eq!(breaker.queued(), 1);
        breaker.set_capacity(2);
        let first = waiter.await.unwrap().unwrap();
        let second = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_err());
        // Cut to 1 while both slots are in use: the first release pays the debt, the second frees a slot.
        breaker.set_capacity(1);
        drop(first);
        assert!(breaker.try_acquire().is_err());
        drop(second);
        let third = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_err());
        // Growing again while in debt cancels the debt instead of minting extra slots.
        breaker.set_capacity(0);
        breaker.set_capacity(2);
        let fourth = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_err());
        drop((third, fourth));
        assert_eq!(breaker.in_flight(), 0);
        let all: Vec<_> = (0..2).map(|_| breaker.try_acquire().unwrap()).collect();
        assert!(breaker.try_acquire().is_err());
        drop(all);
    }

    #[test]
    fn never_more_in_flight_than_capacity_under_random_changes() {
        use proptest::prelude::*;
        proptest!(|(ops in proptest::collection::vec((0u8..3, 0u32..5), 1..200))| {
            let breaker = Breaker::new(2, 0);
            let mut held = Vec::new();
            for (op, arg) in ops {
                match op {
                    0 => if let Ok(p) = breaker.try_acquire() { held.push(p) },
                    1 => { if !held.is_empty() { held.remove(arg as usize % held.len()); } }
                    _ => breaker.set_capacity(arg),
                }
                // After a cut, requests already holding slots may exceed the new capacity, never new ones.
                if let Ok(p) = breaker.try_acquire() {
                    prop_assert!(breaker.in_flight() <= breaker.capacity() as usize);
                    drop(p);
                }
            }
            drop(held);
            // Once everything is released, exactly `capacity` slots are available.
            let cap = breaker.capacity() as usize;
            let all: Vec<_> = std::iter::from_fn(|| breaker.try_acquire().ok()).take(cap + 1).collect();
            prop_assert_eq!(all.len(), cap);
        });
    }
}
