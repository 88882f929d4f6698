//! Scale targets: the kinds of object ebb autoscales through their `scale` subresource, as the
//! `scale-target-kinds` key of `config-autoscaler` names them (`RESOURCE.GROUP`, kubectl's spelling), and
//! what is known of the common ones (where their pod template is, how their pods are grouped in instances).
//!
//! A replica of some kinds is an instance of several pods (a LeaderWorkerSet's group, a KubeInfer-style
//! instance of prefill and decode roles): [`InstanceShape`] says how to find an instance's pods, built in for
//! LeaderWorkerSets and set for other kinds by `scale-target-instances` ([`parse_instances`]). A kind without
//! one (Deployments, StatefulSets) has one pod per replica.

use std::fmt;

/// The resource every installation scales: Deployments.
pub const DEPLOYMENTS: &str = "deployments.apps";

/// Annotation on a scale target whose kind groups pods in instances without saying in the object how many
/// (no `size=` in `scale-target-instances`): its pods per instance.
pub const ANNOTATION_INSTANCE_PODS: &str = "ebb.dev/instance-pods";

/// Most pods one instance may have.
pub const MAX_INSTANCE_PODS: u32 = 1000;

/// The readiness gate of the entry pods of multi-pod instances: the autoscaler sets this condition True
/// when every pod of the pod's instance is ready, so the kubelet reports the entry Ready only then.
pub const INSTANCE_READY_GATE: &str = "ebb.dev/instance-ready";

/// How the pods of one replica (an instance) of a kind are found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceShape {
    /// The pod label whose value is the target's name, on the pods of every role (`name-label=`).
    pub name_label: String,
    /// The pod label whose value tells one target's instances apart (`instance-label=`).
    pub instance_label: String,
    /// Where in the object its pods per instance are, as field names (`size=spec.size`); `None`: the
    /// target's [`ANNOTATION_INSTANCE_PODS`] annotation says.
    pub size_path: Option<Vec<String>>,
}

impl InstanceShape {
    /// A LeaderWorkerSet: its pods carry the set's name and their group's index; `size` pods a group.
    pub fn leader_worker_set() -> Self {
        Self {
            name_label: "leaderworkerset.sigs.k8s.io/name".into(),
            instance_label: "leaderworkerset.sigs.k8s.io/group-index".into(),
            size_path: Some(vec!["spec".into(), "leaderWorkerTemplate".into(), "size".into()]),
        }
    }

    /// Its pods per instance: what `field` finds in the object at [`Self::size_path`], else the target's
    /// `annotations`. `Err` says why it cannot be known.
    pub fn pods_per_instance(
        &self,
        field: impl FnOnce(&[String]) -> SizeField,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<u32, String> {
        let valid = |n: u64| u32::try_from(n).ok().filter(|n| (1..=MAX_INSTANCE_PODS).contains(n));
        if let Some(path) = &self.size_path {
            return match field(path) {
                SizeField::Number(n) if valid(n).is_some() => Ok(n as u32),
                // LeaderWorkerSet defaults its size to 1 when the field is left out.
                SizeField::Absent => Ok(1),
                SizeField::Number(n) => Err(format!(
                    "{}: {n}: must be a whole number from 1 to {MAX_INSTANCE_PODS}",
                    path.join(".")
                )),
                SizeField::Other(v) => Err(format!(
                    "{}: {v}: must be a whole number from 1 to {MAX_INSTANCE_PODS}",
                    path.join(".")
                )),
            };
        }
        let text = annotations.get(ANNOTATION_INSTANCE_PODS).ok_or_else(|| {
            format!(
                "its kind groups pods in instances but the annotation {ANNOTATION_INSTANCE_PODS} is not set"
            )
        })?;
        text.trim().parse::<u64>().ok().and_then(valid).ok_or_else(|| {
            format!(
                "{ANNOTATION_INSTANCE_PODS}: {text:?}: must be a whole number from 1 to {MAX_INSTANCE_PODS}"
            )
        })
    }
}

/// What an object holds at an instance's size path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeField {
    /// Nothing.
    Absent,
    /// A whole number.
    Number(u64),
    /// Something else, as written.
    Other(String),
}

