//! The activator's Prometheus metrics (`ebb_activator_*`), labelled by `namespace` and `service`. A service's
//! series exist from the moment it is known, at zero. Per request the cost is a couple of atomic adds on
//! handles cached in the service; queue depth, in-flight and ready pods are read when scraped.

use std::time::Duration;

use ebb_config::names::METRIC_PREFIX;
use ebb_queue_proxy::error::{ALL_REASONS, ProxyError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::routing::ServiceKey;
use crate::service::Service;

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
    fn of(key: &ServiceKey) -> Self {
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
    queued: Family<ServiceLabels, Gauge>,
    in_flight: Family<ServiceLabels, Gauge>,
    ready_pods: Family<ServiceLabels, Gauge>,
    stats_dropped: Gauge,
}

/// One service's counters, cached so the request path does not look labels up.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    forwarded: Counter,
    queue_wait: Histogram,
}

impl ServiceMetrics {
    /// Handles that no registry exports (for a service built outside an activator, as in tests).
    pub fn unregistered() -> Self {
        Self { forwarded: Counter::default(), queue_wait: Histogram::new(WAIT_BUCKETS) }
    }

    /// Counts a request forwarded to a pod.
    pub fn forwarded(&self) {
        self.forwarded.inc();
    }

    /// Records how long a request waited for capacity.
    pub fn waited(&self, wait: Duration) {
        self.queue_wait.observe(wait.as_secs_f64());
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
        let stats_dropped = Gauge::default();
        registry.register(
            "stats_dropped",
            "Stat frames dropped because an autoscaler was unreachable or slow",
            stats_dropped.clone(),
        );
        Self { registry, forwarded, rejected, queue_wait, queued, in_flight, ready_pods, stats_dropped }
    }

    /// Creates a service's series at zero and returns its cached handles.
    pub fn service(&self, key: &ServiceKey) -> ServiceMetrics {
        let labels = ServiceLabels::of(key);
        for (_, reason) in ALL_REASONS {
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
        }
    }

    /// Forgets a removed service's series.
    pub fn remove_service(&self, key: &ServiceKey) {
        let labels = ServiceLabels::of(key);
        self.forwarded.remove(&labels);
        self.queue_wait.remove(&labels);
        for family in [&self.queued, &self.in_flight, &self.ready_pods] {
            family.remove(&labels);
        }
        for (_, reason) in ALL_REASONS {
            let labels =
                RejectLabels { namespace: labels.namespace.clone(), service: labels.service.clone(), reason };
            self.rejected.remove(&labels);
        }
    }

    /// Counts a request answered with an error (`service` is `None` when no service was found).
    pub fn rejected(&self, service: Option<&ServiceKey>, error: &ProxyError) {
        let (namespace, service) = service
            .map_or((String::new(), String::new()), |key| (key.namespace.to_string(), key.name.to_string()));
        self.rejected.get_or_create(&RejectLabels { namespace, service, reason: error.reason() }).inc();
    }

    /// Encodes every metric, after reading the gauges from the services.
    pub fn encode(&self, services: &[std::sync::Arc<Service>], stats_dropped: u64) -> String {
        for service in services {
            let labels = ServiceLabels::of(&service.key);
            self.queued.get_or_create(&labels).set(service.breaker.queued() as i64);
            self.in_flight.get_or_create(&labels).set(service.breaker.in_flight() as i64);
            self.ready_pods.get_or_create(&labels).set(service.status().ready as i64);
        }
        self.stats_dropped.set(stats_dropped as i64);
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
