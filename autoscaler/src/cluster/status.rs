//! The autoscaler's state written on the scale target, so that `kubectl get deployment -o yaml` explains it:
//! `status.ebb.dev/desired`, `status.ebb.dev/mode`, `status.ebb.dev/panic` (`true` while the decider is in
//! panic) and `status.ebb.dev/reason` (the reason of the last change of replicas), and notes that come and go
//! (`status.ebb.dev/sidecar`, `status.ebb.dev/starting-since`). Written only when one of
//! them changes: the reason sentence carries live numbers, and rewriting it every tick would be an API write
//! per service every 2 s.

use std::collections::BTreeMap;

use ebb_config::names::{STATUS_DESIRED, STATUS_MODE, STATUS_PANIC, STATUS_REASON};
use serde_json::{Map, Value, json};

/// Adds to `patch` what brings `current`'s annotation `key` to `note` (removed when `None`); nothing when it
/// says so already.
pub fn note_patch(
    patch: &mut Option<Value>,
    current: &BTreeMap<String, String>,
    key: &str,
    note: Option<&str>,
) {
    if current.get(key).map(String::as_str) != note {
        let patch = patch.get_or_insert_with(|| json!({"metadata": {"annotations": {}}}));
        patch["metadata"]["annotations"][key] = json!(note);
    }
}

/// The replicas a leader last decided for this Deployment, from its `status.ebb.dev/desired` annotation.
///
/// A replica that first sees a service starts from this rather than from `spec.replicas`: a follower may first
/// see the Deployment while another writer has just changed its replicas (before the leader set them back),
/// and as the next leader it would otherwise enforce that passing value.
pub fn leader_desired(annotations: &BTreeMap<String, String>) -> Option<u32> {
    annotations.get(STATUS_DESIRED)?.parse().ok()
}

/// The merge patch that brings `current` annotations to `desired`, `mode`, `panic` and (when given) `reason`,
/// or `None` when they already say so.
pub fn annotations_patch(
    current: &BTreeMap<String, String>,
    desired: u32,
    mode: &str,
    panic: bool,
    reason: Option<&str>,
) -> Option<Value> {
    let mut wanted = vec![
        (STATUS_DESIRED.to_owned(), desired.to_string()),
        (STATUS_MODE.to_owned(), mode.to_owned()),
        (STATUS_PANIC.to_owned(), panic.to_string()),
    ];
    if let Some(reason) = reason {
        wanted.push((STATUS_REASON.to_owned(), reason.to_owned()));
    }
    let mut changes = Map::new();
    for (key, value) in wanted {
        if current.get(&key) != Some(&value) {
            changes.insert(key, Value::String(value));
        }
    }
    (!changes.is_empty()).then(|| json!({"metadata": {"annotations": changes}}))
}

#[cfg(test)]
mod tests {
    use ebb_config::names::STATUS_SIDECAR;

    use super::*;

    #[test]
    fn the_leaders_decision_is_read_back_and_anything_else_is_ignored() {
        let mut annotations = BTreeMap::new();
        assert_eq!(leader_desired(&annotations), None);
        annotations.insert(STATUS_DESIRED.to_owned(), "3".to_owned());
        assert_eq!(leader_desired(&annotations), Some(3));
        for bad in ["", "-1", "three", "1.5"] {
            annotations.insert(STATUS_DESIRED.to_owned(), bad.to_owned());
            assert_eq!(leader_desired(&annotations), None, "{bad:?}");
        }
    }

    #[test]
    fn a_note_is_written_and_removed_on_change() {
        let note = |current: &BTreeMap<String, String>, value| {
            let mut patch = None;
            note_patch(&mut patch, current, STATUS_SIDECAR, value);
            patch
        };
        let mut current = BTreeMap::new();
        assert_eq!(note(&current, None), None);
        let patch = note(&current, Some("1 of 2 pods without the queue-proxy")).unwrap();
        assert_eq!(
            patch["metadata"]["annotations"]["status.ebb.dev/sidecar"],
            "1 of 2 pods without the queue-proxy"
        );
        current.insert(STATUS_SIDECAR.to_owned(), "x".to_owned());
        assert_eq!(note(&current, Some("x")), None);
        let removed = note(&current, None).unwrap();
        assert!(removed["metadata"]["annotations"]["status.ebb.dev/sidecar"].is_null());
        // Beside the others, in one patch.
        let mut patch = annotations_patch(&BTreeMap::new(), 1, "serve", false, None);
        note_patch(&mut patch, &BTreeMap::new(), STATUS_SIDECAR, Some("y"));
        let annotations = &patch.unwrap()["metadata"]["annotations"];
        assert_eq!(
            (&annotations[STATUS_SIDECAR], &annotations["status.ebb.dev/desired"]),
            (&json!("y"), &json!("1"))
        );
    }

    #[test]
    fn only_changes_are_written() {
        let mut current = BTreeMap::new();
        let patch = annotations_patch(&current, 3, "serve", false, Some("stable: 3 pods")).unwrap();
        assert_eq!(patch["metadata"]["annotations"]["status.ebb.dev/desired"], "3");
        assert_eq!(patch["metadata"]["annotations"]["status.ebb.dev/panic"], "false");
        current.insert(STATUS_DESIRED.to_owned(), "3".to_owned());
        current.insert(STATUS_MODE.to_owned(), "serve".to_owned());
        current.insert(STATUS_PANIC.to_owned(), "false".to_owned());
        current.insert(STATUS_REASON.to_owned(), "stable: 3 pods".to_owned());
        assert_eq!(annotations_patch(&current, 3, "serve", false, None), None);
        assert_eq!(annotations_patch(&current, 3, "serve", false, Some("stable: 3 pods")), None);
        let patch = annotations_patch(&current, 3, "proxy", false, None).unwrap();
        assert_eq!(patch, json!({"metadata": {"annotations": {"status.ebb.dev/mode": "proxy"}}}));
        let patch = annotations_patch(&current, 3, "serve", true, None).unwrap();
        assert_eq!(patch, json!({"metadata": {"annotations": {"status.ebb.dev/panic": "true"}}}));
    }
}
