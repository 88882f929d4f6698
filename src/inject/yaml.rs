//! Small helpers over `serde_yaml` values: building mappings and walking paths of mapping keys. The model of
//! what `ebb inject` edits reads and writes the YAML through them.

use serde_yaml::{Mapping, Value};

use crate::manifest::at;

/// A mapping of `pairs`, in their order.
pub fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
}

/// Sets `key` in `mapping` (in place when it is there, else at the end).
pub fn set(mapping: &mut Mapping, key: &str, value: Value) {
    mapping.insert(key.into(), value);
}

/// The value at `path` (mapping keys) under `value`, mutable.
pub fn at_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(key))
}

/// The string at `path` (mapping keys) under `value`.
pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// The mapping at `path`, created (replacing a non-mapping) where missing.
pub fn ensure_mapping<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Mapping {
    let mut current = value;
    for key in path {
        if !current.is_mapping() {
            *current = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(mapping) = current else { unreachable!("made a mapping above") };
        current = mapping.entry((*key).into()).or_insert(Value::Null);
    }
    if !current.is_mapping() {
        *current = Value::Mapping(Mapping::new());
    }
    match current {
        Value::Mapping(mapping) => mapping,
        _ => unreachable!("made a mapping above"),
    }
}
