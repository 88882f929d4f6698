//! Parsers for the scalar forms annotations and ConfigMaps use, and the formatting that error messages share.
//! Each parser returns `None` on bad input; the caller knows the key and says what forms are accepted.

use std::time::Duration;

/// The longest duration any option accepts: a year, far beyond any real timeout or period, and small enough
/// that deadlines computed from it (arrival + timeout, drain start + deadline) never overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a Go duration as Knative accepts it: `60s`, `1m30s`, `1.5h`, `250ms`, `0`. Units `ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`; a leading `+` is allowed; negative durations and overflow are rejected.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        // Go accepts "1.s" and ".5s" but not "." alone.
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * nanos_per_unit;
        rest = tail;
    }
    // Go's limit is the largest i64 of nanoseconds (about 292 years).
    if !total.is_finite() || total > i64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total.round() as u64))
}

/// Parses a duration for ebb's own keys and flags: a Go duration, or a plain whole number of seconds
/// (`300` = `300s`), since the Knative fields they stand for (`timeoutSeconds`) are integers.
pub fn parse_duration(text: &str) -> Option<Duration> {
    match text.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => parse_go_duration(text),
    }
}

/// Parses a whole number as Go's `strconv.ParseInt` would (optional sign, decimal digits).
pub fn parse_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses a finite decimal number (`70`, `70.5`, `1e2`); `NaN` and infinities are rejected.
pub fn parse_number(text: &str) -> Option<f64> {
    let looks_numeric =
        text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-' | b'e' | b'E'));
    let value: f64 = text.parse().ok().filter(|_| looks_numeric)?;
    value.is_finite().then_some(value)
}

/// Parses a boolean as Go's `strconv.ParseBool`: `1 t T TRUE true True` and `0 f F FALSE false False`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Formats a duration the way users write them: `90s` as `1m30s`, `3600s` as `1h`, `1.5s` as `1.5s`.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".into();
    }
    let mut secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    if secs == 0 && nanos.is_multiple_of(1_000_000) {
        return format!("{}ms", nanos / 1_000_000);
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 || nanos > 0 {
        if nanos == 0 {
            out.push_str(&format!("{secs}s"));
        } else {
            let fraction = format!("{:09}", nanos);
            out.push_str(&format!("{secs}.{}s", fraction.trim_end_matches('0')));
        }
    }
    out
}

/// Formats a number without a needless fraction: `70` not `70.0`, `0.5` stays `0.5`.
pub fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{}", value as i64) } else { format!("{value}") }
}

/// Whether `host` is a valid DNS name (RFC 1123 subdomain, lower case, at most 253 characters).
pub fn is_dns_name(host: &str) -> bool {
    host.len() <= 253
        && !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn go_durations_in_knative_forms() {
        assert_eq!(parse_go_duration("60s"), Some(S(60)));
        assert_eq!(parse_go_duration("1m30s"), Some(S(90)));
        assert_eq!(parse_go_duration("1h"), Some(S(3600)));
        assert_eq!(parse_go_duration("1.5h"), Some(S(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("2h45m0.5s"), Some(Duration::from_millis(9_900_500)));
        assert_eq!(parse_go_duration("+5s"), Some(S(5)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10us"), Some(Duration::from_micros(10)));
    }

    #[test]
    fn go_durations_reject_what_go_rejects() {
        for bad in ["", "60", "s", "-5s", "5 s", "5x", "1.2.3s", ".s", "5s ", "1e3s", "NaNs", "9999999999h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ebb_durations_also_take_plain_seconds() {
        assert_eq!(parse_duration("300"), Some(S(300)));
        assert_eq!(parse_duration("5m"), Some(S(300)));
        assert_eq!(parse_duration("-3"), None);
        assert_eq!(parse_duration("3.5"), None);
    }

    #[test]
    fn numbers_and_booleans() {
        assert_eq!(parse_int("42"), Some(42));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("4.0"), None);
        assert_eq!(parse_int(" 4"), None);
        assert_eq!(parse_number("70.5"), Some(70.5));
        assert_eq!(parse_number("1e2"), Some(100.0));
        for bad in ["NaN", "inf", "-infinity", "", "7O", "0x10"] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("yes"), None);
    }

    #[test]
    fn durations_format_as_users_write_them() {
        assert_eq!(format_duration(S(90)), "1m30s");
        assert_eq!(format_duration(S(3600)), "1h");
        assert_eq!(format_duration(S(6)), "6s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_number(70.0), "70");
        assert_eq!(format_number(0.01), "0.01");
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("chat.example.com"));
        assert!(is_dns_name("a-1.b"));
        for bad in ["", "Chat.example.com", "-a.b", "a..b", "a_b", "a.b-", &"x".repeat(64)] {
            assert!(!is_dns_name(bad), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,40}") {
            let _ = parse_go_duration(&text);
            let _ = parse_duration(&text);
            let _ = parse_int(&text);
            let _ = parse_number(&text);
            let _ = is_dns_name(&text);
        }

        #[test]
        fn formatted_durations_parse_back(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_go_duration(&format_duration(d)), Some(d));
        }
    }
}
