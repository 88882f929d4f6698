//! YAML as users hand it to ebb (`ebb check`, `ebb inject`, `ebb up -f`), read with serde-saphyr within
//! [`limits`]: whatever an input holds, reading it takes bounded memory and time and ends in a one-line error
//! that says what is wrong and where. Untyped documents are `serde_json::Value`s, with their fields in the
//! order written (serde_json's `preserve_order`); [`to_string`] writes one back.

mod emit;
mod limits;
mod read;

pub use emit::to_string;
pub use read::{Error, ReadError, documents, from_str, read_text};
