//! The decider's rules, each with hand-computed expectations (the arithmetic is in the comments).

use std::collections::BTreeMap;
use std::time::Duration;

use ebb_config::{Aggregation, GlobalConfig, Metric, ServiceConfig, resolve_service};
use ebb_kpa::{
    Decider, DeciderSpec, Decision, Error, MetricWindows, Observed, Outcome, Reason, ReasonKind, Timestamp,
    Undecided,
};

/// Target 10 per pod (total 10 at 100%), so pod counts are easy to compute by hand.
fn spec() -> DeciderSpec {
    DeciderSpec {
        metric: Metric::Concurrency,
        target: 10.0,
        total: 10.0,
        target_burst_capacity: 0.0,
        panic_threshold: 2.0,
        stable_window: Duration::from_secs(60),
        max_scale_up_rate: 1000.0,
        max_scale_down_rate: 2.0,
        activation_scale: 1,
        scale_down_delay: Duration::ZERO,
        reachable: true,
    }
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

fn obs(stable: f64, panic: f64) -> Option<Observed> {
    Some(Observed { stable, panic })
}

fn decided(outcome: Outcome) -> Decision {
    match outcome {
        Outcome::Decided(d) => d,
        Outcome::Undecided(u) => panic!("expected a decision, got {u}"),
    }
}

fn decide(d: &mut Decider, t: u64, ready: u32, stable: f64, panic: f64) -> Decision {
    decided(d.decide(at(t), Some(ready), obs(stable, panic)))
}

#[test]
fn target_resolution_from_the_service_configuration() {
    // Defaults: concurrency, total = container-concurrency-target-default 100, utilisation 70% -> 70.
    let defaults = DeciderSpec::from_scaling(&ServiceConfig::default().scaling, true);
    assert_eq!((defaults.target, defaults.total, defaults.target_burst_capacity), (70.0, 100.0, 211.0));
    assert_eq!((defaults.panic_threshold, defaults.stable_window), (2.0, Duration::from_secs(60)));
    // rps with an annotation target of 100: Knative's fixed 70% for rps -> 70.
    let annotations = BTreeMap::from([
        ("autoscaling.knative.dev/metric".to_owned(), "rps".to_owned()),
        ("autoscaling.knative.dev/target".to_owned(), "100".to_owned()),
    ]);
    let config = resolve_service(&annotations, &GlobalConfig::default()).unwrap().value;
    let rps = DeciderSpec::from_scaling(&config.scaling, true);
    assert_eq!((rps.metric, rps.target, rps.total), (Metric::Rps, 70.0, 100.0));
}

#[test]
fn stable_mode_divides_the_stable_average_by_the_target() {
    let mut d = Decider::new(spec(), at(0), 1).unwrap();
    // ready 3: maxUp = ceil(1000*3) = 3000, maxDown = floor(3/2) = 1. ceil(25/10) = 3; panic ceil(12/10)=2,
    // 2/3 < 2: no panic.
    let r = decide(&mut d, 2, 3, 25.0, 12.0);
    assert_eq!((r.desired, r.panic), (3, false));
    assert_eq!(
        r.reason,
        Reason::Stable { metric: Metric::Concurrency, observed: 25.0, target: 10.0, pods: 3 }
    );
    assert_eq!(r.reason.to_string(), "stable: 25 concurrent at target 10 per pod -> 3 pods");
}

#[test]
fn scale_up_is_limited_by_the_rate_and_always_allows_one_more_pod() {
    let mut d = Decider::new(DeciderSpec { max_scale_up_rate: 1.5, ..spec() }, at(0), 1).unwrap();
    // ready 2: maxUp = ceil(1.5*2) = 3; stable wants ceil(100/10) = 10 -> 3. (Panic input 0: no panic.)
    let r = decide(&mut d, 2, 2, 100.0, 0.0);
    assert_eq!(r.desired, 3);
    assert_eq!(r.reason, Reason::ScaleUpLimited { wanted: 10, limit: 3, rate: 1.5, ready: 2 });

    let mut d = Decider::new(DeciderSpec { max_scale_up_rate: 1.1, ..spec() }, at(0), 1).unwrap();
    // ready 1: maxUp = ceil(1.1*1) = 2, not floor(1.1) = 1: a conservative rate still grows by one pod.
    assert_eq!(decide(&mut d, 2, 1, 30.0, 0.0).desired, 2);
    // ready 0 counts as 1 for the limit: ceil(1.1*1) = 2.
    assert_eq!(decide(&mut d, 4, 0, 30.0, 0.0).desired, 2);
}

#[test]
fn scale_down_is_limited_by_the_rate_only_while_reachable() {
    let mut d = Decider::new(DeciderSpec { max_scale_down_rate: 1.5, ..spec() }, at(0), 1).unwrap();
    // ready 4: maxDown = floor(4/1.5) = floor(2.67) = 2; the load wants ceil(0/10) = 0 -> 2.
    let r = decide(&mut d, 2, 4, 0.0, 0.0);
    assert_eq!(r.desired, 2);
    assert_eq!(r.reason, Reason::ScaleDownLimited { wanted: 0, limit: 2, rate: 1.5, ready: 4 });
    // ready 1: maxDown = floor(1/1.5) = 0: from one pod the decider may ask for zero.
    assert_eq!(decide(&mut d, 4, 1, 0.0, 0.0).desired, 0);

    // Unreachable: maxDown = 0, so 4 ready pods may go straight to 0.
    let mut d = Decider::new(DeciderSpec { reachable: false, ..spec() }, at(0), 1).unwrap();
    let r = decide(&mut d, 2, 4, 0.0, 0.0);
    assert_eq!((r.desired, r.reason.kind()), (0, ReasonKind::Stable));
}

#[test]
fn panic_enters_over_the_threshold_extends_and_exits_a_stable_window_later() {
    let mut d = Decider::new(spec(), at(0), 1).unwrap();
    // t=0, ready 1: panic pods ceil(25/10) = 3, 3/1 = 3 >= 2: panic. Desired max(ceil(10/10)=1, 3) = 3.
    let r = decide(&mut d, 0, 1, 10.0, 25.0);
    assert_eq!((r.desired, r.panic), (3, true));
    assert_eq!(r.reason.to_string(), "panic: 25 concurrent over target 10 x 1 pod -> 3 pods");
    assert_eq!(d.panic_since(), Some(at(0)));
    // t=30, ready 3: ceil(70/10) = 7, 7/3 = 2.33 >= 2: still over, the panic clock restarts at 30.
    let r = decide(&mut d, 30, 3, 20.0, 70.0);
    assert_eq!((r.desired, r.panic), (7, true));
    assert_eq!(d.panic_since(), Some(at(30)));
    // t=62, ready 7: ceil(20/10) = 2, 2/7 < 2: under, but 30 + 60 = 90 is not before 62: stay in panic and
    // never scale down in it: stable 2 (maxDown floor(7/2) = 3 -> 3), panic 3 -> keep 7.
    let r = decide(&mut d, 62, 7, 20.0, 20.0);
    assert_eq!((r.desired, r.panic), (7, true));
    assert_eq!(r.reason, Reason::PanicHold { wanted: 3, held: 7 });
    // t=90: 30 + 60 = 90 is not strictly before 90: still panic.
    assert!(decide(&mut d, 90, 7, 20.0, 20.0).panic);
    // t=92: 90 < 92: panic ends; stable ceil(20/10) = 2, maxDown floor(7/2) = 3 -> 3.
    let r = decide(&mut d, 92, 7, 20.0, 20.0);
    assert_eq!((r.desired, r.panic), (3, false));
    assert_eq!(d.panic_since(), None);
}

#[test]
fn an_instance_restarting_as_a_whole_adds_no_instance_and_holds_the_count() {
    // Two instances serve 18 concurrent (target 10 each); one restarts as a whole (KubeInfer's recovery
    // policy), so only 1 is ready while the load stays 18. The count comes from the load, not from the
    // missing capacity: ceil(18/10) = 2, no third instance. 2/1 ready is over the panic threshold, so the
    // decider panics, which only holds the count (no scale-down) while the instance is away.
    let mut d = Decider::new(spec(), at(0), 1).unwrap();
    assert_eq!(decide(&mut d, 2, 2, 18.0, 18.0).desired, 2);
    for t in (4..40).step_by(2) {
        let r = decide(&mut d, t, 1, 18.0, 18.0);
        assert_eq!((r.desired, r.panic), (2, true), "at {t} s with 1 of 2 instances ready");
    }
    // Back, under less load: held for a stable window from the last panic tick, then released.
    assert_eq!(decide(&mut d, 42, 2, 5.0, 5.0).desired, 2);
    let r = decide(&mut d, 40 + 61, 2, 5.0, 5.0);
    assert_eq!((r.desired, r.panic), (1, false));
}

#[test]
fn panic_takes_the_larger_of_stable_and_panic_and_increases_apply_at_once() {
    let mut d = Decider::new(spec(), at(0), 1).unwrap();
    // Over: ceil(20/10) = 2, 2/1 >= 2. Stable ceil(40/10) = 4 is larger than panic's 2: 4.
    let r = decide(&mut d, 0, 1, 40.0, 20.0);
    assert_eq!((r.desired, r.reason.kind()), (4, ReasonKind::Stable));
    // Still panicking; the panic window now wants ceil(90/10) = 9 (9/4 >= 2): up to 9 at once.
    assert_eq!(decide(&mut d, 2, 4, 40.0, 90.0).desired, 9);
}

#[test]
fn a_decider_created_with_several_ready_pods_starts_in_panic_holding_them() {
    let mut d = Decider::new(spec(), at(100), 4).unwrap();
    assert!(d.in_panic());
    // No load: stable 0 -> maxDown floor(4/2) = 2, but panic holds the 4 pods it started with.
    let r = decide(&mut d, 102, 4, 0.0, 0.0);
    assert_eq!((r.desired, r.reason), (4, Reason::PanicHold { wanted: 2, held: 4 }));
    // Until a stable window after creation: 100 + 60 < 162.
    assert!(decide(&mut d, 160, 4, 0.0, 0.0).panic);
    assert_eq!(decide(&mut d, 162, 4, 0.0, 0.0).desired, 2);
    // One ready pod (or none) is the normal case: no panic.
    assert!(!Decider::new(spec(), at(0), 1).unwrap().in_panic());
}

#[test]
fn scale_down_delay_holds_the_maximum_then_releases_it() {
    // 4 s delay = 2 buckets of 2 s.
    let mut d =
        Decider::new(DeciderSpec { scale_down_delay: Duration::from_secs(4), ..spec() }, at(0), 1).unwrap();
    // t=10 (bucket 5): ceil(50/10) = 5.
    assert_eq!(decide(&mut d, 10, 5, 50.0, 0.0).desired, 5);
    // t=12 (bucket 6): wants ceil(20/10) = 2 (maxDown floor(5/2) = 2); 5 from bucket 5 still counts.
    let r = decide(&mut d, 12, 5, 20.0, 0.0);
    assert_eq!(r.desired, 5);
    assert_eq!(r.reason, Reason::ScaleDownDelay { wanted: 2, held: 5, delay: Duration::from_secs(4) });
    assert_eq!(r.reason.to_string(), "scale-down-delay 4s: load wants 2 pods, keeping 5");
    // t=14 (bucket 7): bucket 5 is out (7 - 5 >= 2 buckets): max(2, 2) = 2.
    assert_eq!(decide(&mut d, 14, 5, 20.0, 0.0).desired, 2);
    // Unreachable: no delay.
    let unreachable = DeciderSpec { scale_down_delay: Duration::from_secs(4), reachable: false, ..spec() };
    let mut d = Decider::new(unreachable, at(0), 1).unwrap();
    assert_eq!(decide(&mut d, 10, 5, 50.0, 0.0).desired, 5);
    assert_eq!(decide(&mut d, 12, 5, 0.0, 0.0).desired, 0);
}

#[test]
fn excess_burst_capacity_and_its_sign_at_the_boundaries() {
    let tbc =
        |target_burst_capacity| DeciderSpec { target_burst_capacity, total: 100.0, target: 70.0, ..spec() };
    let mut d = Decider::new(tbc(211.0), at(0), 1).unwrap();
    // floor(3*100 - 211 - 89) = 0: exactly enough spare capacity, the activator may leave the path.
    let r = decide(&mut d, 2, 3, 89.0, 89.0);
    assert_eq!((r.excess_burst_capacity, r.needs_activator()), (0, false));
    // floor(300 - 211 - 89.5) = floor(-0.5) = -1: short by half a request, the activator stays.
    let r = decide(&mut d, 4, 3, 89.5, 89.5);
    assert_eq!((r.excess_burst_capacity, r.needs_activator()), (-1, true));
    // No ready pods: floor(0 - 211 - 0) = -211.
    assert_eq!(decide(&mut d, 6, 0, 0.0, 0.0).excess_burst_capacity, -211);
    // TBC 0: always 0 (activator only at zero); TBC -1: always -1 (activator always in the path).
    let mut d = Decider::new(tbc(0.0), at(0), 1).unwrap();
    assert_eq!(decide(&mut d, 2, 0, 1e6, 1e6).excess_burst_capacity, 0);
    let mut d = Decider::new(tbc(-1.0), at(0), 1).unwrap();
    assert_eq!(decide(&mut d, 2, 1000, 0.0, 0.0).excess_burst_capacity, -1);
}

#[test]
fn activation_scale_lifts_a_non_zero_count_only() {
    let mut d = Decider::new(DeciderSpec { activation_scale: 3, ..spec() }, at(0), 1).unwrap();
    // ceil(5/10) = 1 -> lifted to 3 (the panic window's 1 pod too: 1/1 < 2, no panic).
    let r = decide(&mut d, 2, 0, 5.0, 5.0);
    assert_eq!(r.desired, 3);
    assert_eq!(r.reason, Reason::ActivationScale { wanted: 1, activation_scale: 3 });
    // No load: 0 stays 0 (ready 1: maxDown floor(1/2) = 0).
    assert_eq!(decide(&mut d, 4, 1, 0.0, 0.0).desired, 0);
    // Above the activation scale: untouched, ceil(45/10) = 5.
    assert_eq!(decide(&mut d, 6, 3, 45.0, 10.0).desired, 5);
}

#[test]
fn no_data_or_unknown_pods_make_no_decision_and_leave_the_state_alone() {
    let mut d = Decider::new(spec(), at(0), 3).unwrap();
    assert_eq!(d.decide(at(2), Some(3), None), Outcome::Undecided(Undecided::NoData));
    assert_eq!(d.decide(at(2), None, obs(1.0, 1.0)), Outcome::Undecided(Undecided::PodsUnknown));
    assert_eq!(d.decide(at(2), Some(3), obs(f64::NAN, 1.0)), Outcome::Undecided(Undecided::NoData));
    assert_eq!(d.decide(at(2), Some(3), None).kind(), ReasonKind::NoData);
    // Long after: no panic exit happened on the undecided ticks (panic only ends on a decided tick).
    for t in (4..200).step_by(2) {
        assert!(d.decide(at(t), Some(3), None).decision().is_none());
    }
    assert!(d.in_panic());
}

#[test]
fn windows_feed_the_decision_and_their_silence_is_no_data() {
    let mut windows =
        MetricWindows::new(Duration::from_secs(60), Duration::from_secs(6), Aggregation::Linear).unwrap();
    let mut d = Decider::new(spec(), at(0), 1).unwrap();
    assert_eq!(d.decide_from_windows(at(0), Some(1), &windows), Outcome::Undecided(Undecided::NoData));
    // 35 concurrent for t = 0..=9: both averages 35 -> ceil(35/10) = 4 pods; panic 4/1 >= 2.
    for t in 0..10 {
        windows.record(at(t), 35.0).unwrap();
    }
    let r = decided(d.decide_from_windows(at(9), Some(1), &windows));
    assert_eq!((r.desired, r.panic), (4, true));
    // 61 s after the last stat (t=9): no data, no decision.
    assert_eq!(d.decide_from_windows(at(70), Some(4), &windows), Outcome::Undecided(Undecided::NoData));
}

#[test]
fn invalid_specs_are_refused() {
    let bad = |s: DeciderSpec| Decider::new(s, at(0), 0).unwrap_err();
    assert!(matches!(bad(DeciderSpec { target: 0.0, ..spec() }), Error::Setting { name: "target", .. }));
    assert!(matches!(bad(DeciderSpec { max_scale_up_rate: 1.0, ..spec() }), Error::Setting { .. }));
    assert!(matches!(bad(DeciderSpec { max_scale_down_rate: f64::NAN, ..spec() }), Error::Setting { .. }));
    assert!(matches!(bad(DeciderSpec { target_burst_capacity: -2.0, ..spec() }), Error::Setting { .. }));
    let half = DeciderSpec { scale_down_delay: Duration::from_millis(1500), ..spec() };
    assert_eq!(bad(half), Error::ScaleDownDelay(Duration::from_millis(1500)));
}

#[test]
fn update_changes_the_delay_and_keeps_the_panic() {
    let mut d = Decider::new(spec(), at(0), 4).unwrap();
    d.update(DeciderSpec { scale_down_delay: Duration::from_secs(10), ..spec() }).unwrap();
    assert!(d.in_panic());
    // Panic ends at 62 > 0 + 60; the delay window still holds the 4 of t=60 (bucket 30, span 5 buckets).
    assert_eq!(decide(&mut d, 60, 4, 0.0, 0.0).desired, 4);
    let r = decide(&mut d, 62, 4, 0.0, 0.0);
    assert_eq!((r.desired, r.panic, r.reason.kind()), (4, false, ReasonKind::ScaleDownDelay));
}
