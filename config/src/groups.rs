//! Role groups: several Deployments of one namespace labelled `ebb.dev/group: NAME` that scale as one service
//! (llm-d's prefill/decode layout). Each member runs `ebb.dev/group-pods` pods per instance (default 1); the
//! member labelled `ebb.dev/service` is the entry: its pods carry the queue-proxy, take the traffic and report
//! the load, and the service is named after it. The autoscaler decides in instances on the entry's load and
//! sets every member to `instances x its pods`.
//!
//! This module reads the labels and annotations only (no I/O), so that `ebb check` and the autoscaler judge a
//! group alike.

use std::collections::BTreeMap;

use crate::names::LABEL_SERVICE;
use crate::value::parse_int;

/// Label naming the role group a Deployment belongs to.
pub const LABEL_GROUP: &str = "ebb.dev/group";
/// Annotation on a group member: its pods per instance, a whole number from 1 to [`MAX_GROUP_PODS`]
/// (default 1; the entry's must be 1).
pub const ANNOTATION_GROUP_PODS: &str = "ebb.dev/group-pods";
/// The most pods per instance one member may have.
pub const MAX_GROUP_PODS: u32 = 1000;

/// One object that may belong to a group, as its metadata shows it.
#[derive(Debug, Clone, Copy)]
pub struct MemberMeta<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: &'a BTreeMap<String, String>,
}

/// One member of a valid group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The Deployment's name.
    pub name: String,
    /// Its pods per instance.
    pub pods: u32,
}

/// A valid group: one entry, the other members with their pods per instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its namespace.
    pub namespace: String,
    /// The group's name (the label's value).
    pub name: String,
    /// The entry's name: the service's name.
    pub entry: String,
    /// The members other than the entry, by name.
    pub others: Vec<Member>,
}

/// A group that ebb refuses to scale, with every reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadGroup {
    /// Its namespace.
    pub namespace: String,
    /// The group's name.
    pub name: String,
    /// Every member's name.
    pub members: Vec<String>,
    /// Each member labelled `ebb.dev/service` (an entry candidate).
    pub entries: Vec<String>,
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
}

impl BadGroup {
    /// The problems as one line.
    pub fn message(&self) -> String {
        format!(
            "group {:?} is invalid, so ebb scales none of its members: {}",
            self.name,
            self.problems.join("; ")
        )
    }
}

/// The pods per instance an object's annotations ask for (1 when unset), or why the value is refused.
pub fn pods_per_instance(annotations: &BTreeMap<String, String>) -> Result<u32, String> {
    let Some(text) = annotations.get(ANNOTATION_GROUP_PODS) else { return Ok(1) };
    parse_int(text)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| (1..=MAX_GROUP_PODS).contains(v))
        .ok_or_else(|| {
            format!(
                "{ANNOTATION_GROUP_PODS}: {text:?}: must be a whole number between 1 and {MAX_GROUP_PODS}"
            )
        })
}

/// What is wrong with one object's group keys on their own: `ebb.dev/group-pods` without the group label
/// (it would be ignored), or an empty group name.
pub fn lone_problems(meta: &MemberMeta<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    match meta.labels.get(LABEL_GROUP) {
        None if meta.annotations.contains_key(ANNOTATION_GROUP_PODS) => problems.push(format!(
            "{ANNOTATION_GROUP_PODS} is set but the label {LABEL_GROUP} is not: the annotation has no effect; \
             label every member of the group {LABEL_GROUP}: NAME"
        )),
        Some(name) if name.is_empty() => {
            problems.push(format!("label {LABEL_GROUP} is empty: it must name the group"))
        }
        _ => {}
    }
    problems
}

/// Sorts the labelled objects into groups (by namespace and the label's value), each valid or bad. An object
/// without the label, or with an empty one, belongs to none.
pub fn resolve_groups<'a>(objects: impl IntoIterator<Item = MemberMeta<'a>>) -> (Vec<Group>, Vec<BadGroup>) {
    let mut by_group: BTreeMap<(String, String), Vec<MemberMeta<'a>>> = BTreeMap::new();
    for meta in objects {
        let Some(group) = meta.labels.get(LABEL_GROUP).filter(|g| !g.is_empty()) else { continue };
        by_group.entry((meta.namespace.to_owned(), group.clone())).or_default().push(meta);
    }
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for ((namespace, name), mut members) in by_group {
        members.sort_by_key(|m| m.name);
        match resolve_one(&name, &members) {
            Ok((entry, others)) => good.push(Group { namespace, name, entry, others }),
            Err((entries, problems)) => {
                let members = members.iter().map(|m| m.name.to_owned()).collect();
                bad.push(BadGroup { namespace, name, members, entries, problems });
            }
        }
    }
    (good, bad)
}

/// A valid group's entry and other members.
type Resolved = (String, Vec<Member>);
/// A bad group's entry candidates and problems.
type Refused = (Vec<String>, Vec<String>);

