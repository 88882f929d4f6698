//! The Kubernetes controller's own metrics, beside the engine's (`ebb_autoscaler_*`): leadership, whether
//! the API server is reachable, stuck pods, writers that fight over replicas, and configuration errors.

use std::sync::Arc;

use ebb_config::ServiceId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of a service's series. The names are the service id's own, shared (nine series of every service
/// carry them), not copies.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Service (Deployment) name.
    pub service: Arc<str>,
}

/// Labels of stuck pods by kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockedLabels {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Service (Deployment) name.
    pub service: Arc<str>,
    /// `unschedulable`, `image_pull` or `crash_loop`.
    pub kind: &'static str,
}

/// Labels of held scale-downs by reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeldLabels {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Service (Deployment) name.
    pub service: Arc<str>,
    /// One of [`HOLD_REASONS`].
    pub reason: &'static str,
}

/// Why a scale-down is held: the API server is unreachable, or an activator has requests queued.
pub const HOLD_REASONS: [&str; 2] = ["api_unreachable", "activator_queued"];

/// Labels of admission reviews by what the webhook answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// One of [`ADMISSION_RESULTS`].
    pub result: &'static str,
}

/// What the webhook answered: a sidecar added, the pod admitted as it was (it had one, or is not a pod
/// creation), the pod refused (bad annotations, caches not listed yet), or a request that was not a readable
/// AdmissionReview.
pub const ADMISSION_RESULTS: [&str; 4] = ["injected", "unchanged", "denied", "bad_request"];

/// Labels of reconcile passes by what they visited.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    /// What the pass visited: `all` (a full resync, or a change that concerns every service) or `dirty` (the
    /// services marked).
    pub kind: &'static str,
}

/// The admission webhook's families, cloned into its server.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    /// Reviews answered, by result.
    pub admissions: Family<AdmissionLabels, Counter>,
    /// From a review's arrival until its answer.
    pub admission_duration: Histogram,
}

impl WebhookMetrics {
    fn new() -> Self {
        let admissions: Family<AdmissionLabels, Counter> = Family::default();
        for result in ADMISSION_RESULTS {
            let _ = admissions.get_or_create(&AdmissionLabels { result });
        }
        // 100 µs to about 2 s: a review waits for the caches at most briefly.
        Self { admissions, admission_duration: Histogram::new(exponential_buckets(0.0001, 3.0, 10)) }
    }

    /// Counts one answer.
    pub fn answered(&self, result: &'static str, took: std::time::Duration) {
        self.admissions.get_or_create(&AdmissionLabels { result }).inc();
        self.admission_duration.observe(took.as_secs_f64());
    }
}

/// The controller's metric families.
#[derive(Debug)]
pub struct KubeMetrics {
    registry: Registry,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
    /// The buckets this replica holds (`--buckets` above 1; 0 otherwise).
    pub buckets_held: Gauge,
    /// 1 while the API server answers.
    pub api_reachable: Gauge,
    /// Pods that will not become ready without help.
    pub blocked_pods: Family<BlockedLabels, Gauge>,
    /// Times another writer changed a service's replicas.
    pub external_changes: Family<ServiceLabels, Counter>,
    /// Invalid annotations or ConfigMap seen (each distinct problem once).
    pub config_errors: Family<ServiceLabels, Counter>,
    /// Scale changes applied.
    pub scale_changes: Family<ServiceLabels, Counter>,
    /// Scale-downs held back, by reason.
    pub scale_downs_held: Family<HeldLabels, Counter>,
    /// From a decision that changed replicas until the API server accepted the scale patch.
    pub scale_patch: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    /// Reconcile passes, by what they visited.
    pub reconcile_passes: Family<PassLabels, Counter>,
    /// Services visited by reconcile passes.
    pub reconcile_services: Counter,
    /// How long a reconcile pass took, its writes included.
    pub reconcile_duration: Histogram,
    /// Services the leader acted on whose work is not done yet (visited again every `sync_interval`).
    pub reconcile_unsettled: Gauge,
    /// The admission webhook's.
    pub webhook: WebhookMetrics,
}

/// Scale patch buckets, seconds: 1 ms to about a minute (a patch retried with backoff).
fn patch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 3.0, 11))
}

