//! Small helpers over JSON values (the form a YAML document is read into): building mappings, and creating the
//! mappings on a path. The model of what `ebb inject` edits reads and writes the document through them.

use serde_json::{Map, Value};

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
