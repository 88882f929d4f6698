//! One service's autoscaling state: its windows, decider and scale policy, built from its [`ServiceConfig`],
//! ticked with an explicit `now`, and what it last decided (a status snapshot and the last decisions). No I/O.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use ebb_config::{Mode, ScalerClass, ServiceConfig};
use ebb_kpa::{
    Decider, DeciderSpec, Error, MetricWindows, Observed, Phase, PolicyInput, PolicySpec, ScalePolicy,
    Timestamp,
};
use serde::Serialize;

/// Wall-clock milliseconds since the Unix epoch: the clock of [`DecisionRecord::unix_ms`], which whoever
/// times a decision's effect (the scale patch, a benchmark) reads too.
pub fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One tick's decision, as logged, kept for `/debug/decisions` and shown by `/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// Seconds since the autoscaler's epoch.
    pub at_secs: f64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Stable-window average (service total); `None` without data.
    pub observed_stable: Option<f64>,
    /// Panic-window average (service total); `None` without data.
    pub observed_panic: Option<f64>,
    /// Ready pods.
    pub ready: u32,
    /// The decider's count, before bounds and scale-to-zero; `None` without a decision.
    pub decider_desired: Option<u32>,
    /// The replicas in force after this tick.
    pub desired: u32,
    /// Whether this tick changed the replicas.
    pub changed: bool,
    /// Excess burst capacity; `None` without a decision.
    pub excess_burst_capacity: Option<i64>,
    /// Whether the decider is in panic.
    pub panic: bool,
    /// The routing mode after this tick.
    pub mode: &'static str,
    /// The phase after this tick.
    pub phase: &'static str,
    /// The decider's reason kind (`stable`, `panic`, `no_data`, ...).
    pub decider_kind: &'static str,
    /// The policy's reason kind (`desired`, `grace_period`, `scaled_to_zero`, ...).
    pub policy_kind: &'static str,
    /// Both reasons; written as one sentence (its `Display`, and in JSON).
    pub reason: Why,
    /// The ticks this record stands for: consecutive ticks that decided alike (the same replicas, ready pods,
    /// mode, phase, panic and reason kinds) are kept as one, with the latest one's inputs and time.
    pub ticks: u32,
    /// When the first of those ticks decided, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
}

/// Why a tick decided as it did, as values: the sentence is written only when something reads it (a log
/// line, `/debug/decisions`, a status annotation), not on every tick of every service. Formatting it on
/// each tick cost time in the tick and about 150 bytes per kept record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Why {
    decider: ebb_kpa::Outcome,
    policy: ebb_kpa::PolicyReason,
    paused: bool,
}

impl Why {
    /// Whether `other` gives the same reasons: the decider's kind and count, the policy's kind, paused or not
    /// (the numbers a reason quotes besides may differ).
    fn same_kinds(&self, other: &Why) -> bool {
        let count = |w: &Why| w.decider.decision().map(|d| d.desired);
        self.decider.kind() == other.decider.kind()
            && count(self) == count(other)
            && self.policy.kind() == other.policy.kind()
            && self.paused == other.paused
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.decider)?;
        if !matches!(self.policy.kind(), "desired" | "no_decision") {
            write!(f, "; {}", self.policy)?;
        }
        if self.paused {
            f.write_str("; paused: replicas left as they are")?;
        }
        Ok(())
    }
}

impl Serialize for Why {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A service's state for `/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Replicas in force.
    pub desired: u32,
    /// Ready pods.
    pub ready: u32,
    /// Pods the source knows (starting, ready or terminating).
    pub pods: u32,
    /// `serve` or `proxy`.
    pub mode: &'static str,
    /// `activating`, `active`, `inactive` or `zero`.
    pub phase: &'static str,
    /// Per-pod target the decider divides by.
    pub target: f64,
    /// Last stable-window average.
    pub observed_stable: Option<f64>,
    /// Last panic-window average.
    pub observed_panic: Option<f64>,
    /// Whether the decider is in panic.
    pub panic: bool,
    /// Last excess burst capacity.
    pub excess_burst_capacity: Option<i64>,
    /// Why the replicas are what they are.
    pub last_reason: String,
    /// `ebb.dev/paused` or HPA class: the autoscaler does not act.
    pub paused: bool,
}

