//! The queue-proxy's Prometheus metrics (`ebb_queue_proxy_*`). Every series exists from the start at zero and
//! every label is bounded. The per-request cost is a few atomic adds and two histogram observations: counters
//! are looked up once here and kept as handles, and the in-flight and queued gauges are read from the breaker
//! and the stats when scraped rather than updated per request.

use std::time::Duration;

use ebb_config::names::METRIC_PREFIX;
use ebb_http::error::{Classified, Origin, ProxyError};
use ebb_http::timeouts::TimeoutKind;
use http::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Latency buckets in seconds: 100 µs to 10 minutes.
const LATENCY_BUCKETS: [f64; 21] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Status classes used as label values, by `status / 100`.
const STATUS_CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Handles to every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests_by_class: [Counter; 6],
    time_to_first_byte: Histogram,
    duration: Histogram,
    breaker_rejections: Counter,
    timeouts: [Counter; TimeoutKind::ALL.len()],
    errors: Family<Labels2, Counter>,
    in_flight: Gauge,
    queued: Gauge,
    ready: Gauge,
}

impl Metrics {
    /// Registers every metric under `ebb_queue_proxy_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(format!("{METRIC_PREFIX}_queue_proxy"));
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by HTTP status class (gRPC errors are answered with HTTP 200)",
            requests.clone(),
        );
        let requests_by_class =
            STATUS_CLASSES.map(|class| requests.get_or_create(&[("status_class", class)]).clone());
        let new_histogram = || Histogram::new(LATENCY_BUCKETS);
        let time_to_first_byte = new_histogram();
        registry.register_with_unit(
            "time_to_first_byte",
            "Time from arrival to the upstream's response headers, queueing included",
            Unit::Seconds,
            time_to_first_byte.clone(),
        );
        let duration = new_histogram();
        registry.register_with_unit(
            "request_duration",
            "Time from arrival to the end of the response body (streams end late)",
            Unit::Seconds,
            duration.clone(),
        );
        let breaker_rejections = Counter::default();
        registry.register(
            "breaker_rejections",
            "Requests refused with 503 because the concurrency limit and queue were full",
            breaker_rejections.clone(),
        );
        let timeouts_family = Family::<Labels, Counter>::default();
        registry.register("timeouts", "Requests cut by a timeout, by kind", timeouts_family.clone());
        let timeouts =
            TimeoutKind::ALL.map(|kind| timeouts_family.get_or_create(&[("kind", kind.label())]).clone());
        let errors = Family::<Labels2, Counter>::default();
        registry.register("errors", "Failed requests by origin and reason", errors.clone());
        for error in ProxyError::every_kind() {
            let _ = errors.get_or_create(&[("origin", error.origin().label()), ("reason", error.reason())]);
        }
        let in_flight = Gauge::default();
        registry.register(
            "in_flight",
            "Requests being served (forwarded, streaming a response or an open upgrade); queued ones excluded",
            in_flight.clone(),
        );
        let queued = Gauge::default();
        registry.register("queued", "Requests waiting for a concurrency slot", queued.clone());
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when the user container is ready and the proxy is not draining",
            ready.clone(),
        );
        Self {
            registry,
            requests_by_class,
            time_to_first_byte,
            duration,
            breaker_rejections,
            timeouts,
            errors,
            in_flight,
            queued,
            ready,
        }
    }

    /// Counts an answered request by its status class.
    pub fn response(&self, status: StatusCode) {
        let class = (status.as_u16() / 100) as usize;
        self.requests_by_class[if class < STATUS_CLASSES.len() { class } else { 0 }].inc();
    }

    /// Observes the time to the response headers.
    pub fn first_byte(&self, elapsed: Duration) {
        self.time_to_first_byte.observe(elapsed.as_secs_f64());
    }

    /// Observes the time to the end of the response body.
    pub fn finished(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts an error, its timeout kind and its breaker rejection where it is one.
    pub fn error(&self, error: &ProxyError) {
        self.counter_for(error.origin(), error.reason()).inc();
        if let Some(kind) = error.timeout() {
            self.timeout(kind);
        }
        if *error == ProxyError::Overloaded {
            self.breaker_rejections.inc();
        }
    }

    fn counter_for(&self, origin: Origin, reason: &'static str) -> Counter {
        self.errors.get_or_create(&[("origin", origin.label()), ("reason", reason)]).clone()
    }

    /// Counts a timeout.
    pub fn timeout(&self, kind: TimeoutKind) {
        let index = TimeoutKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.timeouts[index].inc();
    }

    /// Encodes every metric in the Prometheus text format, after setting the gauges read at scrape time.
    pub fn encode(&self, in_flight: u64, queued: u64, ready: bool) -> String {
        self.in_flight.set(in_flight as i64);
        self.queued.set(queued as i64);
        self.ready.set(ready as i64);
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_exist_at_zero_and_count() {
        let metrics = Metrics::new();
        let text = metrics.encode(0, 0, false);
        for series in [
            "ebb_queue_proxy_requests_total{status_class=\"5xx\"} 0",
            "ebb_queue_proxy_timeouts_total{kind=\"idle\"} 0",
            "ebb_queue_proxy_breaker_rejections_total 0",
            "ebb_queue_proxy_errors_total{origin=\"upstream\",reason=\"upstream_refused\"} 0",
            "ebb_queue_proxy_time_to_first_byte_seconds_count 0",
            "ebb_queue_proxy_request_duration_seconds_count 0",
            "ebb_queue_proxy_in_flight 0",
            "ebb_queue_proxy_queued 0",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
        metrics.error(&ProxyError::Overloaded);
        metrics.response(StatusCode::SERVICE_UNAVAILABLE);
        metrics.error(&ProxyError::QueueTimeout(TimeoutKind::Total));
        let text = metrics.encode(3, 1, true);
        assert!(text.contains("ebb_queue_proxy_breaker_rejections_total 1"));
        assert!(text.contains("ebb_queue_proxy_requests_total{status_class=\"5xx\"} 1"));
        assert!(text.contains("ebb_queue_proxy_timeouts_total{kind=\"total\"} 1"));
        assert!(text.contains("ebb_queue_proxy_in_flight 3"));
    }
}
