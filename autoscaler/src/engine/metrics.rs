//! The autoscaler's Prometheus metrics (`ebb_autoscaler_*`), labelled by `namespace` and `service`. A service's
//! series exist, at zero, from the moment it is known, except its decision counters by reason kind: each
//! appears at the service's first decision of its kind. Made at zero, the 24 kinds were half of the metrics
//! page (about 4 KiB a service, 40 MB at 10,000 services) and 240,000 series for Prometheus to keep; counted
//! every tick, a kind's first count is all that `rate()` misses of them. The histograms stay at zero from the
//! start: a series' first observation is invisible to `rate()`, and a service's first cold start matters.
//!
//! Each service's series are looked up once, when it is added ([`ServiceSeries`]): a tick then sets them
//! directly. Looking each up by its label set on every tick (about 10 hashed lookups and 4 allocations per
//! service) was a large part of a tick at 10,000 services. The label sets share the service id's strings.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebb_config::ServiceId;
use ebb_process::sync::Locked;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::controller::{DecisionRecord, ServiceStatus};

/// Every decider reason kind (label values of `decisions_total`).
const DECIDER_KINDS: [&str; 9] = [
    "stable",
    "panic",
    "scale_up_limited",
    "scale_down_limited",
    "activation_scale",
    "panic_hold",
    "scale_down_delay",
    "no_data",
    "pods_unknown",
];

/// Every policy reason kind (label values of `policy_decisions_total`).
const POLICY_KINDS: [&str; 15] = [
    "desired",
    "min_scale",
    "initial_scale",
    "max_scale",
    "no_decision",
    "scale_to_zero_disabled",
    "active_window",
    "deactivated",
    "awaiting_activator",
    "pod_retention",
    "grace_period",
    "scaled_to_zero",
    "at_zero",
    "activating",
    "activation_timed_out",
];

/// Labels of every per-service series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service's namespace.
    pub namespace: Arc<str>,
    /// The service's name.
    pub service: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    namespace: Arc<str>,
    service: Arc<str>,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Family<ServiceLabels, Histogram, fn() -> Histogram>;

/// Cold-start decision buckets, seconds: from 10 µs (decided as the stat arrives) to a minute.
fn decision_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 4.0, 12))
}

