//! Scale targets: the kinds of object ebb autoscales through their `scale` subresource, as the
//! `scale-target-kinds` key of `config-autoscaler` names them (`RESOURCE.GROUP`, kubectl's spelling), and
//! what is known of the common ones (where their pod template is, how their pods are grouped in instances).

use std::fmt;

/// The resource every installation scales: Deployments.
pub const DEPLOYMENTS: &str = "deployments.apps";

/// One kind of scale target: a resource (plural, lower case) in an API group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKind {
    /// The plural resource name, as in RBAC rules and URLs (`statefulsets`).
    pub resource: String,
    /// The API group (`apps`); never the core group, which serves no scalable workload ebb could serve.
    pub group: String,
}

impl TargetKind {
    /// `deployments.apps`.
    pub fn deployments() -> Self {
        Self { resource: "deployments".into(), group: "apps".into() }
    }

    /// Whether this is the built-in Deployment.
    pub fn is_deployments(&self) -> bool {
        self.resource == "deployments" && self.group == "apps"
    }

    /// Reads `RESOURCE.GROUP` (`statefulsets.apps`, `leaderworkersets.leaderworkerset.x-k8s.io`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (resource, group) = text
            .split_once('.')
            .ok_or_else(|| format!("{text:?} is not RESOURCE.GROUP (for example statefulsets.apps)"))?;
        let dns = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !s.starts_with(['-', '.'])
                && !s.ends_with(['-', '.'])
        };
        if !dns(resource) || resource.contains('.') || !dns(group) {
            return Err(format!(
                "{text:?} is not RESOURCE.GROUP in lower case (for example statefulsets.apps)"
            ));
        }
        Ok(Self { resource: resource.into(), group: group.into() })
    }

    /// The kind of an object of `api_version` and `kind` as a manifest writes it, by the Kubernetes
    /// convention that a resource is its kind in lower case plus `s` (true of every kind ebb names;
    /// a CRD with an irregular plural is listed by its resource name anyway).
    pub fn of_manifest(api_version: &str, kind: &str) -> Option<Self> {
        let (group, _version) = api_version.split_once('/')?;
        Some(Self { resource: format!("{}s", kind.to_ascii_lowercase()), group: group.into() })
    }

    /// Where the pod template of the role that receives traffic is, for the kinds ebb knows: `spec.template`
    /// for Deployments, StatefulSets and Argo Rollouts, the leader's template of a LeaderWorkerSet (its
    /// worker template when it has no leader template). `None`: unknown; the admission webhook injects the
    /// pods when they are created.
    pub fn entry_templates(&self) -> Option<&'static [&'static [&'static str]]> {
        match (self.resource.as_str(), self.group.as_str()) {
            ("deployments" | "statefulsets", "apps") | ("rollouts", "argoproj.io") => {
                Some(&[&["spec", "template"]])
            }
            ("leaderworkersets", "leaderworkerset.x-k8s.io") => Some(&[
                &["spec", "leaderWorkerTemplate", "leaderTemplate"],
                &["spec", "leaderWorkerTemplate", "workerTemplate"],
            ]),
            _ => None,
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.resource, self.group)
    }
}

/// Reads the `scale-target-kinds` value: a comma-separated list of `RESOURCE.GROUP`, which must name
/// Deployments or not, as the operator chooses, and nothing twice.
pub fn parse_kinds(text: &str) -> Result<Vec<TargetKind>, String> {
    let mut kinds: Vec<TargetKind> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let kind = TargetKind::parse(part)?;
        if kinds.contains(&kind) {
            return Err(format!("{kind} is listed twice"));
        }
        kinds.push(kind);
    }
    if kinds.is_empty() {
        return Err(format!("names no kind; the default is {DEPLOYMENTS}"));
    }
    Ok(kinds)
}

/// The `scale-target-kinds` value of `kinds`, as [`parse_kinds`] reads it.
pub fn format_kinds(kinds: &[TargetKind]) -> String {
    kinds.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_read_in_kubectls_spelling() {
        let kinds =
            parse_kinds("deployments.apps, statefulsets.apps,leaderworkersets.leaderworkerset.x-k8s.io")
                .unwrap();
        assert_eq!(kinds.len(), 3);
        assert!(kinds[0].is_deployments());
        assert_eq!(kinds[2].group, "leaderworkerset.x-k8s.io");
        assert_eq!(
            format_kinds(&kinds),
            "deployments.apps, statefulsets.apps, leaderworkersets.leaderworkerset.x-k8s.io"
        );
        assert!(parse_kinds("").unwrap_err().contains("names no kind"));
        assert!(parse_kinds("pods").unwrap_err().contains("RESOURCE.GROUP"));
        assert!(parse_kinds("StatefulSets.apps").unwrap_err().contains("lower case"));
        assert!(parse_kinds("statefulsets.apps, statefulsets.apps").unwrap_err().contains("twice"));
    }

    #[test]
    fn a_manifests_kind_names_its_resource() {
        assert_eq!(
            TargetKind::of_manifest("apps/v1", "StatefulSet").unwrap().to_string(),
            "statefulsets.apps"
        );
        assert_eq!(TargetKind::of_manifest("v1", "Pod"), None);
        let lws = TargetKind::of_manifest("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet").unwrap();
        assert_eq!(lws.entry_templates().unwrap().len(), 2);
        assert_eq!(
            TargetKind::of_manifest("example.com/v1", "InferenceSet").unwrap().entry_templates(),
            None
        );
    }
}
