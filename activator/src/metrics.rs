//! The activator's Prometheus metrics (`ebb_activator_*`), labelled by `namespace` and `service`. A service's
//! series exist from the moment it is known, at zero. Per request the cost is a couple of atomic adds on
//! handles cached in the service; queue depth, in-flight and ready pods are read when scraped.

use std::time::Instant;

use ebb_config::ServiceId;
use ebb_config::names::METRIC_PREFIX;
use ebb_http::error::Classified;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::cold_start::{Phases, Timeline};
use crate::error::ActivatorError;

/// Seconds a request may wait queued: from 1 ms to the 10-minute activation timeout.
const WAIT_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0];

/// Labels of every per-service series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service's namespace (empty for requests that named no known service).
    pub namespace: String,
    /// The service's name.
    pub service: String,
}

impl ServiceLabels {
    fn of(key: &ServiceId) -> Self {
        Self { namespace: key.namespace.to_string(), service: key.name.to_string() }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    namespace: String,
    service: String,
    reason: &'static str,
}

type HistogramFamily = Family<ServiceLabels, Histogram, fn() -> Histogram>;

/// Every metric family of the activator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    forwarded: Family<ServiceLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    queue_wait: HistogramFamily,
    cold_start: [HistogramFamily; 4],
    queued: Family<ServiceLabels, Gauge>,
    in_flight: Family<ServiceLabels, Gauge>,
    ready_pods: Family<ServiceLabels, Gauge>,
    stats_dropped: Counter,
}

/// One service's counters, cached so the request path does not look labels up.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    forwarded: Counter,
    queue_wait: Histogram,
    /// Pod created, pod ready, first byte, whole wait: as [`COLD_START_FAMILIES`].
    cold_start: [Histogram; 4],
}

/// One service's gauges at the moment the metrics are read.
#[derive(Debug, Clone)]
pub struct ServiceGauges {
    /// The service.
    pub key: ServiceId,
    /// Requests waiting for capacity.
    pub queued: usize,
    /// Requests this activator is forwarding.
    pub in_flight: usize,
    /// Pods that answered their probe.
    pub ready: usize,
}

/// The cold-start histograms: name and help, in [`ServiceMetrics`]' order.
const COLD_START_FAMILIES: [(&str, &str); 4] = [
    ("cold_start_pod_created", "Cold starts: first request at zero until the service's first pod exists"),
    ("cold_start_pod_ready", "Cold starts: first pod exists until it answers the activator's probe"),
    ("cold_start_first_byte", "Requests that waited for a cold start: pod ready until response headers"),
    ("cold_start_wait", "Requests that waited for a cold start: arrival until response headers"),
];

impl ServiceMetrics {
    /// Handles that no registry exports (for a service built outside an activator, as in tests).
    pub fn unregistered() -> Self {
        let histogram = || Histogram::new(WAIT_BUCKETS);
        Self {
            forwarded: Counter::default(),
            queue_wait: histogram(),
            cold_start: std::array::from_fn(|_| histogram()),
        }
    }

    /// Counts a request forwarded to a pod.
    pub fn forwarded(&self) {
        self.forwarded.inc();
    }

    /// Starts timing a request's wait for capacity; the wait is recorded when the timer is dropped, whatever
    /// ended it: admission, the activation timeout, pods that cannot start, or a client that went away (its
    /// request's future is dropped mid-wait).
    pub fn queue_timer(&self, since: Instant) -> QueueTimer<'_> {
        QueueTimer { histogram: Some(&self.queue_wait), since }
    }

    /// Records a cold start that ended: how long until the first pod existed and until it was ready.
    pub fn cold_start_ended(&self, timeline: &Timeline) {
        let (Some(ready), pod_seen) = (timeline.ready, timeline.pod_seen) else { return };
        let pod_seen = pod_seen.unwrap_or(ready);
        self.cold_start[0].observe(pod_seen.saturating_duration_since(timeline.began).as_secs_f64());
        self.cold_start[1].observe(ready.saturating_duration_since(pod_seen).as_secs_f64());
    }

    /// Records a request that waited for a cold start and got its response headers.
    pub fn cold_start_answered(&self, phases: &Phases) {
        self.cold_start[2].observe(phases.forward.as_secs_f64());
        self.cold_start[3].observe(phases.total().as_secs_f64());
    }
}

/// Records a request's wait for capacity when dropped (see [`ServiceMetrics::queue_timer`]).
#[derive(Debug)]
pub struct QueueTimer<'a> {
    histogram: Option<&'a Histogram>,
    since: Instant,
}