/// Every metric family of the autoscaler.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    desired: Family<ServiceLabels, Gauge>,
    ready: Family<ServiceLabels, Gauge>,
    actual: Family<ServiceLabels, Gauge>,
    stable: Family<ServiceLabels, FloatGauge>,
    panic_observed: Family<ServiceLabels, FloatGauge>,
    target: Family<ServiceLabels, FloatGauge>,
    panic_mode: Family<ServiceLabels, Gauge>,
    ebc: Family<ServiceLabels, Gauge>,
    serve_mode: Family<ServiceLabels, Gauge>,
    decisions: Family<KindLabels, Counter>,
    policy_decisions: Family<KindLabels, Counter>,
    scrape_errors: Family<ServiceLabels, Counter>,
    stats_received: Family<SourceLabels, Counter>,
    tick_duration: Histogram,
    cold_start_decision: HistogramFamily,
    scrape_connections_kept: Gauge,
    scrape_connections_limit: Gauge,
    /// The length of the last page, to reserve for the next.
    page_len: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The families, registered under `ebb_autoscaler_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ebb_autoscaler");
        let m = Self {
            registry: Registry::default(),
            desired: Family::default(),
            ready: Family::default(),
            actual: Family::default(),
            stable: Family::default(),
            panic_observed: Family::default(),
            target: Family::default(),
            panic_mode: Family::default(),
            ebc: Family::default(),
            serve_mode: Family::default(),
            decisions: Family::default(),
            policy_decisions: Family::default(),
            scrape_errors: Family::default(),
            stats_received: Family::default(),
            // Doubling from 0.1 ms to 3.3 s: p50 and p99 of a large tick within a factor of two (the
            // benchmark reads them from here).
            tick_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            cold_start_decision: Family::new_with_constructor(decision_histogram),
            scrape_connections_kept: Gauge::default(),
            scrape_connections_limit: Gauge::default(),
            page_len: AtomicUsize::new(8 * 1024),
        };
        registry.register("desired_pods", "Replicas the autoscaler wants", m.desired.clone());
        registry.register("ready_pods", "Ready pods", m.ready.clone());
        registry.register(
            "actual_pods",
            "Pods that exist (starting, ready or terminating)",
            m.actual.clone(),
        );
        registry.register("observed_stable", "Stable-window average load (service total)", m.stable.clone());
        registry.register(
            "observed_panic",
            "Panic-window average load (service total)",
            m.panic_observed.clone(),
        );
        registry.register("target", "Per-pod target", m.target.clone());
        registry.register("panic_mode", "1 while the decider is in panic", m.panic_mode.clone());
        registry.register("excess_burst_capacity", "Excess burst capacity", m.ebc.clone());
        registry.register(
            "serve_mode",
            "1 in serve mode, 0 with the activator in the path",
            m.serve_mode.clone(),
        );
        registry.register("decisions", "Decisions by the decider's reason kind", m.decisions.clone());
        registry.register(
            "policy_decisions",
            "Decisions by the scale policy's reason kind",
            m.policy_decisions.clone(),
        );
        registry.register("scrape_errors", "Pod stat scrapes that failed", m.scrape_errors.clone());
        registry.register("stats_received", "Stats received, by source", m.stats_received.clone());
        registry.register_with_unit(
            "tick_duration",
            "Time one tick of every service takes",
            Unit::Seconds,
            m.tick_duration.clone(),
        );
        registry.register_with_unit(
            "cold_start_decision",
            "Cold starts: first stat showing load at zero until the decision to scale up",
            Unit::Seconds,
            m.cold_start_decision.clone(),
        );
        registry.register(
            "scrape_connections_kept",
            "Scrape connections kept open between seconds",
            m.scrape_connections_kept.clone(),
        );
        registry.register(
            "scrape_connections_limit",
            "The most scrape connections kept; pods beyond it are scraped on a new connection each second",
            m.scrape_connections_limit.clone(),
        );
        for source in ["pod", "activator"] {
            let _ = m.stats_received.get_or_create(&SourceLabels { source });
        }
        Self { registry, ..m }
    }

    fn labels(id: &ServiceId) -> ServiceLabels {
        ServiceLabels { namespace: id.namespace.clone(), service: id.name.clone() }
    }

    /// Creates a new service's series at zero, and hands them over for the service's own use.
    pub fn add_service(&self, id: &ServiceId) -> ServiceSeries {
        let l = Self::labels(id);
        ServiceSeries {
            desired: self.desired.get_or_create_owned(&l),
            ready: self.ready.get_or_create_owned(&l),
            actual: self.actual.get_or_create_owned(&l),
            stable: self.stable.get_or_create_owned(&l),
            panic_observed: self.panic_observed.get_or_create_owned(&l),
            target: self.target.get_or_create_owned(&l),
            panic_mode: self.panic_mode.get_or_create_owned(&l),
            ebc: self.ebc.get_or_create_owned(&l),
            serve_mode: self.serve_mode.get_or_create_owned(&l),
            scrape_errors: self.scrape_errors.get_or_create_owned(&l),
            cold_start_decision: self.cold_start_decision.get_or_create_owned(&l),
            decisions: KindCounters::new(&self.decisions, &DECIDER_KINDS),
            policy_decisions: KindCounters::new(&self.policy_decisions, &POLICY_KINDS),
            labels: l,
        }
    }

    fn kind(id: &ServiceId, kind: &'static str) -> KindLabels {
        KindLabels { namespace: id.namespace.clone(), service: id.name.clone(), kind }
    }

    /// Drops a removed service's series.
    pub fn remove_service(&self, id: &ServiceId) {
        let l = Self::labels(id);
        for family in
            [&self.desired, &self.ready, &self.actual, &self.panic_mode, &self.ebc, &self.serve_mode]
        {
            family.remove(&l);
        }
        for family in [&self.stable, &self.panic_observed, &self.target] {
            family.remove(&l);
        }
        self.scrape_errors.remove(&l);
        self.cold_start_decision.remove(&l);
        for kind in DECIDER_KINDS {
            self.decisions.remove(&Self::kind(id, kind));
        }
        for kind in POLICY_KINDS {
            self.policy_decisions.remove(&Self::kind(id, kind));
        }
    }

    /// Counts received stats.
    pub fn stats_received(&self, source: &'static str, count: u64) {
        self.stats_received.get_or_create(&SourceLabels { source }).inc_by(count);
    }

    /// Sets the scrape connections kept now and the most that may be.
    pub fn scrape_connections(&self, kept: usize, limit: usize) {
        self.scrape_connections_kept.set(i64::try_from(kept).unwrap_or(i64::MAX));
        self.scrape_connections_limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Records how long a tick of every service took.
    pub fn tick_took(&self, took: Duration) {
        self.tick_duration.observe(took.as_secs_f64());
    }

    /// The Prometheus text (OpenMetrics, ending in `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the Prometheus text (OpenMetrics, ending in `# EOF`) to `out`, reserving what the last page
    /// took: at 10,000 services a page is about 40 MB, and growing a string to it by doubling held twice that.
    pub fn encode_into(&self, out: &mut String) {
        out.reserve(self.page_len.load(Ordering::Relaxed));
        let start = out.len();
        let _ = encode(out, &self.registry);
        self.page_len.store(out.len() - start, Ordering::Relaxed);
    }
}

