//! Metrics pages in the format the scraper asks for. prometheus-client writes OpenMetrics, which Prometheus
//! asks for first (`Accept: application/openmetrics-text;...`) and gets. Every other client (`curl`, `promtool
//! check metrics`, scrapers that read only the older format) gets the Prometheus text format 0.0.4, as Go's
//! client libraries do: the same samples, with a counter's `# HELP` and `# TYPE` naming the sample
//! (`ebb_x_total`, which OpenMetrics names `ebb_x`) and no `# EOF`, `# UNIT` or `_created`.

/// OpenMetrics' content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (with a weight above zero).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            parts.next().is_some_and(|kind| kind.eq_ignore_ascii_case("application/openmetrics-text"))
                && !parts.any(|p| {
                    p.split_once('=').is_some_and(|(k, v)| {
                        k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                    })
                })
        })
    })
}

/// The content type and body for a client that sent `accept`, from an OpenMetrics page.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS, openmetrics)
    } else {
        (PROMETHEUS_TEXT, prometheus_text(&openmetrics))
    }
}

/// An OpenMetrics page in the Prometheus text format 0.0.4.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let is_counter = |name: &str| counters.contains(&name);
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // The older format escapes only `\` and newlines in help text.
            let help = help.replace("\\\"", "\"");
            let suffix = if is_counter(name) { "_total" } else { "" };
            out.push_str(&format!("# HELP {name}{suffix} {help}\n"));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            match rest.split_once(' ') {
                Some((name, "counter")) => out.push_str(&format!("# TYPE {name}_total counter\n")),
                Some((name, "unknown")) => out.push_str(&format!("# TYPE {name} untyped\n")),
                _ => out.push_str(&format!("{line}\n")),
            }
        } else {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if name.strip_suffix("_created").is_some_and(is_counter) {
                continue;
            }
            // Exemplars are OpenMetrics only.
            let sample = line.split_once(" # ").map_or(line, |(sample, _)| sample);
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP ebb_requests Requests \\\"served\\\".
# TYPE ebb_requests counter
ebb_requests_total{status_class=\"2xx\"} 4 # {trace_id=\"x\"} 1.0
ebb_requests_created{status_class=\"2xx\"} 1700000000.0
# HELP ebb_wait_seconds Wait.
# TYPE ebb_wait_seconds histogram
# UNIT ebb_wait_seconds seconds
ebb_wait_seconds_bucket{le=\"+Inf\"} 1
ebb_wait_seconds_sum 0.5
ebb_wait_seconds_count 1
# HELP ebb_up Up.
# TYPE ebb_up gauge
ebb_up 1
# EOF
";

    #[test]
    fn the_text_format_names_counters_by_their_samples_and_drops_what_only_openmetrics_has() {
        assert_eq!(
            prometheus_text(PAGE),
            "\
# HELP ebb_requests_total Requests \"served\".
# TYPE ebb_requests_total counter
ebb_requests_total{status_class=\"2xx\"} 4
# HELP ebb_wait_seconds Wait.
# TYPE ebb_wait_seconds histogram
ebb_wait_seconds_bucket{le=\"+Inf\"} 1
ebb_wait_seconds_sum 0.5
ebb_wait_seconds_count 1
# HELP ebb_up Up.
# TYPE ebb_up gauge
ebb_up 1
"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_text_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;\
                          q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus), PAGE.to_owned()), (OPENMETRICS, PAGE.to_owned()));
        for accept in [None, Some("*/*"), Some("text/plain"), Some("application/openmetrics-text; q=0")] {
            let (content_type, body) = negotiate(accept, PAGE.to_owned());
            assert_eq!(content_type, PROMETHEUS_TEXT, "{accept:?}");
            assert!(!body.contains("# EOF"), "{accept:?}");
        }
    }
}
