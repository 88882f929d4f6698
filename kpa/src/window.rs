//! Observed load in 1-second buckets and its stable and panic window averages, as Knative's
//! `pkg/autoscaler/aggregation/bucketing.go` computes them.
//!
//! One ring of `stable window` buckets serves both windows (the panic window is its most recent seconds), so
//! a service costs one `f64` per second of stable window: 480 bytes at the default 60 s.
//!
//! Linear averaging ([`Aggregation::Linear`]):
//! - warm-up: until a full window has passed since the first write, the average is over the seconds since
//!   the first write, not the whole window;
//! - trailing seconds with no write are excluded (a late stat must not read as a drop in load);
//! - a gap followed by later data counts as zeros;
//! - no write for more than a window means no data ([`MetricWindows::observe`] returns `None`); a write after
//!   a gap of a whole window or more starts a new warm-up.
//!
//! Weighted-exponential averaging ([`Aggregation::WeightedExponential`]) weighs the second `i` seconds
//! before `now` by `alpha * (1 - alpha)^i`, unnormalised, with `alpha = max(1 - 0.0001^(1/buckets), 0.2)`;
//! seconds without data weigh in as zeros.

use std::time::Duration;

use ebb_config::{Aggregation, ScalingSpec};

use crate::{Error, Timestamp};

/// Longest stable window accepted (Knative's limit).
const MAX_WINDOW_SECS: u64 = 3600;
/// Weighted averaging: the weights of one window sum to at least this much...
const WEIGHT_PRECISION: f64 = 0.9999;
/// ...unless that would make the decay slower than this (very long windows).
const MIN_ALPHA: f64 = 0.2;

/// The stable and panic window averages a decision is made from (service totals).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    /// Average over the stable window.
    pub stable: f64,
    /// Average over the panic window.
    pub panic: f64,
}

/// The write history the averages need, in whole seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Writes {
    /// First second of the stable window's current warm-up.
    first: u64,
    /// First second of the panic window's current warm-up (it restarts after a gap of a panic window).
    first_panic: u64,
    /// The latest second written.
    last: u64,
}

/// The stable and panic windows of one service's observed load (service totals: the sum over pods plus the
/// activator's share), fed once per second and read once per tick.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricWindows {
    /// Sum of the values recorded in each second; second `s` lives in slot `s % len`. Seconds outside the
    /// write history hold zero.
    buckets: Box<[f64]>,
    /// Panic window length in seconds, `1..=buckets.len()`.
    panic_secs: u64,
    algorithm: Aggregation,
    stable_alpha: f64,
    panic_alpha: f64,
    writes: Option<Writes>,
}

impl MetricWindows {
    /// Empty windows: `stable` and `panic` are whole seconds with `1s <= panic <= stable <= 1h`.
    pub fn new(stable: Duration, panic: Duration, algorithm: Aggregation) -> Result<Self, Error> {
        let (stable_secs, panic_secs) = check_windows(stable, panic)?;
        Ok(Self {
            buckets: vec![0.0; stable_secs as usize].into_boxed_slice(),
            panic_secs,
            algorithm,
            stable_alpha: smoothing(stable_secs),
            panic_alpha: smoothing(panic_secs),
            writes: None,
        })
    }

    /// Empty windows sized by a service's resolved configuration.
    pub fn from_spec(spec: &ScalingSpec) -> Result<Self, Error> {
        Self::new(spec.stable_window, spec.panic_window(), spec.aggregation)
    }

