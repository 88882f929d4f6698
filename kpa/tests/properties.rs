//! Properties of the decider over random specs and random tick sequences.

use std::time::Duration;

use ebb_config::Metric;
use ebb_kpa::{Decider, DeciderSpec, Observed, ReasonKind, Timestamp};
use proptest::prelude::*;

/// One tick: seconds since the previous tick, ready pods, stable and panic averages.
type Tick = (u64, u32, f64, f64);

fn spec_strategy() -> impl Strategy<Value = DeciderSpec> {
    (
        0.01f64..500.0,
        1.01f64..20.0,
        1.01f64..10.0,
        1.1f64..10.0,
        0u32..6,
        prop_oneof![Just(0u64), 1u64..30],
        any::<bool>(),
        6u64..120,
    )
        .prop_map(|(target, up, down, threshold, activation_scale, delay, reachable, window)| {
            DeciderSpec {
                metric: Metric::Concurrency,
                target,
                total: target / 0.7,
                target_burst_capacity: 211.0,
                panic_threshold: threshold,
                stable_window: Duration::from_secs(window),
                max_scale_up_rate: up,
                max_scale_down_rate: down,
                activation_scale,
                scale_down_delay: Duration::from_secs(delay),
                reachable,
            }
        })
}

fn ticks_strategy() -> impl Strategy<Value = Vec<Tick>> {
    // Loads span "nothing" to far beyond any rate limit; ticks are mostly 2 s apart, sometimes further.
    let load = prop_oneof![Just(0.0), 0.0f64..50.0, 0.0f64..1e6];
    prop::collection::vec((prop_oneof![Just(2u64), 0u64..90], 0u32..200, load.clone(), load), 1..80)
}

fn run(
    spec: &DeciderSpec,
    created_ready: u32,
    ticks: &[Tick],
    mut check: impl FnMut(u32, bool, u32, ReasonKind),
) {
    let mut decider = Decider::new(spec.clone(), Timestamp::ZERO, created_ready).unwrap();
    let mut now = 0;
    for &(step, ready, stable, panic) in ticks {
        now += step;
        let outcome =
            decider.decide(Timestamp::from_secs(now), Some(ready), Some(Observed { stable, panic }));
        let d = outcome.decision().expect("data and pods were given");
        check(ready, d.panic, d.desired, d.reason.kind());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Outside panic, activation scale and the scale-down delay, one decision never grows the ready count by
    /// more than `ceil(maxScaleUpRate * max(1, ready))`.
    #[test]
    fn outside_panic_desired_never_exceeds_the_scale_up_limit(
        spec in spec_strategy(), ticks in ticks_strategy(), created in 0u32..3,
    ) {
        let spec = DeciderSpec { activation_scale: 1, scale_down_delay: Duration::ZERO, ..spec };
        let rate = spec.max_scale_up_rate;
        run(&spec, created, &ticks, |ready, panic, desired, _| {
            if !panic {
                let limit = (rate * f64::from(ready.max(1))).ceil() as u32;
                assert!(desired <= limit, "desired {desired} > limit {limit} (ready {ready}, rate {rate})");
            }
        });
    }

    /// While reachable, one decision never shrinks below `floor(max(1, ready) / maxScaleDownRate)`, whatever
    /// the panic state, activation scale or delay.
    #[test]
    fn when_reachable_desired_never_drops_below_the_scale_down_limit(
        spec in spec_strategy(), ticks in ticks_strategy(), created in 0u32..300,
    ) {
        let spec = DeciderSpec { reachable: true, ..spec };
        let rate = spec.max_scale_down_rate;
        run(&spec, created, &ticks, |ready, _, desired, _| {
            let limit = (f64::from(ready.max(1)) / rate).floor() as u32;
            assert!(desired >= limit, "desired {desired} < limit {limit} (ready {ready}, rate {rate})");
        });
    }

    /// Panic never lowers the count: from one panic tick to the next, desired does not go down.
    #[test]
    fn panic_never_lowers_the_count(spec in spec_strategy(), ticks in ticks_strategy(), created in 0u32..300) {
        let spec = DeciderSpec { scale_down_delay: Duration::ZERO, ..spec };
        // Created with several ready pods, the decider starts in panic holding them.
        let mut previous: Option<u32> = (created > 1).then_some(created);
        run(&spec, created, &ticks, |_, panic, desired, kind| {
            if panic {
                if let Some(before) = previous {
                    assert!(desired >= before, "panic lowered {before} to {desired} ({kind})");
                }
                previous = Some(desired);
            } else {
                previous = None;
            }
        });
    }
}
