//! Reading YAML within [`limits`](super::limits): the text of an input, capped; typed values and untyped
//! documents parsed from it; and errors that say what is wrong and where, in one line.

use std::fmt;
use std::io::Read;

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::granit_parser::ErrorKind;
use serde_saphyr::{ExternalMessageSource, Location};

use super::limits::{self, MAX_ALIAS_EXPANSION, MAX_DEPTH, MAX_INPUT_BYTES};

/// Why an input could not be read as text.
#[derive(Debug)]
pub enum ReadError {
    /// Reading failed.
    Io(std::io::Error),
    /// The input is larger than [`MAX_INPUT_BYTES`]; what is beyond was not read.
    TooLarge,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(err) => write!(f, "cannot read: {err}"),
            Self::TooLarge => {
                write!(
                    f,
                    "beyond ebb's limits: larger than {} MiB, the most YAML ebb reads",
                    MAX_INPUT_BYTES >> 20
                )
            }
        }
    }
}

/// Reads all of `input` as UTF-8 text, but no more than [`MAX_INPUT_BYTES`]: memory stays bounded whatever is
/// piped in.
pub fn read_text(input: impl Read) -> Result<String, ReadError> {
    let mut text = String::new();
    let cap = u64::try_from(MAX_INPUT_BYTES).unwrap_or(u64::MAX);
    input.take(cap + 1).read_to_string(&mut text).map_err(ReadError::Io)?;
    if text.len() > MAX_INPUT_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(text)
}

/// Why YAML could not be read: what, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What is wrong, without the location.
    pub message: String,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    /// 1-based document of the stream, for [`documents`].
    pub document: Option<usize>,
    /// Whether one of ebb's limits refused the input (it may be valid YAML).
    pub limit: bool,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.limit {
            f.write_str("beyond ebb's limits: ")?;
        }
        f.write_str(&self.message)?;
        match self.at {
            Some((line, column)) => write!(f, " at line {line}, column {column}"),
            None => Ok(()),
        }
    }
}

impl Error {
    fn new(err: &serde_saphyr::Error) -> Self {
        let err = innermost(err);
        let at = err.location().filter(|l| *l != Location::UNKNOWN).map(|l| (l.line(), l.column()));
        let (message, limit) = if let Some(message) = limit_breached(err) {
            (message, true)
        } else if let serde_saphyr::Error::DuplicateMappingKey { key, .. } = err {
            // serde-saphyr's own words suggest one of its options.
            (
                key.as_ref().map_or_else(|| "duplicate key".to_owned(), |k| format!("duplicate key {k:?}")),
                false,
            )
        } else {
            let text = err.to_string();
            let message = match at {
                Some((line, column)) => {
                    let suffix = format!(" at line {line}, column {column}");
                    text.strip_suffix(&suffix).map_or_else(|| text.clone(), str::to_owned)
                }
                None => text,
            };
            (message, false)
        };
        Self { message, at: at.map(|(l, c)| (l as usize, c as usize)), document: None, limit }
    }
}

/// The error an alias wrapper carries (a limit hit while expanding an alias is the limit's error).
fn innermost(err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    let mut err = err.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. } = err {
        err = error.without_snippet();
    }
    err
}

/// The limit `err` reports, in ebb's words; `None` when the YAML itself is wrong.
fn limit_breached(err: &serde_saphyr::Error) -> Option<String> {
    use serde_saphyr::Error as E;
    let message = match err {
        E::Budget { breach, .. } => match breach {
            BudgetBreach::Depth { .. } => nested(),
            BudgetBreach::Nodes { .. } => format!("more than {} nodes", limits::MAX_NODES),
            BudgetBreach::Events { .. } => format!("more than {} YAML events", limits::MAX_EVENTS),
            BudgetBreach::Documents { .. } => format!("more than {} documents", limits::MAX_DOCUMENTS),
            BudgetBreach::ScalarBytes { .. } => {
                format!("more than {} MiB of text, aliases expanded", limits::MAX_SCALAR_BYTES >> 20)
            }
            BudgetBreach::RecordedAnchorEvents { .. } | BudgetBreach::RecordedAnchorBytes { .. } => {
                format!("anchors hold more than {} nodes or {} MiB", limits::MAX_NODES, MAX_INPUT_BYTES >> 20)
            }
            other => format!("{other:?}"),
        },
        E::AliasReplayLimitExceeded { .. } | E::AliasExpansionLimitExceeded { .. } => {
            format!("aliases expand to more than {MAX_ALIAS_EXPANSION} nodes (an alias bomb?)")
        }
        E::AliasReplayStackDepthExceeded { max_depth, .. } => {
            format!("aliases nest more than {max_depth} deep")
        }
        E::ExternalMessage { source, .. } => match source.as_ref() {
            ExternalMessageSource::Parser(scan) if *scan.kind() == ErrorKind::RecursionLimitExceeded => {
                nested()
            }
            _ => return None,
        },
        _ => return None,
    };
    Some(message)
}

