//! The instance readiness gate: an entry pod of a multi-pod instance (a LeaderWorkerSet's leader, the decode
//! role) is Ready only when the autoscaler has set the condition `ebb.dev/instance-ready` True, which it
//! does once every pod of the instance is ready.

use ebb_config::targets::INSTANCE_READY_GATE;
use serde_json::{Value, json};

use crate::value::ensure_mapping;

/// Adds the instance gate to the pod spec at `spec_path` of `object` (a Pod: `["spec"]`; a pod template:
/// `["spec"]` of the template). Returns whether it was added; `false` when it was there already.
pub fn add_instance_gate(object: &mut Value, spec_path: &[&str]) -> bool {
    let spec = ensure_mapping(object, spec_path);
    let gates = spec.entry("readinessGates").or_insert_with(|| json!([]));
    if !gates.is_array() {
        *gates = json!([]);
    }
    let list = gates.as_array_mut().expect("an array");
    if list.iter().any(|g| g["conditionType"] == INSTANCE_READY_GATE) {
        return false;
    }
    list.push(json!({"conditionType": INSTANCE_READY_GATE}));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_is_added_once_beside_the_pods_own() {
        let mut pod = json!({"spec": {"readinessGates": [{"conditionType": "example.com/other"}]}});
        assert!(add_instance_gate(&mut pod, &["spec"]));
        assert!(!add_instance_gate(&mut pod, &["spec"]));
        assert_eq!(
            pod["spec"]["readinessGates"],
            json!([{"conditionType": "example.com/other"}, {"conditionType": "ebb.dev/instance-ready"}])
        );
        let mut template = json!({"metadata": {}});
        assert!(add_instance_gate(&mut template, &["spec"]));
        assert_eq!(template["spec"]["readinessGates"][0]["conditionType"], "ebb.dev/instance-ready");
    }
}
