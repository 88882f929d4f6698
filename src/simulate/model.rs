//! The simulation: the decider and the scale policy driven tick by tick, with modelled pods for load traces.
//!
//! Load traces: every second the trace's load is recorded into the service's windows (whatever the pods, as
//! the activator reports load at zero); the decider ticks every 2 s from the first row, and at once in a
//! second where load arrives at zero replicas (the activator's first-request stat). Applied replicas start
//! pods that become ready `--pod-startup` later; scale-downs remove not-ready pods first. The activator is
//! taken to be in the request path from the tick after proxy mode was chosen.
//!
//! Decider-input traces: the decider is created at the first row's time with its ready count and called for
//! every row; the replicas start at that ready count.

use std::time::Duration;

use ebb_config::{Metric, Mode, ServiceConfig};
use ebb_kpa::{
    Decider, DeciderSpec, MetricWindows, Observed, PolicyInput, PolicySpec, ScalePolicy, Timestamp,
};

use super::trace::{DeciderRow, LoadRow};

/// One decider tick, as written to the output CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Seconds.
    pub t: f64,
    /// Ready pods the decider saw.
    pub ready: u32,
    /// The window averages it decided on (`None`: no data).
    pub observed: Option<Observed>,
    /// The decider's own result (`None`: no decision).
    pub desired: Option<u32>,
    /// Replicas after bounds and scale-to-zero.
    pub replicas: u32,
    /// Excess burst capacity (`None`: no decision).
    pub ebc: Option<i64>,
    /// Whether the decider is in panic.
    pub panic: bool,
    /// Routing mode.
    pub mode: Mode,
    /// The decider's reason, then the policy's when it changed the count.
    pub reason: String,
}

/// What happened after the load last stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ToZero {
    /// The trace never had load.
    NoLoad,
    /// The load never stopped before the end.
    NeverStopped,
    /// Load stopped at `stopped` and replicas reached 0 at `zero`.
    Reached {
        /// When the load last went to 0.
        stopped: f64,
        /// When replicas reached 0.
        zero: f64,
    },
    /// Load stopped at `stopped`; replicas were not 0 by the end.
    NotReached {
        /// When the load last went to 0.
        stopped: f64,
    },
}

/// Totals over the run, for the summary on stderr.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Simulated span in seconds.
    pub duration: f64,
    /// Integral of pods (starting or ready) over time.
    pub pod_seconds: f64,
    /// Most pods at once.
    pub peak_pods: u32,
    /// Time the load exceeded the ready pods' capacity.
    pub under_capacity_secs: f64,
    /// Per-pod capacity used for that.
    pub capacity_per_pod: f64,
    /// Transitions of the replicas from 0 to more.
    pub scale_from_zero: u32,
    /// Time to zero after the load last stopped.
    pub to_zero: ToZero,
}

/// A finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// One per decider tick.
    pub rows: Vec<Row>,
    /// `(t, load)` samples for the plot.
    pub load: Vec<(f64, f64)>,
    /// Totals.
    pub summary: Summary,
}

/// The decider and the policy of the simulated service, and its applied replicas.
struct Service {
    decider: Decider,
    policy: ScalePolicy,
    replicas: u32,
    scale_from_zero: u32,
}

impl Service {
    fn new(config: &ServiceConfig, now: Timestamp, ready: u32, replicas: u32) -> Result<Self, String> {
        let decider = Decider::new(DeciderSpec::from_scaling(&config.scaling, true), now, ready)
            .map_err(|e| format!("cannot build the decider: {e}"))?;
        let policy = ScalePolicy::new(PolicySpec::from_config(config, true), now, ready);
        Ok(Self { decider, policy, replicas, scale_from_zero: 0 })
    }

    fn tick(&mut self, t: f64, now: Timestamp, ready: u32, observed: Option<Observed>) -> Row {
        let outcome = self.decider.decide(now, Some(ready), observed);
        // The activator-only endpoints take effect one tick after proxy mode was chosen.
        let activator_in_path = self.policy.mode() == Mode::Proxy && self.policy.mode_since() < now;
        let decision = outcome.decision().copied();
        let out =
            self.policy.tick(PolicyInput { now, decision, ready, activator_in_path, activators_ready: true });
        if let Some(replicas) = out.replicas {
            if self.replicas == 0 && replicas > 0 {
                self.scale_from_zero += 1;
            }
            self.replicas = replicas;
        }
        let mut reason = outcome.to_string();
        // The decider's reason already says when nothing was decided.
        if !matches!(out.reason.kind(), "desired" | "no_decision") {
            reason.push_str(" | ");
            reason.push_str(&out.reason.to_string());
        }
        Row {
            t,
            ready,
            observed,
            desired: decision.map(|d| d.desired),
            replicas: self.replicas,
            ebc: decision.map(|d| d.excess_burst_capacity),
            panic: self.decider.in_panic(),
            mode: out.mode,
            reason,
        }
    }
}

/// Tracks when the load last stopped and when replicas reached zero after it.
#[derive(Default)]
struct ZeroTracker {
    seen_load: bool,
    stopped: Option<f64>,
    zero: Option<f64>,
}

