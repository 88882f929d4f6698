//! The bounds and scale-to-zero policy: each rule with hand-computed timings.

use std::time::Duration;

use ebb_config::{Metric, Mode};
use ebb_kpa::{
    Decision, Phase, PolicyInput, PolicyOutput, PolicyReason, PolicySpec, Reason, ScalePolicy, Timestamp,
};

/// Stable window 60 s, grace 30 s, no retention, activation timeout 600 s, TBC 0 (serve whenever a pod is
/// ready and wanted).
fn spec() -> PolicySpec {
    PolicySpec {
        min_scale: 0,
        max_scale: 0,
        initial_scale: 1,
        enable_scale_to_zero: true,
        stable_window: Duration::from_secs(60),
        scale_to_zero_grace_period: Duration::from_secs(30),
        scale_to_zero_pod_retention_period: Duration::ZERO,
        activation_timeout: Duration::from_secs(600),
        total: 100.0,
        target_burst_capacity: 0.0,
        reachable: true,
    }
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

fn decision(desired: u32, excess_burst_capacity: i64) -> Option<Decision> {
    let reason = Reason::Stable { metric: Metric::Concurrency, observed: 0.0, target: 70.0, pods: desired };
    Some(Decision { desired, excess_burst_capacity, panic: false, reason })
}

/// One tick with the activator ready, and in the path as given.
fn tick(p: &mut ScalePolicy, t: u64, d: Option<Decision>, ready: u32, in_path: bool) -> PolicyOutput {
    p.tick(PolicyInput { now: at(t), decision: d, ready, activator_in_path: in_path, activators_ready: true })
}

#[test]
fn a_new_service_starts_activating_active_or_at_zero() {
    assert_eq!(ScalePolicy::new(spec(), at(5), 0).phase(), Phase::Activating { since: at(5) });
    let p = ScalePolicy::new(spec(), at(5), 1);
    assert_eq!((p.phase(), p.mode()), (Phase::Active { since: at(5) }, Mode::Serve));
    // initial-scale 0 (allowed by allow-zero-initial-scale): nothing to wait for.
    assert_eq!(
        ScalePolicy::new(PolicySpec { initial_scale: 0, ..spec() }, at(5), 0).phase(),
        Phase::Zero { since: at(5) }
    );
    // Default TBC 211 with total 100: initial EBC = 1*100 - 211 = -111 < 0, so a new service is behind the
    // activator even with a ready pod.
    let behind = PolicySpec { target_burst_capacity: 211.0, ..spec() };
    assert_eq!(behind.initial_excess_burst_capacity(), -111);
    assert_eq!(ScalePolicy::new(behind, at(5), 1).mode(), Mode::Proxy);
}

#[test]
fn min_and_max_scale_bound_the_decision_and_min_is_ignored_when_unreachable() {
    let mut p = ScalePolicy::new(PolicySpec { min_scale: 2, max_scale: 5, ..spec() }, at(0), 2);
    let out = tick(&mut p, 2, decision(1, 0), 2, false);
    assert_eq!((out.replicas, out.reason), (Some(2), PolicyReason::MinScale { desired: 1, min: 2 }));
    let out = tick(&mut p, 4, decision(9, 0), 2, false);
    assert_eq!((out.replicas, out.reason), (Some(5), PolicyReason::MaxScale { desired: 9, max: 5 }));
    assert_eq!(out.reason.to_string(), "max-scale 5 (decider: 9 pods)");
    // Unreachable: min-scale no longer holds a pod, max still caps.
    p.update(PolicySpec { min_scale: 2, max_scale: 5, reachable: false, ..spec() });
    assert_eq!(tick(&mut p, 6, decision(1, 0), 2, false).replicas, Some(1));
}

#[test]
fn initial_scale_holds_until_first_reached() {
    let mut p = ScalePolicy::new(PolicySpec { initial_scale: 3, ..spec() }, at(0), 0);
    // No decision yet while activating: the bounds still apply, so the 3 initial pods are asked for.
    let out = tick(&mut p, 2, None, 0, false);
    assert_eq!((out.replicas, out.reason), (Some(3), PolicyReason::InitialScale { desired: 0, initial: 3 }));
    assert_eq!(tick(&mut p, 4, decision(1, 0), 2, false).replicas, Some(3));
    assert!(!p.initialized());
    // 3 ready: reached once, active; from now on the decider's 1 applies.
    let out = tick(&mut p, 6, decision(1, 0), 3, false);
    assert_eq!((out.replicas, out.phase), (Some(3), Phase::Active { since: at(6) }));
    assert!(p.initialized());
    assert_eq!(tick(&mut p, 8, decision(1, 0), 3, false).replicas, Some(1));
}

#[test]
fn idle_goes_to_zero_after_a_stable_window_active_and_the_grace_period() {
    let mut p = ScalePolicy::new(spec(), at(0), 1);
    // t=2: the decider wants 0 but the service has been active for 2 s of 60: keep 1 (58 s left).
    let out = tick(&mut p, 2, decision(0, 0), 1, false);
    assert_eq!(
        (out.replicas, out.reason),
        (Some(1), PolicyReason::ActiveWindow { left: Duration::from_secs(58) })
    );
    assert_eq!(out.mode, Mode::Serve);
    // t=60: active for 60 s: marked inactive, replicas left as they are (1 pod), activator into the path.
    let out = tick(&mut p, 60, decision(0, 0), 1, false);
    assert_eq!((out.replicas, out.want, out.reason), (None, Some(0), PolicyReason::Deactivated));
    assert_eq!((out.phase, out.mode), (Phase::Inactive { since: at(60) }, Mode::Proxy));
    assert_eq!(p.mode_since(), at(60));
    // t=62: the activator is not verified in the path yet: never go to 0 before it is.
    let out = tick(&mut p, 62, decision(0, 0), 1, false);
    assert_eq!((out.replicas, out.reason), (None, PolicyReason::AwaitingActivator));
    // t=64: in the path; inactive for 4 s, in proxy mode for 4 s < 30 s grace: 26 s left.
    let out = tick(&mut p, 64, decision(0, 0), 1, true);
    assert_eq!(
        (out.replicas, out.reason),
        (None, PolicyReason::GracePeriod { left: Duration::from_secs(26) })
    );
    // t=88: 28 s < 30 s.
    assert_eq!(tick(&mut p, 88, decision(0, 0), 1, true).replicas, None);
    // t=90: inactive for 30 s >= max(grace 30, retention 0): scale to zero.
    let out = tick(&mut p, 90, decision(0, 0), 1, true);
    assert_eq!(
        (out.replicas, out.reason, out.phase),
        (Some(0), PolicyReason::ScaledToZero, Phase::Zero { since: at(90) })
    );
    let out = tick(&mut p, 92, decision(0, 0), 0, true);
    assert_eq!((out.replicas, out.reason, out.mode), (Some(0), PolicyReason::AtZero, Mode::Proxy));
}

#[test]
fn already_proxying_for_a_grace_period_goes_to_zero_at_once() {
    // TBC 211: EBC negative at 1 pod, so the activator has been in the path since t=0 (Knative's fast path).
    let mut p = ScalePolicy::new(PolicySpec { target_burst_capacity: 211.0, ..spec() }, at(0), 1);
    assert_eq!(tick(&mut p, 2, decision(1, -150), 1, true).mode, Mode::Proxy);
    assert_eq!(tick(&mut p, 60, decision(0, -211), 1, true).reason, PolicyReason::Deactivated);
    // t=62: inactive for only 2 s, but proxying for 62 s >= 30 s grace: zero now.
    let out = tick(&mut p, 62, decision(0, -211), 1, true);
    assert_eq!((out.replicas, out.reason), (Some(0), PolicyReason::ScaledToZero));
}

#[test]
fn the_pod_retention_period_keeps_the_last_pod() {
    let retention = |secs| PolicySpec {
        scale_to_zero_pod_retention_period: Duration::from_secs(secs),
        target_burst_capacity: 211.0,
        ..spec()
    };
    // Retention 90 s, longer than the grace period: zero at inactive + 90 = 150, fast path or not.
    let mut p = ScalePolicy::new(retention(90), at(0), 1);
    tick(&mut p, 60, decision(0, -211), 1, true);
    let out = tick(&mut p, 64, decision(0, -211), 1, true);
    assert_eq!(out.reason, PolicyReason::PodRetention { left: Duration::from_secs(86) });
    assert_eq!(tick(&mut p, 148, decision(0, -211), 1, true).replicas, None);
    assert_eq!(tick(&mut p, 150, decision(0, -211), 1, true).replicas, Some(0));
    // Retention 10 s: kept until inactive + 10 = 70, then the fast path (proxying since 0) applies.
    let mut p = ScalePolicy::new(retention(10), at(0), 1);
    tick(&mut p, 60, decision(0, -211), 1, true);
    assert_eq!(tick(&mut p, 68, decision(0, -211), 1, true).reason.kind(), "pod_retention");
    assert_eq!(tick(&mut p, 70, decision(0, -211), 1, true).replicas, Some(0));
}

#[test]
fn scale_to_zero_disabled_floors_at_one() {
    let mut p = ScalePolicy::new(PolicySpec { enable_scale_to_zero: false, ..spec() }, at(0), 1);
    for t in (2..300).step_by(2) {
        let out = tick(&mut p, t, decision(0, 0), 1, true);
        assert_eq!((out.replicas, out.reason), (Some(1), PolicyReason::ScaleToZeroDisabled));
        assert!(matches!(out.phase, Phase::Active { .. }));
    }
}

#[test]
fn scale_from_zero_activates_then_serves() {
    let mut p = ScalePolicy::new(spec(), at(0), 1);
    tick(&mut p, 60, decision(0, 0), 1, true);
    assert_eq!(tick(&mut p, 90, decision(0, 0), 1, true).replicas, Some(0));
    // A request at t=100: the decider wants 1; no pod ready yet: activating, requests wait in the activator.
    let out = tick(&mut p, 100, decision(1, 0), 0, true);
    assert_eq!(
        (out.replicas, out.phase, out.mode),
        (Some(1), Phase::Activating { since: at(100) }, Mode::Proxy)
    );
    // t=104: the pod is ready: active, and with EBC >= 0 the activator leaves the path.
    let out = tick(&mut p, 104, decision(1, 0), 1, true);
    assert_eq!((out.phase, out.mode), (Phase::Active { since: at(104) }, Mode::Serve));
}

#[test]
fn activation_that_never_succeeds_times_out_to_zero() {
    let mut p = ScalePolicy::new(PolicySpec { min_scale: 0, ..spec() }, at(0), 1);
    tick(&mut p, 60, decision(0, 0), 1, true);
    tick(&mut p, 90, decision(0, 0), 0, true);
    tick(&mut p, 100, decision(1, 0), 0, true); // activating since 100
    // The load went away (requests timed out in the activator) but no pod ever became ready: the replicas are
    // left as they are until the activation timeout (600 s) has passed.
    let out = tick(&mut p, 200, decision(0, 0), 0, true);
    assert_eq!(out.replicas, None);
    assert_eq!(
        out.reason.to_string(),
        "activating: waiting for ready pods (100s of the 600s activation timeout)"
    );
    assert_eq!(tick(&mut p, 700, decision(0, 0), 0, true).replicas, None, "600 s is not over 600 s");
    let out = tick(&mut p, 702, None, 0, true);
    assert_eq!((out.replicas, out.phase), (Some(0), Phase::Zero { since: at(702) }));
    assert_eq!(out.reason.kind(), "activation_timed_out");
}

#[test]
fn mode_needs_wanted_ready_pods_and_spare_capacity_unless_no_activator_is_ready() {
    let mut p = ScalePolicy::new(PolicySpec { target_burst_capacity: 211.0, ..spec() }, at(0), 1);
    assert_eq!(tick(&mut p, 2, decision(3, -1), 3, false).mode, Mode::Proxy);
    assert_eq!(tick(&mut p, 4, decision(3, 0), 3, false).mode, Mode::Serve);
    assert_eq!(tick(&mut p, 6, decision(3, 0), 0, false).mode, Mode::Proxy, "no ready pod");
    // No activator ready: serve is forced (and so the service cannot reach zero).
    let out = p.tick(PolicyInput {
        now: at(8),
        decision: decision(3, -5),
        ready: 3,
        activator_in_path: false,
        activators_ready: false,
    });
    assert_eq!(out.mode, Mode::Serve);
}

#[test]
fn no_decision_leaves_replicas_alone_and_a_resumed_policy_keeps_its_clocks() {
    let mut p = ScalePolicy::new(spec(), at(0), 2);
    let out = tick(&mut p, 2, None, 2, false);
    assert_eq!((out.replicas, out.want, out.reason), (None, None, PolicyReason::NoDecision));
    // A new leader resumes a service that went inactive at 60 and has proxied since 20: at 62 the grace
    // period (30 s) of proxying has passed, so it goes to zero without waiting another 30 s.
    let mut p = ScalePolicy::resume(spec(), Phase::Inactive { since: at(60) }, Mode::Proxy, at(20), true);
    let out = tick(&mut p, 62, decision(0, 0), 1, true);
    assert_eq!((out.replicas, out.reason), (Some(0), PolicyReason::ScaledToZero));
}