/// What a tick asks the caller to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    /// New replicas, when they changed.
    pub replicas: Option<u32>,
    /// New mode, when it changed.
    pub mode: Option<Mode>,
}

/// One service's windows, decider and policy, and what they last decided.
#[derive(Debug)]
pub struct ServiceController {
    config: ServiceConfig,
    windows: MetricWindows,
    decider: Decider,
    policy: ScalePolicy,
    replicas: u32,
    mode: Mode,
    /// The last decisions, oldest first; the newest is the one in force.
    history: VecDeque<Kept>,
    history_len: usize,
}

/// A decision as kept in the history: what [`DecisionRecord`] holds less what its reason already says (the
/// decider's count and excess capacity, both reasons' kinds). 168 bytes against the record's 248; a service
/// whose decision holds keeps one of them, however many ticks it stays.
#[derive(Debug, Clone, Copy)]
struct Kept {
    at_secs: f64,
    unix_ms: u64,
    observed: Option<ebb_kpa::Observed>,
    ready: u32,
    desired: u32,
    changed: bool,
    panic: bool,
    mode: Mode,
    phase: &'static str,
    reason: Why,
    /// The ticks folded into this one ([`DecisionRecord::ticks`]).
    ticks: u32,
    /// Milliseconds from the first of them to this one.
    span_ms: u32,
}

impl Kept {
    /// Whether `next` decided as this one did, so that it may stand in for both. A change is a record of its
    /// own: it is never folded, nor folded into.
    fn alike(&self, next: &Kept) -> bool {
        !self.changed
            && !next.changed
            && (self.desired, self.ready, self.mode, self.phase, self.panic)
                == (next.desired, next.ready, next.mode, next.phase, next.panic)
            && self.reason.same_kinds(&next.reason)
    }

    fn record(&self) -> DecisionRecord {
        let decision = self.reason.decider.decision();
        DecisionRecord {
            at_secs: self.at_secs,
            unix_ms: self.unix_ms,
            observed_stable: self.observed.map(|o| o.stable),
            observed_panic: self.observed.map(|o| o.panic),
            ready: self.ready,
            decider_desired: decision.map(|d| d.desired),
            desired: self.desired,
            changed: self.changed,
            excess_burst_capacity: decision.map(|d| d.excess_burst_capacity),
            panic: self.panic,
            mode: self.mode.as_str(),
            phase: self.phase,
            decider_kind: self.reason.decider.kind().as_str(),
            policy_kind: self.reason.policy.kind(),
            reason: self.reason,
            ticks: self.ticks,
            since_unix_ms: self.unix_ms - u64::from(self.span_ms),
        }
    }
}

impl ServiceController {
    /// A service first seen at `now` with `ready` ready pods and `replicas` replicas in force.
    pub fn new(
        config: ServiceConfig,
        now: Timestamp,
        ready: u32,
        replicas: u32,
        history_len: usize,
    ) -> Result<Self, Error> {
        let windows = MetricWindows::from_spec(&config.scaling)?;
        let decider = Decider::new(DeciderSpec::from_scaling(&config.scaling, true), now, ready)?;
        let policy = ScalePolicy::new(PolicySpec::from_config(&config, true), now, ready);
        let mode = policy.mode();
        Ok(Self {
            config,
            windows,
            decider,
            policy,
            replicas,
            mode,
            history: VecDeque::new(),
            history_len: history_len.max(1),
        })
    }

    /// Resumes the policy's clocks from persisted state (a new leader): `phase` (`None` keeps the current
    /// one) and `mode`, entered at `mode_since`. The windows and the decider start empty as they do.
    pub fn resume(&mut self, phase: Option<Phase>, mode: Mode, mode_since: Timestamp) {
        let phase = phase.unwrap_or_else(|| self.policy.phase());
        // Past activation means the initial scale was reached once (Knative marks it so on activation).
        let initialized = self.policy.initialized() || !matches!(phase, Phase::Activating { .. });
        let spec = self.policy.spec().clone();
        self.policy = ScalePolicy::resume(spec, phase, mode, mode_since, initialized);
        self.mode = mode;
    }