impl fmt::Display for InstanceShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "name-label={}, instance-label={}", self.name_label, self.instance_label)?;
        if let Some(path) = &self.size_path {
            write!(f, ", size={}", path.join("."))?;
        }
        Ok(())
    }
}

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

    /// How the kinds ebb knows group their pods in instances: a LeaderWorkerSet's groups. `None`: one pod
    /// per replica (Deployments, StatefulSets) or unknown (`scale-target-instances` may say).
    pub fn built_in_instances(&self) -> Option<InstanceShape> {
        (self.resource == "leaderworkersets" && self.group == "leaderworkerset.x-k8s.io")
            .then(InstanceShape::leader_worker_set)
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

/// Reads the `scale-target-instances` value: entries separated by `;` or new lines, each
/// `RESOURCE.GROUP: name-label=LABEL, instance-label=LABEL[, size=FIELD.PATH]`, no kind twice, never
/// Deployments (a Deployment's replica is one pod).
pub fn parse_instances(text: &str) -> Result<Vec<(TargetKind, InstanceShape)>, String> {
    let mut entries: Vec<(TargetKind, InstanceShape)> = Vec::new();
    for entry in text.split([';', '\n']).map(str::trim).filter(|e| !e.is_empty()) {
        let (kind, fields) = entry.split_once(':').ok_or_else(|| {
            format!("{entry:?} is not RESOURCE.GROUP: name-label=LABEL, instance-label=LABEL")
        })?;
        let kind = TargetKind::parse(kind.trim())?;
        if kind.is_deployments() {
            return Err(format!(
                "{kind}: a Deployment's replica is one pod; use role groups (ebb.dev/group)"
            ));
        }
        if entries.iter().any(|(k, _)| *k == kind) {
            return Err(format!("{kind} is listed twice"));
        }
        let (mut name_label, mut instance_label, mut size_path) = (None, None, None);
        for field in fields.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (key, value) =
                field.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((field, ""));
            let label = |v: &str| {
                let valid = !v.is_empty()
                    && v.len() <= 316
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
                    && v.matches('/').count() <= 1;
                valid.then(|| v.to_owned()).ok_or_else(|| format!("{kind}: {key}: {v:?} is not a label key"))
            };
            match key {
                "name-label" => name_label = Some(label(value)?),
                "instance-label" => instance_label = Some(label(value)?),
                "size" => {
                    let path: Vec<String> = value.split('.').map(str::to_owned).collect();
                    if path.iter().any(|p| p.is_empty() || p.contains(char::is_whitespace)) {
                        return Err(format!(
                            "{kind}: size: {value:?} is not a field path (for example spec.size)"
                        ));
                    }
                    size_path = Some(path);
                }
                other => {
                    return Err(format!(
                        "{kind}: unknown field {other:?} (name-label, instance-label and size are)"
                    ));
                }
            }
        }
        let missing = |what: &str| format!("{kind}: {what}=LABEL is missing");
        let shape = InstanceShape {
            name_label: name_label.ok_or_else(|| missing("name-label"))?,
            instance_label: instance_label.ok_or_else(|| missing("instance-label"))?,
            size_path,
        };
        entries.push((kind, shape));
    }
    Ok(entries)
}

/// The `scale-target-instances` value of `entries`, as [`parse_instances`] reads it.
pub fn format_instances(entries: &[(TargetKind, InstanceShape)]) -> String {
    entries.iter().map(|(kind, shape)| format!("{kind}: {shape}")).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_read_per_kind_with_every_mistake_named() {
        let text = "inferenceservices.serving.example.com: name-label=serving.example.com/name, \
                    instance-label=serving.example.com/instance\n\
                    things.example.com: name-label=a, instance-label=b, size=spec.size";
        let entries = parse_instances(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1.size_path, None);
        assert_eq!(entries[1].1.size_path.as_deref(), Some(&["spec".to_owned(), "size".to_owned()][..]));
        assert_eq!(parse_instances(&format_instances(&entries)).unwrap(), entries);
        assert!(parse_instances("").unwrap().is_empty());
        let error = |text: &str| parse_instances(text).unwrap_err();
        assert!(error("things.example.com").contains("is not RESOURCE.GROUP:"));
        assert!(error("things.example.com: name-label=a").contains("instance-label=LABEL is missing"));
        assert!(error("things.example.com: name-label=a b, instance-label=c").contains("not a label key"));
        assert!(
            error("things.example.com: name-label=a, instance-label=b, size=spec..x").contains("field path")
        );
        assert!(
            error("things.example.com: name-label=a, instance-label=b, pods=3").contains("unknown field")
        );
        assert!(error("deployments.apps: name-label=a, instance-label=b").contains("role groups"));
        assert!(
            error("a.b: name-label=a, instance-label=b; a.b: name-label=a, instance-label=b")
                .contains("twice")
        );
    }

    #[test]
    fn pods_per_instance_come_from_the_object_or_the_annotation() {
        let lws = TargetKind::parse("leaderworkersets.leaderworkerset.x-k8s.io").unwrap();
        let shape = lws.built_in_instances().unwrap();
        let none = std::collections::BTreeMap::new();
        let at = |field: SizeField| {
            move |path: &[String]| {
                assert_eq!(path.join("."), "spec.leaderWorkerTemplate.size");
                field
            }
        };
        assert_eq!(shape.pods_per_instance(at(SizeField::Number(4)), &none), Ok(4));
        assert_eq!(shape.pods_per_instance(at(SizeField::Absent), &none), Ok(1));
        assert!(shape.pods_per_instance(at(SizeField::Number(0)), &none).unwrap_err().contains("from 1 to"));
        assert!(shape.pods_per_instance(at(SizeField::Other("\"2\"".into())), &none).is_err());
        assert_eq!(TargetKind::parse("statefulsets.apps").unwrap().built_in_instances(), None);

        let custom = InstanceShape { size_path: None, ..shape };
        let unused = |_: &[String]| -> SizeField { unreachable!("no size path") };
        assert!(custom.pods_per_instance(unused, &none).unwrap_err().contains("is not set"));
        let annotations = [(ANNOTATION_INSTANCE_PODS.to_owned(), "3".to_owned())].into();
        assert_eq!(custom.pods_per_instance(unused, &annotations), Ok(3));
        let annotations = [(ANNOTATION_INSTANCE_PODS.to_owned(), "three".to_owned())].into();
        assert!(custom.pods_per_instance(unused, &annotations).unwrap_err().contains("whole number"));
    }

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