impl Default for KubeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl KubeMetrics {
    /// Registered under `ebb_autoscaler_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ebb_autoscaler");
        let m = Self {
            registry: Registry::default(),
            leader: Gauge::default(),
            buckets_held: Gauge::default(),
            api_reachable: Gauge::default(),
            blocked_pods: Family::default(),
            external_changes: Family::default(),
            config_errors: Family::default(),
            scale_changes: Family::default(),
            scale_downs_held: Family::default(),
            scale_patch: Family::new_with_constructor(patch_histogram),
            reconcile_passes: Family::default(),
            reconcile_services: Counter::default(),
            // 100 µs to about 6.5 s.
            reconcile_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            reconcile_unsettled: Gauge::default(),
            webhook: WebhookMetrics::new(),
        };
        for kind in ["all", "dirty"] {
            let _ = m.reconcile_passes.get_or_create(&PassLabels { kind });
        }
        registry.register("leader", "1 while this replica holds the Lease and acts", m.leader.clone());
        registry.register(
            "buckets_held",
            "Buckets whose services this replica decides and scales (with --buckets above 1; else 0)",
            m.buckets_held.clone(),
        );
        registry.register(
            "api_reachable",
            "1 while the Kubernetes API server answers",
            m.api_reachable.clone(),
        );
        registry.register(
            "blocked_pods",
            "Pods stuck unschedulable, pulling their image or crash-looping",
            m.blocked_pods.clone(),
        );
        registry.register(
            "external_replica_changes",
            "Times another writer changed a service's replicas",
            m.external_changes.clone(),
        );
        registry.register("config_errors", "Invalid configurations reported", m.config_errors.clone());
        registry.register("scale_changes", "Replica changes applied to Deployments", m.scale_changes.clone());
        registry.register(
            "scale_downs_held",
            "Scale-downs held back, by reason: the API server unreachable or requests queued in an activator",
            m.scale_downs_held.clone(),
        );
        registry.register_with_unit(
            "scale_patch",
            "Time from a decision that changed replicas until the API server accepted the scale patch",
            Unit::Seconds,
            m.scale_patch.clone(),
        );
        registry.register(
            "reconcile_passes",
            "Reconcile passes, by what they visited: all services, or those marked by events since the last",
            m.reconcile_passes.clone(),
        );
        registry.register(
            "reconcile_services",
            "Services visited by reconcile passes",
            m.reconcile_services.clone(),
        );
        registry.register(
            "reconcile_unsettled",
            "Services whose work is not done yet (replicas not as decided, a held scale-down, a write in backoff, \
             the activator not yet verified in the path), visited again every sync interval",
            m.reconcile_unsettled.clone(),
        );
        registry.register_with_unit(
            "reconcile_pass",
            "Time a reconcile pass took, its API writes included",
            Unit::Seconds,
            m.reconcile_duration.clone(),
        );
        registry.register(
            "webhook_admissions",
            "Admission reviews the webhook answered, by result: injected, unchanged, denied or bad_request",
            m.webhook.admissions.clone(),
        );
        registry.register_with_unit(
            "webhook_admission",
            "Time from an admission review's arrival until the webhook's answer",
            Unit::Seconds,
            m.webhook.admission_duration.clone(),
        );
        Self { registry, ..m }
    }

    /// Creates a service's series at zero, so dashboards and alerts see them before any event.
    pub fn add_service(&self, id: &ServiceId) {
        let labels = Self::labels(id);
        for family in [&self.external_changes, &self.config_errors, &self.scale_changes] {
            let _ = family.get_or_create(&labels);
        }
        let _ = self.scale_patch.get_or_create(&labels);
        for reason in HOLD_REASONS {
            let _ = self.scale_downs_held.get_or_create(&Self::held_labels(id, reason));
        }
        for kind in super::blocked::KINDS {
            let _ = self.blocked_pods.get_or_create(&Self::blocked_labels(id, kind));
        }
    }

    /// Drops a removed service's series.
    pub fn remove_service(&self, id: &ServiceId) {
        let labels = Self::labels(id);
        for family in [&self.external_changes, &self.config_errors, &self.scale_changes] {
            family.remove(&labels);
        }
        self.scale_patch.remove(&labels);
        for reason in HOLD_REASONS {
            self.scale_downs_held.remove(&Self::held_labels(id, reason));
        }
        for kind in super::blocked::KINDS {
            self.blocked_pods.remove(&Self::blocked_labels(id, kind));
        }
    }

    /// Labels of a service's stuck pods of one kind.
    pub fn blocked_labels(id: &ServiceId, kind: &'static str) -> BlockedLabels {
        BlockedLabels { namespace: id.namespace.clone(), service: id.name.clone(), kind }
    }

    /// Labels of a service's held scale-downs for one reason.
    pub fn held_labels(id: &ServiceId, reason: &'static str) -> HeldLabels {
        HeldLabels { namespace: id.namespace.clone(), service: id.name.clone(), reason }
    }

    /// Labels of a service.
    pub fn labels(id: &ServiceId) -> ServiceLabels {
        ServiceLabels { namespace: id.namespace.clone(), service: id.name.clone() }
    }

    /// The metrics page: these families, then what `engine` appends (the engine's page, which ends with
    /// `# EOF`), written into one string rather than joined from copies. One OpenMetrics document, which
    /// allows no blank line and one `# EOF`.
    pub fn page(&self, engine: impl FnOnce(&mut String)) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        let families = out.trim_end().trim_end_matches("# EOF").trim_end().len();
        out.truncate(families);
        out.push('\n');
        engine(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::metrics::Metrics;

    #[test]
    fn the_page_is_one_openmetrics_document() {
        let kube = KubeMetrics::new();
        kube.add_service(&ServiceId::new("demo", "chat"));
        let page = kube.page(|out| Metrics::new().encode_into(out));
        assert!(
            page.contains("ebb_autoscaler_leader ") && page.contains("ebb_autoscaler_tick_duration_seconds")
        );
        assert!(!page.lines().any(str::is_empty), "a blank line ends an OpenMetrics page early:\n{page}");
        assert_eq!(page.matches("# EOF").count(), 1);
        assert!(page.ends_with("# EOF\n"), "{page}");
    }
}