    /// Adds `value` to the bucket of the second `at` falls in. Several records in one second add up (pods'
    /// and activators' shares of the same second).
    ///
    /// A record older than the latest one is still counted if it falls within a window of it; an older one is
    /// dropped, as Knative does. (Knative's older code moved its write history backwards on such a record;
    /// here out-of-order records never move it back.)
    pub fn record(&mut self, at: Timestamp, value: f64) -> Result<(), Error> {
        if !value.is_finite() || value < 0.0 {
            return Err(Error::MetricValue(value));
        }
        let len = self.buckets.len() as u64;
        let sec = at.whole_secs();
        match &mut self.writes {
            None => self.writes = Some(Writes { first: sec, first_panic: sec, last: sec }),
            Some(w) if sec > w.last => {
                let gap = sec - w.last;
                if gap >= len {
                    // Nothing of the old data is left in the window: start a new warm-up.
                    self.buckets.fill(0.0);
                    w.first = sec;
                } else {
                    // The seconds in between had no data: they count as zero.
                    for s in w.last + 1..=sec {
                        self.buckets[(s % len) as usize] = 0.0;
                    }
                }
                if gap >= self.panic_secs {
                    w.first_panic = sec;
                }
                w.last = sec;
            }
            Some(w) if sec.saturating_add(len) > w.last => {
                w.first = w.first.min(sec);
                if sec.saturating_add(self.panic_secs) > w.last {
                    w.first_panic = w.first_panic.min(sec);
                }
            }
            Some(_) => return Ok(()),
        }
        self.buckets[(sec % len) as usize] += value;
        Ok(())
    }

    /// The stable and panic averages at `now`, or `None` when nothing was recorded within the last stable
    /// window ("no data": the decider then makes no decision). The panic average is 0 when nothing was
    /// recorded within the last panic window.
    pub fn observe(&self, now: Timestamp) -> Option<Observed> {
        let w = self.writes?;
        let len = self.buckets.len() as u64;
        // A `now` before the latest write (a stat stamped slightly ahead) reads the window up to that write.
        let idle = now.whole_secs().saturating_sub(w.last);
        if idle > len {
            return None;
        }
        let (stable, panic) = match self.algorithm {
            Aggregation::Linear => (
                self.linear(w.first, w.last, idle, len),
                self.linear(w.first_panic, w.last, idle, self.panic_secs),
            ),
            Aggregation::WeightedExponential => (
                self.weighted(self.stable_alpha, w.last, idle, len),
                self.weighted(self.panic_alpha, w.last, idle, self.panic_secs),
            ),
        };
        Some(Observed { stable, panic })
    }

    /// Linear average over a window of `window` seconds ending `idle` seconds after the last write.
    fn linear(&self, first: u64, last: u64, idle: u64, window: u64) -> f64 {
        if idle >= window {
            return 0.0;
        }
        // The seconds still in the window that may hold data: `last - count + 1 ..= last`.
        let count = window - idle;
        let sum = self.sum_back(last, count);
        // Warm-up: seconds before the first write are not part of the average.
        let divisor = (last - first + 1).min(count);
        // Knative floors to 6 decimals so that float noise cannot tip `ceil(observed / target)` up a pod.
        floor_6_digits(sum / divisor as f64)
    }

    /// Weighted-exponential average: the second `i` seconds before `now` weighs `alpha * (1 - alpha)^i`.
    fn weighted(&self, alpha: f64, last: u64, idle: u64, window: u64) -> f64 {
        if idle >= window {
            return 0.0;
        }
        let len = self.buckets.len();
        let decay = 1.0 - alpha;
        let mut weight = alpha * decay.powi(idle as i32);
        let mut sum = 0.0;
        // Newest first, walking the ring backwards from the last write (`window - idle <= len` buckets).
        let mut slot = (last % len as u64) as usize;
        for _ in 0..window - idle {
            sum += self.buckets[slot] * weight;
            weight *= decay;
            slot = if slot == 0 { len - 1 } else { slot - 1 };
        }
        sum
    }

    /// Sum of the `count` buckets ending at second `last`.
    fn sum_back(&self, last: u64, count: u64) -> f64 {
        let len = self.buckets.len() as u64;
        let end = (last % len) as usize + 1;
        let count = count as usize;
        // The ring wraps at most once: sum the two contiguous runs.
        if count <= end {
            self.buckets[end - count..end].iter().sum()
        } else {
            let wrapped = count - end;
            let tail: f64 = self.buckets[self.buckets.len() - wrapped..].iter().sum();
            tail + self.buckets[..end].iter().sum::<f64>()
        }
    }

