//! How `ebb status` prints: `-o` formats (JSON and YAML documents besides the tables), and the screen that
//! `-w` redraws: in place on a terminal, one document per change otherwise.

use std::io::Write;

use serde_json::Value;

/// `-o`: what `ebb status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The table (its columns are stable: scripts may read them).
    Table,
    /// The table with more columns.
    Wide,
    /// A JSON document.
    Json,
    /// A YAML document.
    Yaml,
}

/// `value` in `format` (JSON or YAML; the tables are the caller's).
pub fn document(value: &Value, format: Format) -> String {
    match format {
        Format::Yaml => yaml(value),
        _ => format!("{value:#}\n"),
    }
}

/// `value` as block-style YAML, strings quoted only where YAML would read them as something else.
pub fn yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Array(items) if !items.is_empty() => sequence(items, 0, &mut out),
        Value::Object(map) if !map.is_empty() => mapping(map, 0, &mut out),
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
    out
}

fn sequence(items: &[Value], indent: usize, out: &mut String) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        if !matches!(item, Value::Array(inner) if !inner.is_empty()) {
            out.push(' ');
        }
        match item {
            Value::Object(map) if !map.is_empty() => {
                // The first key on the dash's line, the others under it.
                let mut first = String::new();
                mapping(map, indent + 2, &mut first);
                out.push_str(first.trim_start());
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                sequence(inner, indent + 2, out);
            }
            scalar => {
                out.push_str(&yaml_scalar(scalar));
                out.push('\n');
            }
        }
    }
}

fn mapping(map: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&yaml_string(key));
        out.push(':');
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                mapping(inner, indent + 2, out);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                sequence(items, indent, out);
            }
            scalar => {
                out.push(' ');
                out.push_str(&yaml_scalar(scalar));
                out.push('\n');
            }
        }
    }
}

fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::String(text) => yaml_string(text),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
        other => other.to_string(),
    }
}

/// A string plain when it cannot be read as anything else, else double-quoted (JSON's escapes are YAML's).
fn yaml_string(text: &str) -> String {
    let reserved = ["null", "~", "true", "false", "yes", "no", "on", "off", "y", "n"];
    let plain = text.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || " ._/-".contains(c))
        && !text.ends_with(' ')
        && !reserved.contains(&text.to_ascii_lowercase().as_str())
        && text.parse::<f64>().is_err();
    if plain { text.to_owned() } else { Value::String(text.to_owned()).to_string() }
}

/// The screen `-w` draws on.
pub struct Screen {
    terminal: bool,
    /// Lines drawn last time (on a terminal), to draw over.
    drawn: usize,
    last: Option<String>,
}

impl Screen {
    /// A screen on stdout; `terminal` draws over the last drawing instead of below it.
    pub fn new(terminal: bool) -> Self {
        Self { terminal, drawn: 0, last: None }
    }

    /// Draws `text` unless it is what is drawn already. On a terminal the cursor goes back up over the last
    /// drawing and clears it (ANSI codes only there); elsewhere each change is one more document, JSON ones
    /// as they are, tables and YAML after a blank line or `---`.
    pub fn draw(&mut self, text: String, format: Format) -> std::io::Result<()> {
        if self.last.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if self.terminal && self.drawn > 0 {
            write!(out, "\x1b[{}A\x1b[J", self.drawn)?;
        } else if self.last.is_some() {
            match format {
                Format::Yaml => out.write_all(b"---\n")?,
                Format::Json => {}
                Format::Table | Format::Wide => out.write_all(b"\n")?,
            }
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        self.drawn = text.lines().count();
        self.last = Some(text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn yaml_quotes_only_what_would_read_as_something_else() {
        let rows = json!([
            {"service": "models/chat", "desired": "3", "replicas": 3, "panic": false, "phase": null,
             "last_reason": "panic: 30 concurrent over target 7 x 1 pod -> 3 pods", "mode": "serve"},
            {"service": "models/no", "desired": "", "replicas": 0, "panic": true, "phase": "zero",
             "last_reason": "say \"hi\"\n", "mode": "on"},
        ]);
        // Keys in the order the rows were built (serde_json keeps insertion order).
        assert_eq!(
            yaml(&rows),
            "\
- service: models/chat
  desired: \"3\"
  replicas: 3
  panic: false
  phase: null
  last_reason: \"panic: 30 concurrent over target 7 x 1 pod -> 3 pods\"
  mode: serve
- service: models/no
  desired: \"\"
  replicas: 0
  panic: true
  phase: zero
  last_reason: \"say \\\"hi\\\"\\n\"
  mode: \"on\"
"
        );
        assert_eq!(yaml(&json!([])), "[]\n");
        assert_eq!(
            yaml(&json!({"services": [], "gateway": "127.0.0.1:8080", "nested": {"a": [1, [2]]}})),
            "\
services: []
gateway: \"127.0.0.1:8080\"
nested:
  a:
  - 1
  -
    - 2
"
        );
    }
}
