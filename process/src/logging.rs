//! The log subscriber every ebb process installs: `RUST_LOG` filters (default `info`), lines go to stderr.
//!
//! - Format: `--log-format text|json` (or `EBB_LOG_FORMAT`); without either, text when stderr is a terminal and
//!   JSON otherwise, so a person at a terminal reads lines and a pod's log collector gets objects.
//! - JSON: one object per line with the message at the top level and the event's fields beside it, as Loki's
//!   `| json`, Elasticsearch and Cloud Logging read them:
//!   `{"timestamp":"2025-01-02T03:04:05.678901Z","level":"INFO","message":"scaled to zero","service":"demo","target":"ebb_autoscaler::engine"}`.
//!   A field named like one of the fixed keys (`timestamp`, `level`, `target`) would repeat that key; none does.
//! - Colours only when stderr is a terminal and `NO_COLOR` is unset: a pod's log collector or a file would
//!   keep the escape codes verbatim.

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, the message at the top level.
    Json,
}

/// The variable every component reads for `--log-format`.
pub const LOG_FORMAT_ENV: &str = ebb_config::sidecar::env::LOG_FORMAT;

impl LogFormat {
    /// `text` or `json`, as the `--log-format` flag spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }

    /// `format` if one was asked for, else text on a terminal and JSON otherwise.
    pub fn or_default_for_stderr(format: Option<Self>) -> Self {
        format.unwrap_or_else(|| if stderr_is_terminal() { Self::Text } else { Self::Json })
    }
}

/// The `--log-format` flag, the same on every component (flattened into each one's arguments).
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct LogArgs {
    /// Log format [default: text when stderr is a terminal, else json: one object per line with the message
    /// at the top level].
    #[arg(long = "log-format", env = LOG_FORMAT_ENV, value_enum, value_name = "FORMAT")]
    pub format: Option<LogFormat>,
}

fn stderr_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// Installs the subscriber in `format` (or the default for stderr) and returns the format used. A process
/// that already has one (the `ebb` binary running a component in-process) keeps it.
pub fn init(format: Option<LogFormat>) -> LogFormat {
    let format = LogFormat::or_default_for_stderr(format);
    let ansi = stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing::subscriber::set_global_default(subscriber(format, ansi, std::io::stderr));
    format
}

/// The subscriber, writing to `writer`.
fn subscriber<W>(format: LogFormat, ansi: bool, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        // No spans: ebb's events carry their context as fields, and flat objects are what collectors index.
        LogFormat::Json => Box::new(
            builder
                .with_ansi(false)
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat, ansi: bool) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber(format, ansi, move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(service = "models/chat", pods = 3, "scaled up \"fast\"");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_carry_the_message_at_the_top_level_with_the_fields_beside_it() {
        let text = logged(LogFormat::Json, true);
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["message"], "scaled up \"fast\"", "{text}");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["service"], "models/chat");
        assert_eq!(line["pods"], 3);
        assert!(line["target"].as_str().unwrap().starts_with("ebb_process"), "{text}");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{text}");
        assert!(line.get("fields").is_none(), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn text_has_colours_only_when_asked() {
        let plain = logged(LogFormat::Text, false);
        assert!(plain.contains("WARN") && plain.contains("scaled up") && plain.contains("pods=3"), "{plain}");
        assert!(!plain.contains('\x1b'), "{plain}");
        assert!(logged(LogFormat::Text, true).contains('\x1b'));
    }
}
