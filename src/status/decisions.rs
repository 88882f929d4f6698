//! `ebb status --service NS/NAME`: one service's last decisions, from `/debug/decisions` of `ebb up` or of an
//! autoscaler (at a URL, or in a cluster through the API server's service proxy), as a table (or JSON or
//! YAML), and with `--plot FILE` as an SVG that adds the service's cold-start phases from the server's
//! `/metrics`. `-w` reads them again every two seconds and draws what changed.

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::client::Endpoint;
use super::columns::render;
use super::output::{Format, Screen, document};
use crate::plot::{Chart, Point, svg};

/// What to show besides the table.
pub struct Options<'a> {
    /// Only the last N decisions.
    pub limit: Option<usize>,
    /// Write an SVG here.
    pub plot: Option<&'a Path>,
    /// `-o`: the table (wide is the same), JSON or YAML.
    pub format: Format,
    /// `-w`: read them again every two seconds and draw what changed.
    pub watch: bool,
}

/// The cold-start histograms, in the order a cold start passes them, with the band's label for each.
const PHASES: [(&str, &str); 4] = [
    ("ebb_autoscaler_cold_start_decision_seconds", "decision"),
    ("ebb_activator_cold_start_pod_created_seconds", "scale-up until a pod exists"),
    ("ebb_activator_cold_start_pod_ready_seconds", "pod start"),
    ("ebb_activator_cold_start_first_byte_seconds", "first byte"),
];

