//! YAML as users hand it to ebb (`ebb check`, `ebb inject`, `ebb up -f`), read with serde-saphyr within
//! [`limits`]: whatever an input holds, reading it takes bounded memory and time and ends in a one-line error
//! that says what is wrong and where.

mod limits;
mod read;

pub use read::{ReadError, from_str, read_text};