    /// Applies a changed configuration, keeping the windows' data and the policy's clocks.
    pub fn update(&mut self, config: ServiceConfig) -> Result<(), Error> {
        let s = &config.scaling;
        self.windows.resize(s.stable_window, s.panic_window(), s.aggregation)?;
        self.decider.update(DeciderSpec::from_scaling(s, true))?;
        self.policy.update(PolicySpec::from_config(&config, true));
        self.config = config;
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The replicas in force (the last ones applied).
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the autoscaler leaves this service alone (`ebb.dev/paused`, or an HPA-class service).
    pub fn is_paused(&self) -> bool {
        self.config.paused || self.config.scaling.class != ScalerClass::Kpa
    }

    /// Adds one second's service total.
    pub fn record(&mut self, at: Timestamp, value: f64) -> Result<(), Error> {
        self.windows.record(at, value)
    }

    /// The window averages at `now`.
    pub fn observe(&self, now: Timestamp) -> Option<Observed> {
        self.windows.observe(now)
    }

    /// Decides at `now` on the load windows read at `load_at` (at most `now`: the time of the last collected
    /// second when the caller knows it). `ready` is `None` when the pods could not be counted (no decision
    /// then).
    pub fn tick(
        &mut self,
        now: Timestamp,
        load_at: Timestamp,
        ready: Option<u32>,
        activator_in_path: bool,
        activators_ready: bool,
    ) -> (DecisionRecord, Actions) {
        let observed = self.windows.observe(load_at.min(now));
        let outcome = self.decider.decide(now, ready, observed);
        let decision = outcome.decision().copied();
        let ready_n = ready.unwrap_or(0);
        let out = self.policy.tick(PolicyInput {
            now,
            decision,
            ready: ready_n,
            activator_in_path,
            activators_ready,
        });
        let previous = self.replicas;
        let replicas = if self.is_paused() { None } else { out.replicas };
        if let Some(n) = replicas {
            self.replicas = n;
        }
        let mode_changed = out.mode != self.mode;
        self.mode = out.mode;
        let reason = Why { decider: outcome, policy: out.reason, paused: self.is_paused() };
        let unix_ms = unix_ms_now();
        let kept = Kept {
            at_secs: now.since_epoch().as_secs_f64(),
            unix_ms,
            observed,
            ready: ready_n,
            desired: self.replicas,
            changed: self.replicas != previous,
            panic: self.decider.in_panic(),
            mode: out.mode,
            phase: out.phase.name(),
            reason,
            ticks: 1,
            span_ms: 0,
        };
        self.keep(kept);
        let actions = Actions {
            replicas: (self.replicas != previous).then_some(self.replicas),
            mode: mode_changed.then_some(self.mode),
        };
        (kept.record(), actions)
    }

    /// Adds `kept` to the history, or folds it into the last record when it decided alike.
    fn keep(&mut self, kept: Kept) {
        match self.history.back_mut() {
            Some(last) if last.alike(&kept) => {
                let since = last.unix_ms - u64::from(last.span_ms);
                let span_ms = u32::try_from(kept.unix_ms.saturating_sub(since)).unwrap_or(u32::MAX);
                *last = Kept { ticks: last.ticks.saturating_add(1), span_ms, ..kept };
                return;
            }
            _ => {}
        }
        if self.history.len() == self.history_len {
            self.history.pop_front();
        } else if self.history.len() == self.history.capacity() {
            // Grown by doubling up to exactly the records kept (a deque left to itself would reach 32 for 30).
            let more = self.history.len().max(2).min(self.history_len - self.history.len());
            self.history.reserve_exact(more);
        }
        self.history.push_back(kept);
    }

    /// The last decisions, oldest first.
    pub fn history(&self) -> Vec<DecisionRecord> {
        self.history.iter().map(Kept::record).collect()
    }

    /// The status snapshot, with the pod counts the caller knows.
    pub fn status(&self, namespace: &str, name: &str, ready: u32, pods: u32) -> ServiceStatus {
        let last = self.history.back().map(Kept::record);
        let last = last.as_ref();
        ServiceStatus {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            desired: self.replicas,
            ready,
            pods,
            mode: self.mode.as_str(),
            phase: self.policy.phase().name(),
            target: self.config.scaling.target(),
            observed_stable: last.and_then(|l| l.observed_stable),
            observed_panic: last.and_then(|l| l.observed_panic),
            panic: self.decider.in_panic(),
            excess_burst_capacity: last.and_then(|l| l.excess_burst_capacity),
            last_reason: last.map_or_else(|| "no decision yet".to_owned(), |l| l.reason.to_string()),
            paused: self.is_paused(),
        }
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.policy.phase()
    }

    /// The stable window (pods younger than it are sampled last).
    pub fn stable_window(&self) -> Duration {
        self.config.scaling.stable_window
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ebb_config::{GlobalConfig, resolve_service};

    use super::*;

    fn config(annotations: &[(&str, &str)]) -> ServiceConfig {
        let mut global = BTreeMap::new();
        global.insert("allow-zero-initial-scale".to_owned(), "true".to_owned());
        global.insert("scale-to-zero-grace-period".to_owned(), "2s".to_owned());
        let global = GlobalConfig::from_data(&global).unwrap().value;
        let annotations: BTreeMap<String, String> =
            annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        resolve_service(&annotations, &global).unwrap().value
    }

    /// A tick at second `t` with every replica ready, the activator in the path in proxy mode.
    fn tick_at(c: &mut ServiceController, t: u64) {
        let (now, ready, in_path) = (Timestamp::from_secs(t), c.replicas(), c.mode() == Mode::Proxy);
        c.tick(now, now, Some(ready), in_path, true);
    }

    #[test]
    fn a_kept_decision_is_a_third_smaller_than_its_record() {
        // Kept up to 30 times for each of up to 10,000 services.
        assert!(std::mem::size_of::<Kept>() <= 168, "{}", std::mem::size_of::<Kept>());
        assert!(std::mem::size_of::<DecisionRecord>() >= 240);
    }

    #[test]
    fn ticks_that_decide_alike_are_kept_as_one_record_with_the_latest_inputs() {
        let mut c = ServiceController::new(config(&[]), Timestamp::ZERO, 1, 1, 30).unwrap();
        // A steady load: every tick keeps 1 replica for the same reasons, with slightly different inputs.
        for t in 1..=20 {
            c.record(Timestamp::from_secs(t), 0.5 + t as f64 / 100.0).unwrap();
            if t % 2 == 0 {
                tick_at(&mut c, t);
            }
        }
        let history = c.history();
        assert_eq!(history.len(), 1, "{history:#?}");
        let steady = &history[0];
        assert_eq!((steady.ticks, steady.desired, steady.changed), (10, 1, false));
        assert_eq!(steady.at_secs, 20.0, "the latest tick's time");
        assert!(steady.observed_stable.is_some_and(|o| o > 0.5), "the latest tick's inputs: {steady:?}");
        assert!(steady.since_unix_ms <= steady.unix_ms);
        // A step of load: the change is a record of its own, and what follows it another.
        for t in 21..=30 {
            c.record(Timestamp::from_secs(t), 300.0).unwrap();
            if t % 2 == 0 {
                tick_at(&mut c, t);
            }
        }
        // The same load on: the ticks after the change decide alike, and the change keeps its record.
        for t in 31..=40 {
            c.record(Timestamp::from_secs(t), 300.0).unwrap();
            if t % 2 == 0 {
                tick_at(&mut c, t);
            }
        }
        let history = c.history();
        assert!(history.len() >= 3, "{history:#?}");
        assert!(history[1].changed && history[1].desired > 1 && history[1].ticks == 1, "{:?}", history[1]);
        let (change, last) = (&history[history.len() - 2], &history[history.len() - 1]);
        assert!(change.changed && change.ticks == 1, "{history:#?}");
        assert!(!last.changed && last.ticks > 1 && last.desired == change.desired, "{history:#?}");
        assert_eq!(history.iter().map(|r| r.ticks).sum::<u32>(), 20, "every tick is counted once");
    }

    #[test]
    fn a_change_keeps_its_own_record_while_the_ticks_after_it_decide_alike() {
        let config = config(&[("autoscaling.knative.dev/min-scale", "1")]);
        let mut c = ServiceController::new(config, Timestamp::ZERO, 5, 5, 30).unwrap();
        // No load, and the 5 pods stay ready (a scale-down's pods take a while to go): replicas come down.
        for t in 1..=200 {
            let now = Timestamp::from_secs(t);
            c.record(now, 0.0).unwrap();
            if t % 2 == 0 {
                c.tick(now, now, Some(5), false, true);
            }
        }
        let history = c.history();
        let changes: Vec<&DecisionRecord> = history.iter().filter(|r| r.changed).collect();
        assert!(!changes.is_empty() && changes.iter().all(|r| r.ticks == 1), "{history:#?}");
        let last = history.last().unwrap();
        assert!(!last.changed && last.ticks > 1 && last.desired < 5, "{history:#?}");
    }

    #[test]
    fn scales_from_zero_on_load_and_back_to_zero_when_idle() {
        let config = config(&[
            ("autoscaling.knative.dev/initial-scale", "0"),
            ("autoscaling.knative.dev/window", "6s"),
            ("ebb.dev/container-concurrency", "4"),
        ]);
        let mut c = ServiceController::new(config, Timestamp::ZERO, 0, 0, 8).unwrap();
        assert_eq!(c.replicas(), 0);
        // First request at zero: the activator's concurrency-1 stat.
        c.record(Timestamp::from_secs(1), 1.0).unwrap();
        let (record, actions) = c.tick(Timestamp::from_secs(1), Timestamp::from_secs(1), Some(0), true, true);
        assert_eq!(actions.replicas, Some(1), "{record:?}");
        assert_eq!(record.mode, "proxy");
        // Load of 10 for a while with 1 pod ready: more pods.
        let mut t = 2;
        let mut max = 0;
        while t < 12 {
            c.record(Timestamp::from_secs(t), 10.0).unwrap();
            if t % 2 == 0 {
                tick_at(&mut c, t);
                max = max.max(c.replicas());
            }
            t += 1;
        }
        assert!(max > 1, "scaled to {max}");
        // Idle: zeros, then no data; it must reach 0.
        let mut zero_at = None;
        while t < 60 {
            if t < 30 {
                c.record(Timestamp::from_secs(t), 0.0).unwrap();
            }
            if t % 2 == 0 {
                tick_at(&mut c, t);
                if c.replicas() == 0 && zero_at.is_none() {
                    zero_at = Some(t);
                }
            }
            t += 1;
        }
        assert!(zero_at.is_some(), "{:#?}", c.history());
        assert_eq!(c.history().len(), 8);
    }

    #[test]
    fn the_reason_is_one_sentence_in_logs_and_in_json() {
        // The reason is one sentence, in logs and in JSON alike: the decider's, then what was done.
        let mut paused =
            ServiceController::new(config(&[("ebb.dev/paused", "true")]), Timestamp::ZERO, 1, 1, 8).unwrap();
        paused.record(Timestamp::from_secs(1), 30.0).unwrap();
        let (record, _) = paused.tick(Timestamp::from_secs(2), Timestamp::from_secs(2), Some(1), false, true);
        let sentence = record.reason.to_string();
        assert!(sentence.ends_with("; paused: replicas left as they are"), "{sentence}");
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["reason"], sentence.as_str());
    }

    #[test]
    fn a_window_annotation_change_resizes_the_windows_and_keeps_their_data() {
        let close = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() < 1e-9);
        let mut c = ServiceController::new(config(&[]), Timestamp::ZERO, 1, 1, 8).unwrap();
        // 1 a second for seconds 1..=54, then 7 for 55..=60.
        for t in 1..=60 {
            c.record(Timestamp::from_secs(t), if t <= 54 { 1.0 } else { 7.0 }).unwrap();
        }
        let now = Timestamp::from_secs(60);
        // Default 60 s window: seconds 1..=60, (54 + 6 x 7) / 60 = 1.6; panic 6 s: 55..=60 = 7.
        let before = c.observe(now).unwrap();
        assert!(close(Some(before.stable), 1.6) && close(Some(before.panic), 7.0), "{before:?}");

        c.update(config(&[("autoscaling.knative.dev/window", "12s")])).unwrap();
        assert_eq!(c.stable_window(), Duration::from_secs(12));
        // 12 s window: seconds 49..=60, (6 x 1 + 6 x 7) / 12 = 4; panic 10 % of 12 s rounds to 1 s: 7.
        let (record, _) = c.tick(now, now, Some(1), false, true);
        assert!(close(record.observed_stable, 4.0), "{record:?}");
        assert!(close(record.observed_panic, 7.0), "{record:?}");
        // New data goes into the resized ring: 7 at 61, seconds 50..=61 = (5 x 1 + 7 x 7) / 12 = 4.5.
        c.record(Timestamp::from_secs(61), 7.0).unwrap();
        assert!(close(c.observe(Timestamp::from_secs(61)).map(|o| o.stable), 4.5));
    }
}
