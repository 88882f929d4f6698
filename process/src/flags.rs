//! Parsers for command-line flags, with messages clap shows as they are.

use std::time::Duration;

/// A duration flag: Go-style units (`300s`, `1m30s`, `250ms`) or whole seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    ebb_config::value::parse_duration(text).ok_or_else(|| {
        format!("'{text}' is not a duration; use Go-style units (300s, 1m30s, 250ms) or whole seconds")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_either_form_and_a_clear_refusal() {
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("45"), Ok(Duration::from_secs(45)));
        assert!(duration("soon").unwrap_err().contains("1m30s"));
    }
}