impl ZeroTracker {
    fn observe(&mut self, t: f64, load: f64, replicas: u32) {
        if load > 0.0 {
            self.seen_load = true;
            self.stopped = None;
            self.zero = None;
        } else if self.seen_load && self.stopped.is_none() {
            self.stopped = Some(t);
        }
        if self.stopped.is_some() && self.zero.is_none() && replicas == 0 {
            self.zero = Some(t);
        }
    }

    fn result(&self) -> ToZero {
        match (self.seen_load, self.stopped, self.zero) {
            (false, _, _) => ToZero::NoLoad,
            (true, None, _) => ToZero::NeverStopped,
            (true, Some(stopped), Some(zero)) => ToZero::Reached { stopped, zero },
            (true, Some(stopped), None) => ToZero::NotReached { stopped },
        }
    }
}

/// Per-pod capacity: the concurrency limit when there is one (and the metric is concurrency), otherwise the
/// per-pod target total (container-concurrency-target-default, requests-per-second-target-default or the
/// `target` annotation).
pub fn capacity_per_pod(config: &ServiceConfig) -> f64 {
    let cc = config.data_plane.container_concurrency;
    if config.scaling.metric == Metric::Concurrency && cc > 0 {
        f64::from(cc)
    } else {
        config.scaling.total_target
    }
}

/// Simulates a load trace with modelled pods.
pub fn simulate_load(
    config: &ServiceConfig,
    trace: &[LoadRow],
    pod_startup: Duration,
) -> Result<Run, String> {
    let (start, end) = (trace[0].t, trace[trace.len() - 1].t);
    let capacity = capacity_per_pod(config);
    let mut windows =
        MetricWindows::from_spec(&config.scaling).map_err(|e| format!("cannot build the windows: {e}"))?;
    let t0 = Timestamp::from_secs(start);
    // A new service: the Deployment starts with initial-scale pods, none ready yet.
    let initial = config.scaling.initial_scale;
    let mut service = Service::new(config, t0, 0, initial)?;
    // Ready times, in increasing order (new pods are always the last to become ready).
    let mut pods: Vec<Timestamp> = vec![t0 + pod_startup; initial as usize];
    let mut rows = Vec::new();
    let mut load_samples = Vec::new();
    let mut zero = ZeroTracker::default();
    let (mut pod_seconds, mut peak, mut under) = (0.0, initial, 0.0);
    let mut next_row = 0;
    for s in start..=end {
        while next_row + 1 < trace.len() && trace[next_row + 1].t <= s {
            next_row += 1;
        }
        let load = trace[next_row].value;
        let now = Timestamp::from_secs(s);
        let ready = pods.iter().take_while(|&&ready_at| ready_at <= now).count() as u32;
        windows.record(now, load).map_err(|e| format!("t={s}: {e}"))?;
        let poked = service.replicas == 0 && load > 0.0;
        if (s - start) % 2 == 0 || poked {
            rows.push(service.tick(s as f64, now, ready, windows.observe(now)));
            let target = service.replicas as usize;
            if target < pods.len() {
                pods.truncate(target);
            } else {
                pods.resize(target, now + pod_startup);
            }
        }
        if load > f64::from(ready) * capacity {
            under += 1.0;
        }
        pod_seconds += pods.len() as f64;
        peak = peak.max(pods.len() as u32);
        load_samples.push((s as f64, load));
        zero.observe(s as f64, load, service.replicas);
    }
    let summary = Summary {
        duration: (end - start + 1) as f64,
        pod_seconds,
        peak_pods: peak,
        under_capacity_secs: under,
        capacity_per_pod: capacity,
        scale_from_zero: service.scale_from_zero,
        to_zero: zero.result(),
    };
    Ok(Run { rows, load: load_samples, summary })
}

/// Replays a decider-input trace, one tick per row.
pub fn simulate_decider(config: &ServiceConfig, trace: &[DeciderRow]) -> Result<Run, String> {
    let capacity = capacity_per_pod(config);
    let first = trace[0];
    let mut service = Service::new(config, timestamp(first.t), first.ready, first.ready)?;
    let mut rows = Vec::new();
    let mut load_samples = Vec::new();
    let mut zero = ZeroTracker::default();
    let (mut pod_seconds, mut peak, mut under) = (0.0, first.ready, 0.0);
    for (i, row) in trace.iter().enumerate() {
        let observed = row.observed.map(|(stable, panic)| Observed { stable, panic });
        let out = service.tick(row.t, timestamp(row.t), row.ready, observed);
        // The replicas hold until the next row; the panic value stands for the current load.
        let span = trace.get(i + 1).map_or(0.0, |next| next.t - row.t);
        let load = observed.map_or(0.0, |o| o.panic);
        pod_seconds += f64::from(out.replicas) * span;
        peak = peak.max(out.replicas);
        if load > f64::from(row.ready) * capacity {
            under += span;
        }
        load_samples.push((row.t, load));
        zero.observe(row.t, load, out.replicas);
        rows.push(out);
    }
    let summary = Summary {
        duration: trace[trace.len() - 1].t - first.t,
        pod_seconds,
        peak_pods: peak,
        under_capacity_secs: under,
        capacity_per_pod: capacity,
        scale_from_zero: service.scale_from_zero,
        to_zero: zero.result(),
    };
    Ok(Run { rows, load: load_samples, summary })
}

fn timestamp(secs: f64) -> Timestamp {
    Timestamp::from_duration(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}
