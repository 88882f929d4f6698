//! Cutting a multi-document YAML stream into documents, each with its text as written, so that documents
//! `ebb inject` does not change are printed exactly as they came (comments and layout included), in order.

use serde::Deserialize;
use serde_yaml::Value;

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
/// that follows them. `Err((document, message))` when the stream is not YAML.
pub fn split_documents(text: &str) -> Result<Vec<Document>, (usize, String)> {
    let mut values = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        values.push(Value::deserialize(document).map_err(|e| (index + 1, e.to_string()))?);
    }
    let values: Vec<Value> = values.into_iter().filter(|v| !v.is_null()).collect();
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
        let mut parsed = Vec::new();
        for document in serde_yaml::Deserializer::from_str(&piece) {
            match Value::deserialize(document) {
                Ok(v) if !v.is_null() => parsed.push(v),
                Ok(_) => {}
                // The iterator repeats a syntax error forever: stop at the first.
                Err(_) => {
                    faithful = false;
                    break;
                }
            }
        }
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
