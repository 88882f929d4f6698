//! The names every component shares (docs/architecture.md, "Ports and headers"): labels, annotations that are not
//! configuration, headers, ports, paths and the metric prefix.

/// Label on a Deployment and its pod template naming the service; its value must equal the Deployment's name.
pub const LABEL_SERVICE: &str = "ebb.dev/service";
/// Label on the public Service of a scale target that is not a Deployment, naming its kind
/// (`StatefulSet`): the Service then carries the target's ebb annotations, so that the activator learns the
/// service's data-plane settings without knowing (or having the right to read) the target's kind.
pub const LABEL_TARGET_KIND: &str = "ebb.dev/target-kind";
/// Label marking objects that ebb creates and owns.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on ebb's own objects.
pub const MANAGED_BY_EBB: &str = "ebb";

/// Label naming which ebb component a pod of `ebb-system` runs (values below).
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// [`LABEL_COMPONENT`] of activator pods; the autoscaler and the activators watch them.
pub const COMPONENT_ACTIVATOR: &str = "activator";
/// [`LABEL_COMPONENT`] of autoscaler pods; the activators stream stats to every Ready one.
pub const COMPONENT_AUTOSCALER: &str = "autoscaler";
/// Label on every ebb component pod.
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// Value of [`LABEL_PART_OF`].
pub const PART_OF_EBB: &str = "ebb";
/// Annotation with which Kubernetes picks the cheapest pods to delete on scale-down.
pub const ANNOTATION_POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Prefix of Knative's autoscaling annotations.
pub const KNATIVE_PREFIX: &str = "autoscaling.knative.dev/";
/// Prefix of ebb's own configuration annotations.
pub const EBB_PREFIX: &str = "ebb.dev/";
/// Prefix of the annotations the autoscaler writes to explain its state (not configuration).
pub const STATUS_PREFIX: &str = "status.ebb.dev/";
/// Status annotation: the replicas the autoscaler wants.
pub const STATUS_DESIRED: &str = "status.ebb.dev/desired";
/// Status annotation: `serve` or `proxy` (on the Deployment and on the public Service).
pub const STATUS_MODE: &str = "status.ebb.dev/mode";
/// Status annotation: when the public Service entered its mode (RFC 3339).
pub const STATUS_MODE_SINCE: &str = "status.ebb.dev/mode-since";
/// Status annotation: the scale-to-zero phase on the public Service (`activating`, `active`, `inactive`, `zero`).
pub const STATUS_PHASE: &str = "status.ebb.dev/phase";
/// Status annotation: when the public Service entered its phase (RFC 3339).
pub const STATUS_PHASE_SINCE: &str = "status.ebb.dev/phase-since";
/// Status annotation: `true` while the decider is in panic mode, else `false`.
pub const STATUS_PANIC: &str = "status.ebb.dev/panic";
/// Status annotation: why the replicas last changed.
pub const STATUS_REASON: &str = "status.ebb.dev/reason";
/// Status annotation on every member of a role group that ebb refuses (`ebb.dev/group`): what is wrong;
/// absent when the group is valid.
pub const STATUS_GROUP: &str = "status.ebb.dev/group";
/// Status annotation: while pods of the service are starting (created, not yet ready, not blocked: a model
/// loading inside a long startup probe), when the oldest of them was created (RFC 3339); absent otherwise.
pub const STATUS_STARTING_SINCE: &str = "status.ebb.dev/starting-since";
/// Status annotation: pods that run without the queue-proxy or with outdated settings, and what to do; absent when
/// every pod runs the sidecar its annotations ask for.
pub const STATUS_SIDECAR: &str = "status.ebb.dev/sidecar";

/// Request header set by a gateway route: `NAMESPACE/NAME` of the target service.
pub const HEADER_SERVICE: &str = "ebb-service";
/// Request header marking a request forwarded by the activator.
pub const HEADER_PROXIED: &str = "ebb-proxied";
/// Knative's spelling of [`HEADER_PROXIED`], accepted too.
pub const HEADER_KNATIVE_PROXIED: &str = "k-proxy-request";
/// Value of [`HEADER_PROXIED`] (and of Knative's header) on requests from the activator.
pub const PROXIED_BY_ACTIVATOR: &str = "activator";
/// Response header on every answer a queue-proxy or activator makes up itself (an error, not the user
/// container's response): the error's reason. A queue-proxy removes it from the user container's responses, so
/// an activator may trust it from a pod: `upstream_refused` and `overloaded` mean nothing reached the container,
/// and the request may go to another pod.
pub const HEADER_PROXY_ERROR: &str = "ebb-proxy-error";
/// Request header naming the component a probe is meant for.
pub const HEADER_PROBE: &str = "ebb-probe";
/// [`HEADER_PROBE`] value (and answer body) for the queue-proxy.
pub const PROBE_QUEUE: &str = "queue";
/// [`HEADER_PROBE`] value (and answer body) for the activator.
pub const PROBE_ACTIVATOR: &str = "activator";
/// Request header on a queue-proxy probe: how many seconds (at most [`PROBE_WAIT_MAX_SECS`]) the queue-proxy
/// may hold the probe while the user container is not ready yet, answering the moment it is. The activator
/// learns of a ready pod without polling; a queue-proxy that does not know the header answers at once.
pub const HEADER_PROBE_WAIT: &str = "ebb-probe-wait";
/// The longest [`HEADER_PROBE_WAIT`] a queue-proxy honours.
pub const PROBE_WAIT_MAX_SECS: u64 = 10;

/// Queue-proxy data port: requests for the user container.
pub const QUEUE_PROXY_DATA_PORT: u16 = 8012;
/// Queue-proxy admin port: readiness, liveness, `/wait-for-drain`.
pub const QUEUE_PROXY_ADMIN_PORT: u16 = 8022;
/// Queue-proxy stats port: `GET /stats` for the autoscaler.
pub const QUEUE_PROXY_STATS_PORT: u16 = 9090;
/// Queue-proxy Prometheus port.
pub const QUEUE_PROXY_METRICS_PORT: u16 = 9091;
/// Activator data port.
pub const ACTIVATOR_DATA_PORT: u16 = 8012;
/// Activator Prometheus port.
pub const ACTIVATOR_METRICS_PORT: u16 = 9090;
/// Autoscaler stat-ingest port (activator streams).
pub const AUTOSCALER_INGEST_PORT: u16 = 8080;
/// Autoscaler Prometheus port.
pub const AUTOSCALER_METRICS_PORT: u16 = 9090;
/// Every port ebb's sidecar takes in a pod; `ebb inject` refuses user containers that use one.
pub const RESERVED_POD_PORTS: [u16; 4] =
    [QUEUE_PROXY_DATA_PORT, QUEUE_PROXY_ADMIN_PORT, QUEUE_PROXY_STATS_PORT, QUEUE_PROXY_METRICS_PORT];

/// Path of the queue-proxy's per-pod stat.
pub const STATS_PATH: &str = "/stats";
/// Path of the autoscaler's streaming stat ingest.
pub const INGEST_PATH: &str = "/v1/stats";
/// Path on the queue-proxy's admin port that a preStop hook waits on.
pub const WAIT_FOR_DRAIN_PATH: &str = "/wait-for-drain";

/// Prefix of every Prometheus metric ebb exports (`ebb_...`).
pub const METRIC_PREFIX: &str = "ebb";

/// Name of the global configuration ConfigMap, in the autoscaler's namespace.
pub const CONFIG_MAP_NAME: &str = "config-autoscaler";
