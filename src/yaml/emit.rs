//! Writing the documents `ebb inject` changed, in the layout ebb has always printed (serde_yaml's, over
//! libyaml's emitter): block style, two-space indentation, a sequence in a mapping at its key's indentation,
//! empty collections as `[]` and `{}`, and strings plain unless they would read back as something else, then
//! single-quoted (`'8'`, `'true'`, `''`), then double-quoted with escapes when single quotes cannot hold them;
//! strings with line breaks as literal blocks (`|`). Lines are never folded.
//!
//! ebb writes this itself because serde-saphyr's serializer has another layout (double quotes, long strings
//! folded), which would change every quoted value of every Deployment `ebb inject` edits: users diff and review
//! that output, and apply it.
//!
//! One rule is stricter than serde_yaml's: a string that YAML 1.1 reads as a boolean (`yes`, `on`, `n`) is
//! quoted, because `kubectl` reads YAML 1.1 and would send a boolean where a string belongs. Whatever this
//! writes reads back, with [`super::documents`], as the value it was written from.

use serde_json::{Map, Number, Value};

/// The YAML of one document (no `---`), ending in a newline.
pub fn to_string(value: &Value) -> String {
    let mut writer = Writer { out: String::new(), column: 0, whitespace: true, indention: true };
    writer.node(value, Indent::Root, Context::Other);
    // The document's end: the last line ends.
    writer.line_at(0);
    writer.out
}

/// The indentation of the block collection a node is in; none for the document's root.
#[derive(Clone, Copy)]
enum Indent {
    Root,
    At(usize),
}

impl Indent {
    /// The indentation of a block collection or a block scalar's lines inside.
    fn deeper(self, root: usize) -> usize {
        match self {
            Self::Root => root,
            Self::At(n) => n + 2,
        }
    }
}

/// What a node is to its parent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// A mapping's key written on its line (`key:`).
    SimpleKey,
    /// A mapping's value, or a key written after `?`.
    Mapping,
    /// The root, or an item of a sequence.
    Other,
}

/// libyaml's emitter, for the block-style documents serde_yaml asked it for: the same state (column, whether
/// the last thing written was whitespace, whether the line holds only indentation and indicators) and the same
/// decisions.
struct Writer {
    out: String,
    column: usize,
    whitespace: bool,
    indention: bool,
}

impl Writer {
    fn write(&mut self, text: &str) {
        self.out.push_str(text);
        self.column += text.chars().count();
    }

    fn newline(&mut self) {
        self.out.push('\n');
        self.column = 0;
    }

    /// Moves to `indent` on a fresh line, or on this one while it holds only indentation and indicators.
    fn line_at(&mut self, indent: usize) {
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.newline();
        }
        while self.column < indent {
            self.write(" ");
        }
        self.whitespace = true;
        self.indention = true;
    }

    fn indicator(&mut self, text: &str, need_whitespace: bool, is_whitespace: bool, is_indention: bool) {
        if need_whitespace && !self.whitespace {
            self.write(" ");
        }
        self.write(text);
        self.whitespace = is_whitespace;
        self.indention &= is_indention;
    }

    fn node(&mut self, value: &Value, indent: Indent, context: Context) {
        match value {
            Value::Null => self.plain("null"),
            Value::Bool(b) => self.plain(if *b { "true" } else { "false" }),
            Value::Number(n) => self.plain(&number(n)),
            Value::String(s) => self.string(s, indent, context == Context::SimpleKey),
            Value::Array(items) if items.is_empty() => self.empty("[", "]"),
            Value::Object(map) if map.is_empty() => self.empty("{", "}"),
            Value::Array(items) => self.sequence(items, indent, context),
            Value::Object(map) => self.mapping(map, indent),
        }
    }

    fn plain(&mut self, text: &str) {
        if !self.whitespace {
            self.write(" ");
        }
        self.write(text);
        self.whitespace = false;
        self.indention = false;
    }

    fn empty(&mut self, open: &str, close: &str) {
        self.indicator(open, true, true, false);
        self.indicator(close, false, false, false);
    }

    fn sequence(&mut self, items: &[Value], indent: Indent, context: Context) {
        // A mapping's value written after `key:` stays at the key's indentation.
        let at = match indent {
            Indent::At(n) if context == Context::Mapping && !self.indention => n,
            _ => indent.deeper(0),
        };
        for item in items {
            self.line_at(at);
            self.indicator("-", true, false, true);
            self.node(item, Indent::At(at), Context::Other);
        }
    }

    fn mapping(&mut self, map: &Map<String, Value>, indent: Indent) {
        let at = indent.deeper(0);
        for (key, value) in map {
            self.line_at(at);
            if is_simple_key(key) {
                self.string(key, Indent::At(at), true);
                self.indicator(":", false, false, false);
            } else {
                self.indicator("?", true, false, true);
                self.string(key, Indent::At(at), false);
                self.line_at(at);
                self.indicator(":", true, false, true);
            }
            self.node(value, Indent::At(at), Context::Mapping);
        }
    }

    fn string(&mut self, s: &str, indent: Indent, simple_key: bool) {
        match style(s, simple_key) {
            Style::Plain => self.plain(s),
            Style::SingleQuoted => {
                self.indicator("'", true, false, false);
                self.write(&s.replace('\'', "''"));
                self.indicator("'", false, false, false);
            }
            Style::DoubleQuoted => {
                self.indicator("\"", true, false, false);
                let mut escaped = String::new();
                double_quoted(s, &mut escaped);
                self.write(&escaped);
                self.indicator("\"", false, false, false);
            }
            Style::Literal => self.literal(s, indent.deeper(2)),
        }
    }

    /// A literal block: `|`, its indentation and chomping indicators, then the lines at `indent`.
    fn literal(&mut self, s: &str, indent: usize) {
        self.indicator("|", true, false, false);
        if s.starts_with([' ', '\n']) {
            self.indicator("2", false, false, false);
        }
        let chomp = match s.strip_suffix('\n') {
            None => Some("-"),
            Some("") => Some("+"),
            Some(rest) if rest.ends_with('\n') => Some("+"),
            Some(_) => None,
        };
        if let Some(chomp) = chomp {
            self.indicator(chomp, false, false, false);
        }
        self.newline();
        self.indention = true;
        self.whitespace = true;
        let mut breaks = true;
        for c in s.chars() {
            if c == '\n' {
                self.newline();
                self.indention = true;
                breaks = true;
            } else {
                if breaks {
                    self.line_at(indent);
                }
                self.write(c.encode_utf8(&mut [0; 4]));
                self.indention = false;
                breaks = false;
            }
        }
    }
}