/// One service's series, as [`Metrics::add_service`] created them (each a handle on the registered one).
#[derive(Debug)]
pub struct ServiceSeries {
    desired: Gauge,
    ready: Gauge,
    actual: Gauge,
    stable: FloatGauge,
    panic_observed: FloatGauge,
    target: FloatGauge,
    panic_mode: Gauge,
    ebc: Gauge,
    serve_mode: Gauge,
    scrape_errors: Counter,
    cold_start_decision: Histogram,
    decisions: KindCounters<{ DECIDER_KINDS.len() }>,
    policy_decisions: KindCounters<{ POLICY_KINDS.len() }>,
    labels: ServiceLabels,
}

/// A service's counters by reason kind, each made at its first count. A service meets a few of the kinds, so
/// the made ones are a short list (a slot per kind was 384 bytes a service, most of them never filled).
#[derive(Debug)]
struct KindCounters<const N: usize> {
    family: Family<KindLabels, Counter>,
    kinds: &'static [&'static str; N],
    /// The counters made, by their kind's index.
    made: Mutex<Vec<(u8, Counter)>>,
}

impl<const N: usize> KindCounters<N> {
    fn new(family: &Family<KindLabels, Counter>, kinds: &'static [&'static str; N]) -> Self {
        const { assert!(N <= u8::MAX as usize) };
        Self { family: family.clone(), kinds, made: Mutex::default() }
    }

    /// Counts one decision of `kind` (one of the kinds named at creation; another is not counted).
    fn count(&self, service: &ServiceLabels, kind: &str) {
        let Some(i) = self.kinds.iter().position(|k| *k == kind) else { return };
        let mut made = self.made.locked();
        if let Some((_, counter)) = made.iter().find(|(k, _)| usize::from(*k) == i) {
            counter.inc();
            return;
        }
        let labels = KindLabels {
            namespace: service.namespace.clone(),
            service: service.service.clone(),
            kind: self.kinds[i],
        };
        let counter = self.family.get_or_create_owned(&labels);
        counter.inc();
        made.push((i as u8, counter));
    }
}

impl ServiceSeries {
    /// Counts a decision and sets the gauges from it.
    pub fn decided(&self, record: &DecisionRecord) {
        self.decisions.count(&self.labels, record.decider_kind);
        self.policy_decisions.count(&self.labels, record.policy_kind);
        self.desired.set(i64::from(record.desired));
        self.panic_mode.set(i64::from(record.panic));
        self.serve_mode.set(i64::from(record.mode == "serve"));
        if let Some(ebc) = record.excess_burst_capacity {
            self.ebc.set(ebc);
        }
        self.stable.set(record.observed_stable.unwrap_or(0.0));
        self.panic_observed.set(record.observed_panic.unwrap_or(0.0));
    }

    /// Sets the gauges that do not come from a decision.
    pub fn observe_status(&self, status: &ServiceStatus) {
        self.ready.set(i64::from(status.ready));
        self.actual.set(i64::from(status.pods));
        self.target.set(status.target);
        self.desired.set(i64::from(status.desired));
    }

    /// Records how long a cold start waited for the decision to scale up.
    pub fn cold_start_decided(&self, took: Duration) {
        self.cold_start_decision.observe(took.as_secs_f64());
    }

    /// Counts a failed scrape.
    pub fn scrape_failed(&self) {
        self.scrape_errors.inc();
    }
}
