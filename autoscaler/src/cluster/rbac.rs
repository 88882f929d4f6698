//! The least RBAC the controller needs, as data: `docs/rbac.md` explains each rule, and the end-to-end test
//! builds its ClusterRole from this very list. RBAC cannot restrict a verb to the objects ebb owns, so
//! ownership is enforced in code (a Service not labelled `app.kubernetes.io/managed-by: ebb` is never
//! written; only Deployments labelled `ebb.dev/service` are scaled).

/// One RBAC rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// API group (`""` = core).
    pub group: &'static str,
    /// Resource (or `resource/subresource`).
    pub resource: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Cluster-wide (ClusterRole) or the autoscaler's own namespace only (Role).
    pub cluster: bool,
    /// Why.
    pub why: &'static str,
}

/// Every permission the controller uses.
pub const RULES: &[Rule] = &[
    Rule {
        group: "apps",
        resource: "deployments",
        verbs: &["get", "list", "watch", "patch"],
        cluster: true,
        why: "watch labelled Deployments; write the status.ebb.dev/* annotations",
    },
    Rule {
        group: "apps",
        resource: "deployments/scale",
        verbs: &["patch"],
        cluster: true,
        why: "set replicas through the scale subresource",
    },
    Rule {
        group: "",
        resource: "pods",
        verbs: &["get", "list", "watch", "patch"],
        cluster: true,
        why: "ready pods and their addresses; the pod-deletion-cost annotation before scaling down",
    },
    Rule {
        group: "",
        resource: "pods/status",
        verbs: &["patch"],
        cluster: true,
        why: "the ebb.dev/instance-ready readiness gate of entry pods of multi-pod instances",
    },
    Rule {
        group: "",
        resource: "services",
        verbs: &["get", "list", "watch", "create", "patch"],
        cluster: true,
        why: "the public Service of each autoscaled Deployment and its mode annotations",
    },
    Rule {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["get", "list", "watch", "create", "patch"],
        cluster: true,
        why: "the one EndpointSlice of each public Service (activators or pods)",
    },
    Rule {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        cluster: true,
        why: "Normal and Warning Events on Deployments and the ConfigMap",
    },
    Rule {
        group: "authentication.k8s.io",
        resource: "tokenreviews",
        verbs: &["create"],
        cluster: true,
        why: "authenticate the activators' stat streams",
    },
    Rule {
        group: "",
        resource: "configmaps",
        verbs: &["get", "list", "watch"],
        cluster: false,
        why: "config-autoscaler, hot reloaded",
    },
    Rule {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        cluster: false,
        why: "leader election",
    },
];

/// A rule of the admission webhook, which names its objects where RBAC can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedRule {
    /// API group (`""` = core).
    pub group: &'static str,
    /// Resource.
    pub resource: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// The objects it is limited to (`resourceNames`); empty: all.
    pub names: &'static [&'static str],
    /// Cluster-wide (ClusterRole `ebb-autoscaler-webhook`) or the autoscaler's namespace (Role).
    pub cluster: bool,
    /// Why.
    pub why: &'static str,
}

/// Every permission the admission webhook (`super::webhook`) uses, on top of [`RULES`], for the default
/// names of its Secret and webhook configuration.
pub const WEBHOOK_RULES: &[NamedRule] = &[
    NamedRule {
        group: "apps",
        resource: "replicasets",
        verbs: &["list", "watch"],
        names: &[],
        cluster: true,
        why: "a pod's way to its Deployment: the labelled ReplicaSets' owner references (metadata only)",
    },
    NamedRule {
        group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["patch"],
        names: &[super::webhook::DEFAULT_CONFIGURATION],
        cluster: true,
        why: "the leader writes the CA bundle into the webhook configuration's caBundle",
    },
    NamedRule {
        group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch", "update"],
        names: &[super::webhook::DEFAULT_SECRET],
        cluster: false,
        why: "the webhook's CA and serving certificate: every replica serves them, the leader rotates them",
    },
];