/// A number as serde_yaml wrote it: integers in decimal, floats in their shortest form (`ryu`'s: `1.0`,
/// `1e300`, `1e-7`), which is serde_json's but for the exponent's `+`.
fn number(n: &Number) -> String {
    let text = n.to_string();
    if n.is_f64() { text.replacen("e+", "e", 1) } else { text }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
}

/// How a string is written, as serde_yaml and libyaml chose (`simple_key`: a mapping key on its line).
fn style(s: &str, simple_key: bool) -> Style {
    let scan = Scan::of(s);
    let mut style = if s.contains('\n') {
        Style::Literal
    } else if reads_as_other_than_string(s) {
        Style::SingleQuoted
    } else {
        Style::Plain
    };
    if simple_key && scan.multiline {
        style = Style::DoubleQuoted;
    }
    if style == Style::Plain && (!scan.plain_allowed || (s.is_empty() && simple_key)) {
        style = Style::SingleQuoted;
    }
    if style == Style::SingleQuoted && !scan.single_quoted_allowed {
        style = Style::DoubleQuoted;
    }
    if style == Style::Literal && (!scan.block_allowed || simple_key) {
        style = Style::DoubleQuoted;
    }
    style
}

/// A key goes on its line (`key: value`) unless it spans lines or is longer than 128 bytes (libyaml's
/// rule); otherwise it is a complex key (`? key` then `: value`).
fn is_simple_key(key: &str) -> bool {
    !Scan::of(key).multiline && key.len() <= 128
}

