//! Small helpers over JSON values (the form of a YAML document and of an AdmissionReview's object): walking and
//! creating paths of mapping keys, building mappings. The model reads and writes a pod through them.

use serde_json::{Map, Value};

/// The value at `path` (mapping keys) under `value`.
pub fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// The string at `path` (mapping keys) under `value`.
pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// A mapping of `pairs`, in their order.
pub fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// Sets `key` in `mapping` (in place when it is there, else at the end).
pub fn set(mapping: &mut Map<String, Value>, key: &str, value: Value) {
    mapping.insert(key.to_owned(), value);
}

/// The mapping at `path`, created (replacing a non-mapping) where missing.
pub fn ensure_mapping<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut current = value;
    for key in path {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        let Value::Object(mapping) = current else { unreachable!("made a mapping above") };
        current = mapping.entry(*key).or_insert(Value::Null);
    }
    if !current.is_object() {
        *current = Value::Object(Map::new());
    }
    match current {
        Value::Object(mapping) => mapping,
        _ => unreachable!("made a mapping above"),
    }
}