    /// Applies a changed `window`, `panic-window-percentage` or aggregation algorithm, keeping the data that
    /// still fits. Allocates only when the stable window changes length.
    ///
    /// Deliberate difference from Knative: its `ResizeWindow` reads the wall clock and declares the old window
    /// full of data; here the warm-up start is kept where the data really starts (or where the kept data
    /// starts, when the window grew), so a resize neither dilutes nor inflates the average.
    pub fn resize(&mut self, stable: Duration, panic: Duration, algorithm: Aggregation) -> Result<(), Error> {
        let (stable_secs, panic_secs) = check_windows(stable, panic)?;
        let old_len = self.buckets.len() as u64;
        if stable_secs != old_len {
            let mut buckets = vec![0.0; stable_secs as usize].into_boxed_slice();
            if let Some(w) = &mut self.writes {
                let keep = old_len.min(stable_secs).min(w.last + 1);
                for s in w.last + 1 - keep..=w.last {
                    buckets[(s % stable_secs) as usize] = self.buckets[(s % old_len) as usize];
                }
                // Seconds older than the old window are unknown, not zero: the warm-up starts after them.
                let known_from = (w.last + 1).saturating_sub(old_len);
                w.first = w.first.max(known_from);
                w.first_panic = w.first_panic.max(w.first);
            }
            self.buckets = buckets;
        }
        self.panic_secs = panic_secs;
        self.algorithm = algorithm;
        self.stable_alpha = smoothing(stable_secs);
        self.panic_alpha = smoothing(panic_secs);
        Ok(())
    }

    /// The stable window length.
    pub fn stable_window(&self) -> Duration {
        Duration::from_secs(self.buckets.len() as u64)
    }

    /// The panic window length.
    pub fn panic_window(&self) -> Duration {
        Duration::from_secs(self.panic_secs)
    }

    /// Bytes this service's window state occupies: the struct plus its bucket ring.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + std::mem::size_of_val(&*self.buckets)
    }
}

/// Checks the window lengths and returns them in seconds.
fn check_windows(stable: Duration, panic: Duration) -> Result<(u64, u64), Error> {
    let stable_secs = stable.as_secs();
    if stable.subsec_nanos() != 0 || stable_secs == 0 || stable_secs > MAX_WINDOW_SECS {
        return Err(Error::StableWindow(stable));
    }
    let panic_secs = panic.as_secs();
    if panic.subsec_nanos() != 0 || panic_secs == 0 || panic_secs > stable_secs {
        return Err(Error::PanicWindow { panic, stable });
    }
    Ok((stable_secs, panic_secs))
}

/// The weighted average's decay for a window of `buckets` seconds.
fn smoothing(buckets: u64) -> f64 {
    (1.0 - (1.0 - WEIGHT_PRECISION).powf(1.0 / buckets as f64)).max(MIN_ALPHA)
}