/// What libyaml's emitter finds in a string (yaml_emitter_analyze_scalar, block context).
struct Scan {
    multiline: bool,
    plain_allowed: bool,
    single_quoted_allowed: bool,
    block_allowed: bool,
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// libyaml's printable characters, less U+2028 and U+2029: YAML 1.2 readers take them as text, not line
/// breaks, so a string holding one is escaped in double quotes.
fn is_printable(c: char) -> bool {
    matches!(c, '\n' | ' '..='~' | '\u{A0}'..='\u{D7FF}' | '\u{10000}'..)
        || (('\u{E000}'..='\u{FFFD}').contains(&c) && c != '\u{FEFF}' && c != '\u{2028}' && c != '\u{2029}')
}

impl Scan {
    fn of(s: &str) -> Self {
        if s.is_empty() {
            return Self {
                multiline: false,
                plain_allowed: true,
                single_quoted_allowed: true,
                block_allowed: false,
            };
        }
        let chars: Vec<char> = s.chars().collect();
        let blankz =
            |i: usize| chars.get(i).is_none_or(|&c| c == ' ' || c == '\t' || c == '\0' || is_break(c));
        let (mut block_indicators, mut line_breaks, mut special) = (false, false, false);
        let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) =
            (false, false, false, false);
        let (mut break_space, mut space_break, mut previous_space, mut previous_break) =
            (false, false, false, false);
        if s.starts_with("---") || s.starts_with("...") {
            block_indicators = true;
        }
        let mut preceded_by_whitespace = true;
        let last = chars.len() - 1;
        for (i, &c) in chars.iter().enumerate() {
            let followed_by_whitespace = blankz(i + 1);
            if i == 0 {
                match c {
                    '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%'
                    | '@' | '`' => block_indicators = true,
                    '?' | ':' | '-' if followed_by_whitespace => block_indicators = true,
                    _ => {}
                }
            } else if (c == ':' && followed_by_whitespace) || (c == '#' && preceded_by_whitespace) {
                block_indicators = true;
            }
            special |= !is_printable(c);
            if c == ' ' {
                leading_space |= i == 0;
                trailing_space |= i == last;
                break_space |= previous_break;
                previous_space = true;
                previous_break = false;
            } else if is_break(c) {
                line_breaks = true;
                leading_break |= i == 0;
                trailing_break |= i == last;
                space_break |= previous_space;
                previous_space = false;
                previous_break = true;
            } else {
                previous_space = false;
                previous_break = false;
            }
            preceded_by_whitespace = c == ' ' || c == '\t' || c == '\0' || is_break(c);
        }
        let mut scan = Self {
            multiline: line_breaks,
            plain_allowed: true,
            single_quoted_allowed: true,
            block_allowed: true,
        };
        if leading_space || leading_break || trailing_space || trailing_break {
            scan.plain_allowed = false;
        }
        if trailing_space {
            scan.block_allowed = false;
        }
        if break_space {
            scan.plain_allowed = false;
            scan.single_quoted_allowed = false;
        }
        if space_break || special {
            scan.plain_allowed = false;
            scan.single_quoted_allowed = false;
            scan.block_allowed = false;
        }
        if line_breaks || block_indicators {
            scan.plain_allowed = false;
        }
        scan
    }
}

/// Whether a plain scalar `s` would be read as something other than the string: null, a boolean (YAML 1.2's,
/// or YAML 1.1's for `kubectl`), an integer (decimal, `0x`, `0o`, `0b`, any case), a float, or digits with a
/// leading zero (a string in YAML 1.2 that YAML 1.1 reads as octal).
fn reads_as_other_than_string(s: &str) -> bool {
    const YAML_1_1_BOOLEANS: &[&str] =
        &["y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"];
    // `<<` is a merge key.
    if s.is_empty() || matches!(s, "~" | "null" | "Null" | "NULL" | "<<") {
        return true;
    }
    if matches!(s, "true" | "True" | "TRUE" | "false" | "False" | "FALSE") || YAML_1_1_BOOLEANS.contains(&s) {
        return true;
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    if unsigned.len() > 1 && unsigned.starts_with('0') && unsigned[1..].bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let radix = |prefix: [&str; 2], radix: u32| {
        prefix.iter().any(|p| {
            unsigned
                .strip_prefix(p)
                .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix)))
        })
    };
    if radix(["0x", "0X"], 16) || radix(["0o", "0O"], 8) || radix(["0b", "0B"], 2) {
        return true;
    }
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    if matches!(s, ".inf" | ".Inf" | ".INF" | "-.inf" | "-.Inf" | "-.INF" | "+.inf" | "+.Inf" | "+.INF") {
        return true;
    }
    if matches!(unsigned, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    // A float in Rust's syntax, as serde_yaml read it, too large ones (`1e999`) included; `inf` and `nan`
    // spelled out are text in YAML.
    let float = match s.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return false,
        Some(rest) => rest,
        None => s,
    };
    float.parse::<f64>().is_ok() && float.bytes().any(|b| b.is_ascii_digit())
}

