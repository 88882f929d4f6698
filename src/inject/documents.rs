//! Cutting a multi-document YAML stream into documents, each with its text as written, so that documents
//! `ebb inject` does not change are printed exactly as they came (comments and layout included), in order.

use serde_json::Value;

use crate::yaml;

/// One document: its text as written (when the stream could be split faithfully) and its value (`None` for
/// a document that is only comments or empty).
pub struct Document {
    /// The text as written; `None` when it has to be re-serialized.
    pub raw: Option<String>,
    /// The value; `None` for a document that is only comments.
    pub value: Option<Value>,
}

/// Splits a YAML stream into documents. The text is cut at `---` lines so that documents that are not changed
/// can be printed as written; the cut is trusted only when every piece parses to exactly the document the
/// YAML parser saw there, otherwise documents are re-serialized. Comment-only pieces stay with the document
/// that follows them. An error when the stream is not YAML (or goes beyond ebb's limits).
pub fn split_documents(text: &str) -> Result<Vec<Document>, yaml::Error> {
    let values = yaml::documents(text)?;
    let mut pieces: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        let marker = line.trim_end();
        if marker == "---" || marker.starts_with("--- ") || marker.starts_with("---\t") {
            pieces.push(std::mem::take(&mut current));
            // Content after the marker on the same line (`--- # comment`) stays with its document.
            let rest = line[3..].trim_start_matches([' ', '\t']);
            if !rest.trim().is_empty() {
                current.push_str(rest);
            }
        } else {
            current.push_str(line);
        }
    }
    pieces.push(current);
    // Each piece parsed alone; comment-only pieces are carried into the next document's text.
    let mut raw_documents: Vec<(String, Value)> = Vec::new();
    let mut pending = String::new();
    let mut faithful = true;
    for piece in pieces {
        let Ok(mut parsed) = yaml::documents(&piece) else {
            faithful = false;
            continue;
        };
        match parsed.len() {
            0 => pending.push_str(&piece),
            1 => {
                let raw = std::mem::take(&mut pending) + &piece;
                let raw = if raw.ends_with('\n') { raw } else { raw + "\n" };
                raw_documents.push((raw, parsed.pop().unwrap_or(Value::Null)));
            }
            _ => faithful = false,
        }
    }
    faithful &= raw_documents.len() == values.len()
        && raw_documents.iter().zip(&values).all(|((_, parsed), value)| parsed == value);
    if !faithful {
        return Ok(values.into_iter().map(|value| Document { raw: None, value: Some(value) }).collect());
    }
    let mut documents: Vec<Document> = raw_documents
        .into_iter()
        .map(|(raw, value)| Document { raw: Some(raw), value: Some(value) })
        .collect();
    // Trailing comments: kept after the last document.
    if pending.lines().any(|l| !l.trim().is_empty()) {
        match documents.last_mut().and_then(|d| d.raw.as_mut()) {
            Some(raw) => raw.push_str(&pending),
            None => documents.push(Document { raw: Some(pending), value: None }),
        }
    }
    Ok(documents)
}
