//! The scale-down-delay window: the maximum desired count over the last `scale-down-delay`, in buckets of one
//! tick interval (2 s), as Knative's `pkg/autoscaler/aggregation/max` keeps it.

use std::collections::VecDeque;
use std::time::Duration;

use crate::{TICK_INTERVAL, Timestamp};

/// A sliding maximum over `buckets` buckets of [`TICK_INTERVAL`]: a value recorded in bucket `i` counts until
/// bucket `i + buckets - 1` included. Kept as a descending deque (the "ascending minima" algorithm), so each
/// record is amortised O(1) and the current maximum is at the front.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MaxWindow {
    buckets: u64,
    /// `(bucket index, value)`, indices increasing and values strictly decreasing from front to back.
    entries: VecDeque<(u64, u32)>,
}

impl MaxWindow {
    /// A window spanning `delay` (`ceil(delay / 2 s)` buckets; `delay` must be non-zero).
    pub(crate) fn new(delay: Duration) -> Self {
        let buckets = Self::buckets_for(delay);
        // Never more entries than buckets: the per-tick path does not allocate.
        Self { buckets, entries: VecDeque::with_capacity(buckets as usize) }
    }

    fn buckets_for(delay: Duration) -> u64 {
        delay.as_nanos().div_ceil(TICK_INTERVAL.as_nanos()).max(1) as u64
    }

    /// Changes the span, keeping what was recorded (entries outside the new span leave at the next record).
    pub(crate) fn set_delay(&mut self, delay: Duration) {
        self.buckets = Self::buckets_for(delay);
    }

    /// Records `value` at `now` and returns the maximum over the window, `value` included.
    pub(crate) fn record(&mut self, now: Timestamp, value: u32) -> u32 {
        let mut index = now.whole_secs() / TICK_INTERVAL.as_secs();
        // Time never runs backwards here: an earlier `now` counts as the latest bucket.
        if let Some(&(back, _)) = self.entries.back() {
            index = index.max(back);
        }
        // A smaller or equal older value can never be the maximum again.
        while self.entries.back().is_some_and(|&(_, v)| v <= value) {
            self.entries.pop_back();
        }
        while self.entries.front().is_some_and(|&(i, _)| index - i >= self.buckets) {
            self.entries.pop_front();
        }
        // A larger value from this same bucket stays; otherwise this value joins at the back.
        if self.entries.back().is_none_or(|&(i, _)| i != index) {
            self.entries.push_back((index, value));
        }
        self.entries.front().map_or(value, |&(_, v)| v)
    }

    /// Bytes of state, for the memory budget.
    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.entries.capacity() * std::mem::size_of::<(u64, u32)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_maximum_for_the_delay_then_releases_it() {
        // 4 s = 2 buckets of 2 s: a value recorded in bucket i counts in buckets i and i+1.
        let mut w = MaxWindow::new(Duration::from_secs(4));
        assert_eq!(w.record(Timestamp::from_secs(10), 5), 5); // bucket 5
        assert_eq!(w.record(Timestamp::from_secs(12), 2), 5); // bucket 6: 5 still counts
        assert_eq!(w.record(Timestamp::from_secs(14), 1), 2); // bucket 7: 5 gone, 2 (bucket 6) counts
        assert_eq!(w.record(Timestamp::from_secs(16), 1), 1); // bucket 8: only 1s left
        assert_eq!(w.record(Timestamp::from_secs(18), 3), 3); // increases apply at once
    }

    #[test]
    fn the_larger_of_two_records_in_one_bucket_wins() {
        let mut w = MaxWindow::new(Duration::from_secs(2));
        assert_eq!(w.record(Timestamp::from_secs(20), 4), 4);
        assert_eq!(w.record(Timestamp::from_secs(21), 3), 4); // same 2 s bucket
        assert_eq!(w.record(Timestamp::from_secs(22), 3), 3); // next bucket
    }

    #[test]
    fn odd_delays_round_up_to_whole_buckets_and_memory_is_bounded() {
        // 5 s -> ceil(5/2) = 3 buckets.
        let mut w = MaxWindow::new(Duration::from_secs(5));
        assert_eq!(w.buckets, 3);
        let cap = w.entries.capacity();
        // Strictly decreasing values keep every entry: never more than 3.
        for (i, v) in (0..100u64).zip((0..100u32).rev()) {
            w.record(Timestamp::from_secs(2 * i), v);
            assert!(w.entries.len() <= 3);
        }
        assert_eq!(w.entries.capacity(), cap, "the per-tick path does not allocate");
    }
}