/// A double-quoted scalar, with libyaml's escapes.
fn double_quoted(s: &str, out: &mut String) {
    for c in s.chars() {
        let escape = match c {
            '\0' => "0",
            '\u{7}' => "a",
            '\u{8}' => "b",
            '\t' => "t",
            '\n' => "n",
            '\u{B}' => "v",
            '\u{C}' => "f",
            '\r' => "r",
            '\u{1B}' => "e",
            '"' => "\"",
            '\\' => "\\",
            '\u{85}' => "N",
            '\u{2028}' => "L",
            '\u{2029}' => "P",
            c if !is_printable(c) || c == '\u{FEFF}' => {
                let code = u32::from(c);
                let hex = if code <= 0xFF {
                    format!("x{code:02X}")
                } else if code <= 0xFFFF {
                    format!("u{code:04X}")
                } else {
                    format!("U{code:08X}")
                };
                out.push('\\');
                out.push_str(&hex);
                continue;
            }
            c => {
                out.push(c);
                continue;
            }
        };
        out.push('\\');
        out.push_str(escape);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_layout_ebb_has_always_printed() {
        let value = json!({
            "kind": "Deployment",
            "metadata": {"name": "chat", "labels": {}, "annotations": {"ebb.dev/container-concurrency": "8"}},
            "spec": {"template": {"spec": {
                "containers": [
                    {"name": "model", "args": ["--port", "8000"], "env": [], "ports": [{"containerPort": 8000}]},
                    {"name": "queue-proxy", "command": [["nested"]], "script": "set -e\nrun\n"},
                ],
                "terminationGracePeriodSeconds": 95,
                "ratio": 0.5,
                "nothing": null,
            }}},
        });
        let expected = "\
kind: Deployment
metadata:
  name: chat
  labels: {}
  annotations:
    ebb.dev/container-concurrency: '8'
spec:
  template:
    spec:
      containers:
      - name: model
        args:
        - --port
        - '8000'
        env: []
        ports:
        - containerPort: 8000
      - name: queue-proxy
        command:
        - - nested
        script: |
          set -e
          run
      terminationGracePeriodSeconds: 95
      ratio: 0.5
      nothing: null
";
        assert_eq!(to_string(&value), expected);
    }

    #[test]
    fn strings_are_quoted_only_when_they_must_be() {
        for (text, written) in [
            ("plain text, with commas and:colons", "plain text, with commas and:colons"),
            ("it's", "it's"),
            ("héllo ✓", "héllo ✓"),
            ("8", "'8'"),
            ("0755", "'0755'"),
            ("1e3", "'1e3'"),
            ("0x1F", "'0x1F'"),
            ("true", "'true'"),
            ("null", "'null'"),
            ("~", "'~'"),
            ("", "''"),
            ("yes", "'yes'"),
            ("on", "'on'"),
            ("<<", "'<<'"),
            ("a: b", "'a: b'"),
            ("- item", "'- item'"),
            ("*ref", "'*ref'"),
            ("# not a comment", "'# not a comment'"),
            (" leading", "' leading'"),
            ("tab\there", "\"tab\\there\""),
            ("bell\u{7}", "\"bell\\a\""),
            ("trailing \nspace", "\"trailing \\nspace\""),
            ("two\nlines", "|-\n  two\n  lines"),
            ("kept\n\n", "|+\n  kept\n\n"),
            ("  indented\n", "|2\n    indented"),
        ] {
            let out = to_string(&json!({"k": text}));
            assert_eq!(
                out.trim_end_matches('\n'),
                format!("k: {written}").trim_end_matches('\n'),
                "{text:?}"
            );
        }
        // A key longer than 128 bytes is written after `?`.
        let key = "k".repeat(129);
        assert_eq!(to_string(&json!({ key.clone(): [1] })), format!("? {key}\n: - 1\n"));
        assert_eq!(to_string(&json!("root")), "root\n");
        assert_eq!(to_string(&json!(["a", {"b": "c"}])), "- a\n- b: c\n");
    }

    fn text() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "a",
            "x y",
            " ",
            "\n",
            "\t",
            "-",
            "---",
            "...",
            ":",
            ": ",
            "#",
            " #",
            "'",
            "\"",
            "\\",
            "?",
            "!",
            "&",
            "*",
            "|",
            ">",
            "%",
            "@",
            "`",
            "[",
            "]",
            "{",
            "}",
            ",",
            "0",
            "1",
            "0x1F",
            "0X1F",
            "1e3",
            "1E999",
            ".5",
            "yes",
            "on",
            "true",
            "null",
            "~",
            "<<",
            "é",
            "\u{85}",
            "\u{A0}",
            "\u{2028}",
            "\u{FEFF}",
            "\r",
            "\u{7}",
            "\u{7F}",
            "\u{10000}",
            "1_0",
            "+.nan",
            ".inf",
            "=",
        ]);
        prop::collection::vec(pieces, 0..5).prop_map(|p| p.concat())
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::vec((text(), inner), 0..4)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever ebb writes, ebb reads back as the value it wrote.
        #[test]
        fn what_is_written_reads_back_the_same(value in value()) {
            let document = json!({"k": value});
            let yaml = to_string(&document);
            let read = super::super::documents(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
            prop_assert_eq!(read, vec![document], "{}", yaml);
        }
    }
}