/// One group's entry and other members, or its entry candidates and problems.
fn resolve_one(group: &str, members: &[MemberMeta<'_>]) -> Result<Resolved, Refused> {
    let mut problems = Vec::new();
    let entries: Vec<String> =
        members.iter().filter(|m| m.labels.contains_key(LABEL_SERVICE)).map(|m| m.name.to_owned()).collect();
    match entries.len() {
        0 => problems.push(format!(
            "no entry: label the member whose pods carry the queue-proxy and take the traffic \
             {LABEL_SERVICE}: ITS-NAME (members: {})",
            names(members)
        )),
        1 => {}
        _ => problems.push(format!(
            "{} entries ({}): exactly one member of group {group:?} may be labelled {LABEL_SERVICE}",
            entries.len(),
            entries.join(", ")
        )),
    }
    let mut others = Vec::new();
    for member in members {
        let is_entry = member.labels.contains_key(LABEL_SERVICE);
        match pods_per_instance(member.annotations) {
            Ok(pods) if is_entry && pods != 1 => problems.push(format!(
                "{}: {ANNOTATION_GROUP_PODS}: \"{pods}\": the entry runs 1 pod per instance (its pods are the \
                 instances the autoscaler counts); put the other pods in another member",
                member.name
            )),
            Ok(pods) if !is_entry => others.push(Member { name: member.name.to_owned(), pods }),
            Ok(_) => {}
            Err(why) => problems.push(format!("{}: {why}", member.name)),
        }
    }
    if problems.is_empty() {
        Ok((entries.into_iter().next().unwrap_or_default(), others))
    } else {
        Err((entries, problems))
    }
}

fn names(members: &[MemberMeta<'_>]) -> String {
    members.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Object {
        name: &'static str,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    }

    fn object(name: &'static str, group: Option<&str>, entry: bool, pods: Option<&str>) -> Object {
        let mut labels = BTreeMap::new();
        if let Some(group) = group {
            labels.insert(LABEL_GROUP.to_owned(), group.to_owned());
        }
        if entry {
            labels.insert(LABEL_SERVICE.to_owned(), name.to_owned());
        }
        let annotations =
            pods.map(|p| [(ANNOTATION_GROUP_PODS.to_owned(), p.to_owned())].into()).unwrap_or_default();
        Object { name, labels, annotations }
    }

    fn resolve(objects: &[Object]) -> (Vec<Group>, Vec<BadGroup>) {
        resolve_groups(objects.iter().map(|o| MemberMeta {
            namespace: "ml",
            name: o.name,
            labels: &o.labels,
            annotations: &o.annotations,
        }))
    }

    #[test]
    fn a_prefill_decode_pair_is_one_group_entered_at_decode() {
        let (good, bad) = resolve(&[
            object("prefill", Some("llm"), false, Some("2")),
            object("decode", Some("llm"), true, None),
            object("other", None, true, None),
        ]);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            good,
            vec![Group {
                namespace: "ml".into(),
                name: "llm".into(),
                entry: "decode".into(),
                others: vec![Member { name: "prefill".into(), pods: 2 }],
            }]
        );
    }

    #[test]
    fn a_group_without_an_entry_or_with_two_is_bad() {
        let (good, bad) = resolve(&[
            object("prefill", Some("none"), false, Some("2")),
            object("decode", Some("none"), false, None),
            object("a", Some("two"), true, None),
            object("b", Some("two"), true, None),
        ]);
        assert!(good.is_empty());
        assert_eq!(bad.len(), 2);
        assert!(bad[0].problems[0].starts_with("no entry"), "{:?}", bad[0]);
        assert_eq!(bad[0].members, ["decode", "prefill"]);
        assert!(bad[1].problems[0].starts_with("2 entries (a, b)"), "{:?}", bad[1]);
        assert_eq!(bad[1].entries, ["a", "b"]);
        assert!(bad[1].message().contains("ebb scales none of its members"));
    }

    #[test]
    fn pods_per_instance_must_be_a_positive_whole_number_and_one_for_the_entry() {
        for bad_value in ["0", "-1", "1.5", "two", ""] {
            let (good, bad) = resolve(&[
                object("prefill", Some("llm"), false, Some(bad_value)),
                object("decode", Some("llm"), true, None),
            ]);
            assert!(good.is_empty(), "{bad_value:?} accepted");
            assert!(bad[0].problems[0].contains("prefill: ebb.dev/group-pods"), "{:?}", bad[0].problems);
        }
        let (good, bad) = resolve(&[object("decode", Some("llm"), true, Some("2"))]);
        assert!(good.is_empty());
        assert!(bad[0].problems[0].contains("the entry runs 1 pod per instance"), "{:?}", bad[0]);
        assert_eq!(pods_per_instance(&BTreeMap::new()), Ok(1));
    }

    #[test]
    fn groups_are_per_namespace_and_lone_keys_are_reported() {
        let (decode, prefill) =
            (object("decode", Some("llm"), true, None), object("prefill", Some("llm"), false, None));
        let metas = [
            MemberMeta {
                namespace: "a",
                name: "decode",
                labels: &decode.labels,
                annotations: &decode.annotations,
            },
            MemberMeta {
                namespace: "b",
                name: "prefill",
                labels: &prefill.labels,
                annotations: &prefill.annotations,
            },
        ];
        let (good, bad) = resolve_groups(metas);
        // The prefill in another namespace is a group of its own, without an entry.
        assert_eq!(good.len(), 1);
        assert_eq!(
            (bad[0].namespace.as_str(), bad[0].members.as_slice()),
            ("b", ["prefill".to_owned()].as_slice())
        );

        let stray = object("stray", None, false, Some("2"));
        let meta = MemberMeta {
            namespace: "a",
            name: "stray",
            labels: &stray.labels,
            annotations: &stray.annotations,
        };
        assert!(lone_problems(&meta)[0].contains("has no effect"));
        let empty = object("empty", Some(""), false, None);
        let meta = MemberMeta {
            namespace: "a",
            name: "empty",
            labels: &empty.labels,
            annotations: &empty.annotations,
        };
        assert!(lone_problems(&meta)[0].contains("is empty"));
    }
}