impl QueueTimer<'_> {
    /// Records nothing: the request was refused without waiting (its queue was full).
    pub fn discard(mut self) {
        self.histogram = None;
    }
}

impl Drop for QueueTimer<'_> {
    fn drop(&mut self) {
        if let Some(histogram) = self.histogram {
            histogram.observe(self.since.elapsed().as_secs_f64());
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under `ebb_activator_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(format!("{METRIC_PREFIX}_activator"));
        let forwarded = Family::default();
        registry.register("forwarded", "Requests forwarded to a pod", forwarded.clone());
        let rejected = Family::default();
        registry.register("rejected", "Requests answered with an error, by reason", rejected.clone());
        let queue_wait: HistogramFamily = Family::new_with_constructor(|| Histogram::new(WAIT_BUCKETS));
        registry.register_with_unit(
            "queue_wait",
            "Time requests waited in the activator for a pod with capacity",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let cold_start = COLD_START_FAMILIES.map(|(name, help)| {
            let family: HistogramFamily = Family::new_with_constructor(|| Histogram::new(WAIT_BUCKETS));
            registry.register_with_unit(name, help, Unit::Seconds, family.clone());
            family
        });
        let queued = Family::default();
        registry.register("queued", "Requests waiting for capacity", queued.clone());
        let in_flight = Family::default();
        registry.register("in_flight", "Requests forwarded and not yet finished", in_flight.clone());
        let ready_pods = Family::default();
        registry.register(
            "ready_pods",
            "Pods that answered their probe and take requests",
            ready_pods.clone(),
        );
        let stats_dropped = Counter::default();
        registry.register(
            "stats_dropped",
            "Stat frames dropped since start because an autoscaler was unreachable or slow",
            stats_dropped.clone(),
        );
        Self {
            registry,
            forwarded,
            rejected,
            queue_wait,
            cold_start,
            queued,
            in_flight,
            ready_pods,
            stats_dropped,
        }
    }

    /// Creates a service's series at zero and returns its cached handles.
    pub fn service(&self, key: &ServiceId) -> ServiceMetrics {
        let labels = ServiceLabels::of(key);
        for reason in ActivatorError::every_kind().iter().map(Classified::reason) {
            let _ = self.rejected.get_or_create(&RejectLabels {
                namespace: labels.namespace.clone(),
                service: labels.service.clone(),
                reason,
            });
        }
        for family in [&self.queued, &self.in_flight, &self.ready_pods] {
            let _ = family.get_or_create(&labels);
        }
        ServiceMetrics {
            forwarded: self.forwarded.get_or_create(&labels).clone(),
            queue_wait: self.queue_wait.get_or_create(&labels).clone(),
            cold_start: self.cold_start.each_ref().map(|family| family.get_or_create(&labels).clone()),
        }
    }

    /// Forgets a removed service's series.
    pub fn remove_service(&self, key: &ServiceId) {
        let labels = ServiceLabels::of(key);
        self.forwarded.remove(&labels);
        self.queue_wait.remove(&labels);
        for family in &self.cold_start {
            family.remove(&labels);
        }
        for family in [&self.queued, &self.in_flight, &self.ready_pods] {
            family.remove(&labels);
        }
        for reason in ActivatorError::every_kind().iter().map(Classified::reason) {
            let labels =
                RejectLabels { namespace: labels.namespace.clone(), service: labels.service.clone(), reason };
            self.rejected.remove(&labels);
        }
    }

    /// Counts a request answered with an error (`service` is `None` when no service was found).
    pub fn rejected(&self, service: Option<&ServiceId>, error: &ActivatorError) {
        let (namespace, service) = service
            .map_or((String::new(), String::new()), |key| (key.namespace.to_string(), key.name.to_string()));
        self.rejected.get_or_create(&RejectLabels { namespace, service, reason: error.reason() }).inc();
    }

    /// Encodes every metric, after setting the gauges to the services' readings and the dropped-stat counter
    /// to the sink's count.
    pub fn encode(&self, services: &[ServiceGauges], stats_dropped: u64) -> String {
        for service in services {
            let labels = ServiceLabels::of(&service.key);
            self.queued.get_or_create(&labels).set(service.queued as i64);
            self.in_flight.get_or_create(&labels).set(service.in_flight as i64);
            self.ready_pods.get_or_create(&labels).set(service.ready as i64);
        }
        // The sink counts since start; the counter follows it and never goes back (concurrent scrapes race
        // harmlessly: the larger reading wins).
        self.stats_dropped.inner().fetch_max(stats_dropped, std::sync::atomic::Ordering::Relaxed);
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