fn floor_6_digits(value: f64) -> f64 {
    (value * 1e6).floor() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    fn linear(stable: u64, panic: u64) -> MetricWindows {
        MetricWindows::new(Duration::from_secs(stable), Duration::from_secs(panic), Aggregation::Linear)
            .unwrap()
    }

    fn observe(w: &MetricWindows, now: u64) -> (f64, f64) {
        let o = w.observe(secs(now)).expect("data");
        (o.stable, o.panic)
    }

    #[test]
    fn nothing_recorded_is_no_data() {
        assert_eq!(linear(60, 6).observe(secs(0)), None);
    }

    #[test]
    fn warm_up_averages_over_the_seconds_since_the_first_write() {
        let mut w = linear(60, 6);
        // 10 at t=100, 20 at t=101, 30 at t=102.
        for (t, v) in [(100, 10.0), (101, 20.0), (102, 30.0)] {
            w.record(secs(t), v).unwrap();
        }
        // Stable: (10+20+30)/3 = 20, not /60. Panic: the same three seconds fit in its 6 s.
        assert_eq!(observe(&w, 102), (20.0, 20.0));
    }

    #[test]
    fn full_window_divides_by_the_window() {
        let mut w = linear(10, 2);
        // 1 per second for t = 0..=14: 15 seconds, more than the 10 s window.
        for t in 0..=14 {
            w.record(secs(t), 1.0 + t as f64).unwrap();
        }
        // Stable at 14: seconds 5..=14 hold 6..=15, sum = (6+15)*10/2 = 105, /10 = 10.5.
        // Panic: seconds 13, 14 hold 14, 15: 29/2 = 14.5.
        assert_eq!(observe(&w, 14), (10.5, 14.5));
    }

    #[test]
    fn trailing_seconds_without_data_are_excluded() {
        let mut w = linear(10, 4);
        for t in 0..10 {
            w.record(secs(t), 4.0).unwrap();
        }
        // At t=12 the last write (t=9) is 3 s old: stable covers seconds 3..=9 (7 buckets), sum 28, /7 = 4.
        // Panic covers seconds 9..=9 only (4 - 3 = 1 bucket): 4/1 = 4. Not 28/10 or 4/4.
        assert_eq!(observe(&w, 12), (4.0, 4.0));
        // At t=13, 4 s idle = the whole panic window: panic 0; stable seconds 4..=9: 24/6 = 4.
        assert_eq!(observe(&w, 13), (4.0, 0.0));
    }

    #[test]
    fn gaps_followed_by_data_count_as_zero() {
        let mut w = linear(10, 4);
        // 9 at t=0, nothing at 1, 2, then 3 at t=3.
        w.record(secs(0), 9.0).unwrap();
        w.record(secs(3), 3.0).unwrap();
        // Stable: seconds 0..=3, (9+0+0+3)/4 = 3. Panic: 4 s window, gap of 3 < 4 keeps its warm-up, same 3.
        assert_eq!(observe(&w, 3), (3.0, 3.0));
        // A gap of a whole panic window restarts the panic warm-up: 6 at t=7 (gap 4): panic = 6/1 = 6,
        // stable = (9+3+6)/8 seconds 0..=7 = 2.25.
        w.record(secs(7), 6.0).unwrap();
        assert_eq!(observe(&w, 7), (2.25, 6.0));
    }

    #[test]
    fn no_data_for_more_than_a_window_is_no_data() {
        let mut w = linear(10, 2);
        w.record(secs(5), 7.0).unwrap();
        // 10 s after the last write: still data, but nothing left in the window reads as 0.
        assert_eq!(observe(&w, 15), (0.0, 0.0));
        // 11 s: no data.
        assert_eq!(w.observe(secs(16)), None);
        // A write after a whole window without data starts a new warm-up: 8 alone, not 8/10.
        w.record(secs(30), 8.0).unwrap();
        assert_eq!(observe(&w, 30), (8.0, 8.0));
    }

    #[test]
    fn sub_second_times_share_a_bucket_and_values_add_up() {
        let mut w = linear(10, 2);
        w.record(Timestamp::from_millis(2_100), 1.5).unwrap();
        w.record(Timestamp::from_millis(2_900), 2.5).unwrap();
        assert_eq!(observe(&w, 2), (4.0, 4.0));
    }

    #[test]
    fn late_records_within_the_window_count_and_older_ones_are_dropped() {
        let mut w = linear(10, 2);
        w.record(secs(20), 10.0).unwrap();
        // 5 s late: stable counts it and its warm-up now starts at 15: (10+5)/6 = 2.5.
        w.record(secs(15), 5.0).unwrap();
        // 10 s late: outside the window, dropped.
        w.record(secs(10), 100.0).unwrap();
        // Panic (2 s) did not take the record at 15: 10/1.
        assert_eq!(observe(&w, 20), (2.5, 10.0));
    }

    #[test]
    fn refuses_bad_values_and_windows() {
        let mut w = linear(10, 2);
        assert_eq!(w.record(secs(1), -1.0), Err(Error::MetricValue(-1.0)));
        assert!(matches!(w.record(secs(1), f64::NAN), Err(Error::MetricValue(_))));
        assert_eq!(w.observe(secs(1)), None, "a refused value is not data");
        let d = Duration::from_secs;
        assert!(MetricWindows::new(d(0), d(0), Aggregation::Linear).is_err());
        assert!(MetricWindows::new(d(3601), d(6), Aggregation::Linear).is_err());
        assert!(MetricWindows::new(d(10), d(11), Aggregation::Linear).is_err());
        assert!(MetricWindows::new(Duration::from_millis(10_500), d(1), Aggregation::Linear).is_err());
    }

    #[test]
    fn weighted_exponential_matches_the_formula() {
        // 60 s window: alpha = max(1 - 0.0001^(1/60), 0.2) = max(0.142, 0.2) = 0.2.
        // 6 s panic window: alpha = 1 - 0.0001^(1/6) = 1 - 0.215443 = 0.784557.
        let mut w = MetricWindows::new(
            Duration::from_secs(60),
            Duration::from_secs(6),
            Aggregation::WeightedExponential,
        )
        .unwrap();
        assert_eq!(w.stable_alpha, 0.2);
        assert!((w.panic_alpha - 0.784557).abs() < 1e-6);
        // Data [10, 10, 5, 5] at t = 0..=3 (newest last).
        for (t, v) in [(0, 10.0), (1, 10.0), (2, 5.0), (3, 5.0)] {
            w.record(secs(t), v).unwrap();
        }
        // At t=3: 5*0.2 + 5*0.2*0.8 + 10*0.2*0.8^2 + 10*0.2*0.8^3 = 1 + 0.8 + 1.28 + 1.024 = 4.104.
        let o = w.observe(secs(3)).unwrap();
        assert!((o.stable - 4.104).abs() < 1e-12, "{}", o.stable);
        // At t=5 the two idle seconds weigh in as zeros: 4.104 * 0.8^2 = 2.62656.
        let o = w.observe(secs(5)).unwrap();
        assert!((o.stable - 2.62656).abs() < 1e-12, "{}", o.stable);
        // Panic at t=5: 2 idle seconds of its 6 leave 4 buckets (seconds 3, 2, 1, 0 = 5, 5, 10, 10) weighted
        // a*q^2 .. a*q^5, with a = 0.784557 and q = 1 - a.
        let (a, q) = (w.panic_alpha, 1.0 - w.panic_alpha);
        let expected = a * q * q * (5.0 + 5.0 * q + 10.0 * q * q + 10.0 * q * q * q);
        assert!((o.panic - expected).abs() < 1e-12);
    }

    #[test]
    fn resize_keeps_the_recent_data_and_its_true_warm_up() {
        let mut w = linear(10, 2);
        for t in 100..=104 {
            w.record(secs(t), 2.0).unwrap();
        }
        // Growing to 20 s: the data started at 100, so the average stays over 5 seconds: 10/5 = 2.
        w.resize(Duration::from_secs(20), Duration::from_secs(4), Aggregation::Linear).unwrap();
        assert_eq!(observe(&w, 104), (2.0, 2.0));
        // Shrinking to 3 s: only seconds 102..=104 are kept: 6/3 = 2, panic 1 s: 2.
        w.resize(Duration::from_secs(3), Duration::from_secs(1), Aggregation::Linear).unwrap();
        assert_eq!(observe(&w, 104), (2.0, 2.0));
        assert_eq!(w.stable_window(), Duration::from_secs(3));
        // Growing again to 10 s: seconds before 102 were dropped, so they are unknown, not zero: still 2.
        w.resize(Duration::from_secs(10), Duration::from_secs(2), Aggregation::Linear).unwrap();
        assert_eq!(observe(&w, 104), (2.0, 2.0));
        // New data keeps flowing into the resized ring: 8 at 105: seconds 102..=105 = (2+2+2+8)/4 = 3.5.
        w.record(secs(105), 8.0).unwrap();
        assert_eq!(observe(&w, 105), (3.5, 5.0));
    }

    #[test]
    fn default_window_state_is_small() {
        let w = linear(60, 6);
        // 60 buckets of 8 bytes plus the struct: well under the 4 KiB budget.
        assert!(w.memory_bytes() < 600, "{}", w.memory_bytes());
    }
}