fn nested() -> String {
    format!("nested deeper than {MAX_DEPTH} levels")
}

/// Parses one document into `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_saphyr::from_str_with_options(text, limits::options()).map_err(|e| Error::new(&e))
}

/// Parses every document of a YAML stream, in order; empty ones (nothing, only comments, or `null`) are left
/// out. An error names the document it is in.
pub fn documents(text: &str) -> Result<Vec<Value>, Error> {
    serde_saphyr::from_multiple_with_options(text, limits::options()).map_err(|e| {
        let mut err = Error::new(&e);
        err.document = Some(err.at.map_or(1, |(line, _)| document_at(text, line)));
        err
    })
}

/// The 1-based document of `text` that `line` is in: one more than the document markers (`---`) up to it,
/// less one that only opens the first document.
fn document_at(text: &str, line: usize) -> usize {
    let (mut document, mut started) = (1, false);
    for l in text.lines().take(line) {
        let l = l.trim_end();
        let marker = l == "---" || l.starts_with("--- ") || l.starts_with("---\t");
        if marker && started {
            document += 1;
        }
        let trimmed = l.trim();
        started |= marker || !(trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('%'));
    }
    document
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Map = BTreeMap<String, serde_json::Value>;

    #[test]
    fn errors_say_what_and_where_in_one_line() {
        let err = from_str::<Map>("kind: Deployment\nmetadata: {name: [unclosed\n").unwrap_err();
        assert_eq!((err.at, err.limit), (Some((2, 18)), false), "{err}");
        assert_eq!(err.to_string(), format!("{} at line 2, column 18", err.message));
        assert!(!err.message.contains('\n') && !err.message.contains("at line"), "{err}");
        let err = from_str::<Map>("a: 1\na: 2\n").unwrap_err();
        assert_eq!((err.message.as_str(), err.at), ("duplicate key \"a\"", Some((2, 1))), "{err}");
    }

    #[test]
    fn values_read_as_they_did() {
        let map: Map = from_str("a: yes\nb: 0755\nc: 1_000\nd: .inf\ne: true\nf: 7\ng: ~\n").unwrap();
        let json = serde_json::to_value(&map).unwrap();
        let expect = serde_json::json!({"a": "yes", "b": "0755", "c": "1_000", "d": ".inf", "e": true, "f": 7, "g": null});
        assert_eq!(json, expect);
    }

    #[test]
    fn limits_are_errors_that_name_them() {
        let deep = format!("{}x\n", "- ".repeat(10_000));
        let err = from_str::<serde_json::Value>(&deep).unwrap_err();
        assert!(err.limit && err.message == "nested deeper than 64 levels", "{err}");
        let flow = format!("a: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        let err = from_str::<serde_json::Value>(&flow).unwrap_err();
        assert!(err.limit && err.message == "nested deeper than 64 levels", "{err}");
        // A billion laughs: nine levels of nine aliases.
        let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            bomb += &format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(", "));
        }
        let err = from_str::<serde_json::Value>(&bomb).unwrap_err();
        assert!(err.limit && err.message.contains("aliases expand to more than 100000"), "{err}");
        assert!(err.to_string().starts_with("beyond ebb's limits: "), "{err}");
    }

    #[test]
    fn documents_of_a_stream_and_where_an_error_is() {
        let values = documents("# c\n---\na: 1\n---\n---\n# only a comment\n---\nb: [x]\n").unwrap();
        assert_eq!(values, [serde_json::json!({"a": 1}), serde_json::json!({"b": ["x"]})]);
        let err = documents("---\na: 1\n---\nb: 2\n--- # third\nc: [\n").unwrap_err();
        assert_eq!(err.document, Some(3), "{err}");
        let err = documents("a: 1\nb: {\n").unwrap_err();
        assert_eq!(err.document, Some(1), "{err}");
    }

    #[test]
    fn inputs_past_the_cap_are_not_read() {
        let big = std::io::repeat(b'#').take(MAX_INPUT_BYTES as u64 + 10);
        let err = read_text(big).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge), "{err}");
        assert_eq!(err.to_string(), "beyond ebb's limits: larger than 32 MiB, the most YAML ebb reads");
        assert_eq!(read_text("a: b\n".as_bytes()).unwrap(), "a: b\n");
    }
}