/// Prints the decisions; exit 1 when the server cannot be reached or does not know the service.
pub async fn run(endpoint: &Endpoint, service: &str, options: Options<'_>) -> ExitCode {
    let limit = options.limit.map(|n| format!("&limit={n}")).unwrap_or_default();
    let path = format!("/debug/decisions?service={}{limit}", service.replace('/', "%2F"));
    let mut screen = Screen::new(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    loop {
        let trace = match read(endpoint, &path).await {
            Ok(trace) => trace,
            Err(err) => {
                eprintln!(
                    "ebb status: cannot read the decisions of {service} at {}: {err}",
                    endpoint.describe()
                );
                if options.watch {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    continue;
                }
                return ExitCode::FAILURE;
            }
        };
        let decisions = trace["decisions"].as_array().cloned().unwrap_or_default();
        let text = match options.format {
            Format::Table | Format::Wide => table(&decisions),
            Format::Json | Format::Yaml => document(&trace, options.format),
        };
        if !options.watch {
            print!("{text}");
            break;
        }
        if screen.draw(text, options.format).is_err() {
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    if let Some(file) = options.plot {
        return plot(endpoint, service, &path, file).await;
    }
    ExitCode::SUCCESS
}

async fn read(endpoint: &Endpoint, path: &str) -> Result<Value, String> {
    match endpoint.get(path).await {
        Ok((200, body)) => serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string()),
        Ok((status @ (404 | 503), body)) if matches!(endpoint, Endpoint::ServiceProxy { .. }) => {
            Err(format!(
                "{status}: {} (is the autoscaler running, with its Service from manifests/autoscaler.yaml, in that \
             namespace? --autoscaler-namespace names another)",
                String::from_utf8_lossy(&body).trim()
            ))
        }
        Ok((status, body)) => Err(format!("{status}: {}", String::from_utf8_lossy(&body).trim())),
        Err(err) => Err(match endpoint {
            Endpoint::Url { .. } => {
                format!("{err} (is `ebb up` running, or the autoscaler reachable there?)")
            }
            Endpoint::ServiceProxy { .. } => err,
        }),
    }
}

/// Writes the SVG of the decisions, with the cold-start phases the server measured.
async fn plot(endpoint: &Endpoint, service: &str, trace_path: &str, path: &Path) -> ExitCode {
    let decisions = match read(endpoint, trace_path).await {
        Ok(trace) => trace["decisions"].as_array().cloned().unwrap_or_default(),
        Err(err) => {
            eprintln!("ebb status: cannot read the decisions of {service}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (namespace, name) = service.split_once('/').unwrap_or(("default", service));
    // The phases are a bonus: an autoscaler's page has only the decision phase, and none may have happened.
    let metrics = match endpoint.get("/metrics").await {
        Ok((200, body)) => String::from_utf8_lossy(&body).into_owned(),
        _ => String::new(),
    };
    let chart =
        chart(&format!("ebb: {namespace}/{name}"), &decisions, &cold_start(&metrics, namespace, name));
    if let Err(err) = std::fs::write(path, svg(&chart)) {
        eprintln!("ebb status: cannot write {}: {err}", path.display());
        return ExitCode::FAILURE;
    }
    eprintln!("ebb status: wrote {} ({} decisions)", path.display(), decisions.len());
    ExitCode::SUCCESS
}

/// One row per decision, oldest first.
fn table(decisions: &[Value]) -> String {
    let headers =
        ["TIME (UTC)", "OBSERVED", "PANIC WINDOW", "READY", "DESIRED", "PANIC", "MODE", "PHASE", "REASON"];
    let number = |v: &Value| v.as_f64().map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"));
    let text = |v: &Value| match v {
        Value::String(t) => t.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let rows = decisions
        .iter()
        .map(|d| {
            vec![
                clock(d["unix_ms"].as_u64().unwrap_or(0)),
                number(&d["observed_stable"]),
                number(&d["observed_panic"]),
                text(&d["ready"]),
                text(&d["desired"]),
                if d["panic"] == true { "yes".to_owned() } else { "no".to_owned() },
                text(&d["mode"]),
                text(&d["phase"]),
                reason(d),
            ]
        })
        .collect();
    render(&headers, rows)
}

/// A decision's reason, with the ticks it stands for when the autoscaler kept several that decided alike as
/// one (the row shows the latest).
fn reason(d: &Value) -> String {
    let reason = d["reason"].as_str().unwrap_or("-");
    match (d["ticks"].as_u64(), d["since_unix_ms"].as_u64()) {
        (Some(ticks), Some(since)) if ticks > 1 => {
            format!("{reason} ({ticks} ticks alike since {})", clock(since))
        }
        _ => reason.to_owned(),
    }
}

/// `HH:MM:SS.mmm` of a Unix time in milliseconds.
fn clock(unix_ms: u64) -> String {
    let (secs, ms) = (unix_ms / 1000, unix_ms % 1000);
    format!("{:02}:{:02}:{:02}.{ms:03}", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// The plot of the decisions: time from the first one, the stable window's load as the load line.
fn chart(heading: &str, decisions: &[Value], phases: &[(String, f64)]) -> Chart {
    let start = decisions.first().and_then(|d| d["unix_ms"].as_u64()).unwrap_or(0);
    let t = |d: &Value| d["unix_ms"].as_u64().unwrap_or(start).saturating_sub(start) as f64 / 1000.0;
    let count = |v: &Value| v.as_u64().map_or(0, |n| n as u32);
    Chart {
        heading: heading.to_owned(),
        points: decisions
            .iter()
            .map(|d| Point {
                t: t(d),
                ready: count(&d["ready"]),
                replicas: count(&d["desired"]),
                desired: d["decider_desired"].as_u64().map(|n| n as u32),
                panic: d["panic"] == true,
            })
            .collect(),
        load: decisions.iter().map(|d| (t(d), d["observed_stable"].as_f64().unwrap_or(0.0))).collect(),
        load_unit: "stable-window load".to_owned(),
        phases: phases.to_vec(),
    }
}

/// The service's mean cold-start phases from a Prometheus page, once a cold start has ended there. The
/// activator's first phase includes the autoscaler's decision, which is split out of it.
fn cold_start(metrics: &str, namespace: &str, name: &str) -> Vec<(String, f64)> {
    let labels = format!("namespace=\"{namespace}\",service=\"{name}\"");
    let series = |family: &str, suffix: &str| {
        metrics.lines().find_map(|line| {
            let rest = line.strip_prefix(family)?.strip_prefix(suffix)?.strip_prefix('{')?;
            let (found, value) = rest.split_once("} ")?;
            (found == labels).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
    };
    let mean = |family: &str| match (series(family, "_sum"), series(family, "_count")) {
        (Some(sum), Some(count)) if count > 0.0 => Some(sum / count),
        _ => None,
    };
    let means: Vec<Option<f64>> = PHASES.iter().map(|(family, _)| mean(family)).collect();
    let [decision, created, ready, first_byte] = [means[0], means[1], means[2], means[3]];
    let (Some(created), Some(ready), Some(first_byte)) = (created, ready, first_byte) else {
        return Vec::new();
    };
    let decision = decision.unwrap_or(0.0).min(created);
    [
        (PHASES[0].1, decision),
        (PHASES[1].1, created - decision),
        (PHASES[2].1, ready),
        (PHASES[3].1, first_byte),
    ]
    .into_iter()
    .map(|(label, seconds)| (label.to_owned(), seconds))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phases_are_the_means_of_the_services_histograms() {
        let page = "\
ebb_activator_cold_start_pod_created_seconds_sum{namespace=\"default\",service=\"demo\"} 0.2
ebb_activator_cold_start_pod_created_seconds_count{namespace=\"default\",service=\"demo\"} 2
ebb_activator_cold_start_pod_created_seconds_sum{namespace=\"default\",service=\"other\"} 9
ebb_activator_cold_start_pod_ready_seconds_sum{namespace=\"default\",service=\"demo\"} 1.0
ebb_activator_cold_start_pod_ready_seconds_count{namespace=\"default\",service=\"demo\"} 2
ebb_activator_cold_start_first_byte_seconds_sum{namespace=\"default\",service=\"demo\"} 0.04
ebb_activator_cold_start_first_byte_seconds_count{namespace=\"default\",service=\"demo\"} 2
ebb_autoscaler_cold_start_decision_seconds_sum{namespace=\"default\",service=\"demo\"} 0.002
ebb_autoscaler_cold_start_decision_seconds_count{namespace=\"default\",service=\"demo\"} 2
";
        let phases = cold_start(page, "default", "demo");
        let rounded: Vec<(&str, i64)> =
            phases.iter().map(|(n, s)| (n.as_str(), (s * 1e6).round() as i64)).collect();
        assert_eq!(
            rounded,
            [
                ("decision", 1000),
                ("scale-up until a pod exists", 99_000),
                ("pod start", 500_000),
                ("first byte", 20_000)
            ]
        );
        assert!(cold_start(page, "default", "missing").is_empty());
        assert!(cold_start("", "default", "demo").is_empty());
    }

    #[test]
    fn decisions_become_a_table_and_a_chart() {
        let decisions: Vec<Value> = serde_json::from_str(
            r#"[{"unix_ms": 3723004005, "observed_stable": 1.5, "observed_panic": 2.0, "ready": 0, "desired": 1,
                 "decider_desired": 1, "panic": true, "mode": "proxy", "phase": "activating", "reason": "up"},
                {"unix_ms": 3723006005, "observed_stable": null, "observed_panic": null, "ready": 1, "desired": 1,
                 "decider_desired": null, "panic": false, "mode": "serve", "phase": "active", "reason": "hold",
                 "ticks": 3, "since_unix_ms": 3723005005}]"#,
        )
        .unwrap();
        let text = table(&decisions);
        assert!(text.starts_with("TIME (UTC)"), "{text}");
        assert!(text.contains("02:10:04.005  1.50      2.00"), "{text}");
        assert!(text.lines().nth(2).unwrap().contains("-         -"), "{text}");
        assert!(text.lines().nth(1).unwrap().ends_with("up"), "one tick: the reason alone: {text}");
        assert!(text.lines().nth(2).unwrap().ends_with("hold (3 ticks alike since 02:10:05.005)"), "{text}");
        let chart = chart("ebb: default/demo", &decisions, &[]);
        assert_eq!(chart.points.len(), 2);
        assert_eq!((chart.points[1].t, chart.points[1].ready, chart.points[1].desired), (2.0, 1, None));
        assert!(chart.points[0].panic);
    }
}
