//! KPA decider micro-benchmarks: one decision for one service, one full tick (record, average, decide) for
//! one service, and a tick over 10,000 services (record, average, decide, then the bounds and scale-to-zero
//! policy; and the runtime's `ServiceController::tick`, which adds the decision record). Goals: at most 1 µs
//! per decision and 10,000 services in at most 20 ms on one core; window state at most 4 KiB per service at
//! the default 60 s window.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ebb_autoscaler::engine::ServiceController;
use ebb_config::{Mode, ServiceConfig};
use ebb_kpa::{
    Decider, DeciderSpec, MetricWindows, Observed, PolicyInput, PolicySpec, ScalePolicy, Timestamp,
};

const SERVICES: usize = 10_000;

/// The default configuration (60 s stable window, 6 s panic window, target 70, TBC 211).
fn spec() -> DeciderSpec {
    DeciderSpec::from_scaling(&ServiceConfig::default().scaling, true)
}

/// One service: its windows, decider, scale policy and a load level that decides how busy it is.
struct Service {
    windows: MetricWindows,
    decider: Decider,
    policy: ScalePolicy,
    load: f64,
    ready: u32,
}

fn services(start: Timestamp) -> Vec<Service> {
    let scaling = ServiceConfig::default().scaling;
    (0..SERVICES)
        .map(|i| {
            let mut windows = MetricWindows::from_spec(&scaling).unwrap();
            // A full window of history, loads from idle to a few hundred concurrent requests.
            let load = (i % 400) as f64;
            for s in 0..60 {
                windows.record(Timestamp::from_secs(start.whole_secs() - 60 + s), load).unwrap();
            }
            let ready = (load / 70.0).ceil() as u32;
            let decider = Decider::new(spec(), start, ready).unwrap();
            let policy =
                ScalePolicy::new(PolicySpec::from_config(&ServiceConfig::default(), true), start, ready);
            Service { windows, decider, policy, load, ready }
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let scaling = ServiceConfig::default().scaling;
    let probe = MetricWindows::from_spec(&scaling).unwrap();
    let decider = Decider::new(spec(), Timestamp::ZERO, 1).unwrap();
    eprintln!(
        "state per service at the default 60 s window: windows {} bytes, decider {} bytes",
        probe.memory_bytes(),
        decider.memory_bytes()
    );

    let mut group = c.benchmark_group("decider");
    group.throughput(Throughput::Elements(1));
    // The decision alone, from given window averages.
    let mut decider = Decider::new(spec(), Timestamp::ZERO, 1).unwrap();
    let mut now = Timestamp::from_secs(1_000);
    group.bench_function("decide", |b| {
        b.iter(|| {
            now = now + Duration::from_secs(2);
            decider.decide(now, black_box(Some(3)), black_box(Some(Observed { stable: 150.0, panic: 180.0 })))
        })
    });
    // A service's whole tick: two seconds of stats into the windows, both averages, the decision.
    let mut service = services(Timestamp::from_secs(1_000)).swap_remove(150);
    let mut now = Timestamp::from_secs(1_000);
    group.bench_function("record_observe_decide", |b| {
        b.iter(|| {
            for _ in 0..2 {
                now = now + Duration::from_secs(1);
                service.windows.record(now, black_box(service.load)).unwrap();
            }
            let observed = service.windows.observe(now);
            service.decider.decide(now, Some(service.ready), observed)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("tick");
    group.throughput(Throughput::Elements(SERVICES as u64));
    let mut all = services(Timestamp::from_secs(1_000));
    let mut now = Timestamp::from_secs(1_000);
    // Each service's whole tick as the autoscaler runs it: a stat, both averages, the decision, then bounds
    // and scale-to-zero (idle services go through their grace period to zero and stay there).
    group.bench_function("10000_services", |b| {
        b.iter(|| {
            now = now + Duration::from_secs(2);
            let mut total = 0u64;
            for s in &mut all {
                s.windows.record(now, s.load).unwrap();
                let observed = s.windows.observe(now);
                let decision = s.decider.decide(now, Some(s.ready), observed).decision().copied();
                let out = s.policy.tick(PolicyInput {
                    now,
                    decision,
                    ready: s.ready,
                    activator_in_path: s.policy.mode() == Mode::Proxy,
                    activators_ready: true,
                });
                total += u64::from(out.replicas.unwrap_or(0));
            }
            black_box(total)
        })
    });
    // The same through the runtime's ServiceController, which also builds the tick's decision record (its
    // reason sentence) and keeps the last ones for /debug/decisions.
    let start = Timestamp::from_secs(1_000);
    let mut controllers: Vec<(ServiceController, f64)> = services(start)
        .into_iter()
        .map(|s| {
            let mut c = ServiceController::new(ServiceConfig::default(), start, s.ready, s.ready, 8).unwrap();
            for t in 0..60 {
                c.record(Timestamp::from_secs(start.whole_secs() - 60 + t), s.load).unwrap();
            }
            (c, s.load)
        })
        .collect();
    let mut now = start;
    group.bench_function("10000_controllers", |b| {
        b.iter(|| {
            now = now + Duration::from_secs(2);
            let mut total = 0u64;
            for (c, load) in &mut controllers {
                c.record(now, *load).unwrap();
                let (ready, in_path) = (c.replicas(), c.mode() == Mode::Proxy);
                let (record, _) = c.tick(now, now, Some(ready), in_path, true);
                total += u64::from(record.desired);
            }
            black_box(total)
        })
    });
    group.finish();
}

criterion_group!(decider, benches);
criterion_main!(decider);
