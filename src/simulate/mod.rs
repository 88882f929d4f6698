//! `ebb simulate`: replays a trace through the KPA decider and the scale policy, and writes what they would
//! have done (CSV, an optional SVG plot, and a summary on stderr), so users can tune the annotations on their
//! own traffic.

mod model;
mod output;
mod trace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use ebb_config::{GlobalConfig, Metric, ScalerClass, ServiceConfig, resolve_service};

use self::trace::Trace;

/// Arguments of `ebb simulate`.
#[derive(clap::Args)]
#[command(
    after_help = "Trace forms (CSV with a header, as spreadsheets save it: a byte-order mark, quoted cells, CRLF
and unused trailing columns are fine; blank lines and # comments are skipped):
  t,concurrency | t,rps     service-total load from t (whole seconds) until the next row; pods are modelled;
                            the header sets autoscaling.knative.dev/metric unless --annotation gives it
  t,ready,stable,panic      decider inputs, one tick per row (empty stable and panic: no data)

Output CSV, one row per decider tick: t,ready,stable,panic,desired,replicas,ebc,panic_mode,mode,reason
A summary goes to stderr: pod-seconds, peak pods, seconds under capacity, scale-from-zero events, time to zero.

Examples:
  ebb simulate --trace docs/examples/spike.csv --annotation ebb.dev/container-concurrency=10 --plot spike.svg
  ebb simulate --trace traffic.csv --config-map manifests/config-autoscaler.yaml --out decisions.csv

Exit codes:
  0  simulated
  1  an output file could not be written
  2  a bad trace (naming the line), annotation, ConfigMap or command line"
)]
pub struct Args {
    /// The trace CSV.
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// A Deployment annotation, with the key in full (`autoscaling.knative.dev/window=10s`); repeatable.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// A `config-autoscaler` ConfigMap (YAML) to use instead of the defaults.
    #[arg(long, value_name = "FILE")]
    config_map: Option<PathBuf>,
    /// Write the CSV here instead of stdout.
    #[arg(long, value_name = "FILE.csv")]
    out: Option<PathBuf>,
    /// Also draw load, desired and ready pods and panic periods as an SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Load traces: time from scale-up to a ready pod (`2s`, `500ms`, `1m30s`).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_startup)]
    pod_startup: Duration,
}

/// Why a run failed: bad input (exit 2) or an output that could not be written (exit 1).
enum Failure {
    Input(String),
    Output(String),
}

/// Runs `ebb simulate`.
pub fn run(args: Args) -> ExitCode {
    match simulate(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(message)) => {
            eprintln!("ebb simulate: {message}");
            ExitCode::from(ebb_process::exit::USAGE)
        }
        Err(Failure::Output(message)) => {
            eprintln!("ebb simulate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(args: &Args) -> Result<(), Failure> {
    let text = std::fs::read_to_string(&args.trace)
        .map_err(|e| Failure::Input(format!("cannot read {}: {e}", args.trace.display())))?;
    let trace = trace::parse(&text).map_err(|e| Failure::Input(format!("{}: {e}", args.trace.display())))?;
    let trace_metric = match &trace {
        Trace::Load { metric, .. } => Some(*metric),
        Trace::Decider { .. } => None,
    };
    let config = load_config(args, trace_metric)?;
    let (run, unit) = match &trace {
        Trace::Load { metric, rows } => {
            (model::simulate_load(&config, rows, args.pod_startup), metric_name(*metric))
        }
        Trace::Decider { rows } => {
            (model::simulate_decider(&config, rows), metric_name(config.scaling.metric))
        }
    };
    let run = run.map_err(Failure::Input)?;
    let csv = output::csv(&run.rows);
    match &args.out {
        Some(path) => write(path, &csv)?,
        None => print!("{csv}"),
    }
    if let Some(path) = &args.plot {
        let title = args.trace.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        write(path, &crate::plot::svg(&plot_chart(&title, &run, unit)))?;
    }
    eprint!("{}", output::summary(&run.summary, run.rows.len()));
    Ok(())
}

/// The plot of a simulated run.
fn plot_chart(title: &str, run: &model::Run, unit: &str) -> crate::plot::Chart {
    let points = run
        .rows
        .iter()
        .map(|r| crate::plot::Point {
            t: r.t,
            ready: r.ready,
            replicas: r.replicas,
            desired: r.desired,
            panic: r.panic,
        })
        .collect();
    crate::plot::Chart {
        heading: format!("ebb simulate: {title}"),
        points,
        load: run.load.clone(),
        load_unit: unit.to_owned(),
        phases: Vec::new(),
    }
}

fn write(path: &Path, contents: &str) -> Result<(), Failure> {
    std::fs::write(path, contents)
        .map_err(|e| Failure::Output(format!("cannot write {}: {e}", path.display())))
}

const METRIC_KEY: &str = ebb_config::keys::annotation::METRIC;

fn metric_name(metric: Metric) -> &'static str {
    match metric {
        Metric::Concurrency => "concurrency",
        Metric::Rps => "rps",
    }
}

/// The service configuration: the ConfigMap (or the defaults) with the annotations over it. Warnings go to
/// stderr; any invalid key is an input error listing every problem. A load trace's header names its metric,
/// which stands in for an absent `autoscaling.knative.dev/metric` and must agree with a present one.
fn load_config(args: &Args, trace_metric: Option<Metric>) -> Result<ServiceConfig, Failure> {
    let global = match &args.config_map {
        None => GlobalConfig::default(),
        Some(path) => {
            let data = read_config_map(path)?;
            let diagnosed = GlobalConfig::from_data(&data).map_err(|e| {
                Failure::Input(format!("{}: invalid config-autoscaler:\n{e}", path.display()))
            })?;
            for warning in &diagnosed.warnings {
                eprintln!("ebb simulate: warning: {}: {warning}", path.display());
            }
            diagnosed.value
        }
    };
    let mut annotations = BTreeMap::new();
    for pair in &args.annotations {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Failure::Input(format!("--annotation {pair:?}: expected KEY=VALUE")));
        };
        if annotations.insert(key.trim().to_owned(), value.trim().to_owned()).is_some() {
            return Err(Failure::Input(format!("--annotation {key}: given more than once")));
        }
    }
    if let Some(metric) = trace_metric {
        // Set before resolving: the metric picks the target's default and utilisation.
        match annotations.get(METRIC_KEY) {
            None => {
                annotations.insert(METRIC_KEY.to_owned(), metric_name(metric).to_owned());
            }
            // An invalid value is left to resolve_service, which lists it with every other problem.
            Some(given)
                if given != metric_name(metric) && matches!(given.as_str(), "concurrency" | "rps") =>
            {
                return Err(Failure::Input(format!(
                    "{}: the trace's header gives {} but --annotation {METRIC_KEY}={given} says the service \
                     scales on {given}; drop the annotation to take the metric from the trace, or give a \
                     trace of {given}",
                    args.trace.display(),
                    metric_name(metric),
                )));
            }
            Some(_) => {}
        }
    }
    let diagnosed = resolve_service(&annotations, &global)
        .map_err(|e| Failure::Input(format!("invalid annotations:\n{e}")))?;
    for warning in &diagnosed.warnings {
        eprintln!("ebb simulate: warning: {warning}");
    }
    let config = diagnosed.value;
    if config.scaling.class == ScalerClass::Hpa {
        eprintln!(
            "ebb simulate: warning: class hpa: ebb would not scale this service; simulating the KPA anyway"
        );
    }
    Ok(config)
}

/// The `data` of a ConfigMap YAML file. Unquoted numbers and booleans are taken as their text.
fn read_config_map(path: &Path) -> Result<BTreeMap<String, String>, Failure> {
    #[derive(serde::Deserialize)]
    struct ConfigMap {
        #[serde(default)]
        data: BTreeMap<String, serde_json::Value>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Input(format!("cannot read {}: {e}", path.display())))?;
    let map: ConfigMap = crate::yaml::from_str(&text)
        .map_err(|e| Failure::Input(format!("{}: not a ConfigMap: {e}", path.display())))?;
    map.data
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            serde_json::Value::Number(n) => Ok((key, n.to_string())),
            serde_json::Value::Bool(b) => Ok((key, b.to_string())),
            _ => Err(Failure::Input(format!("{}: data.{key}: expected a string", path.display()))),
        })
        .collect()
}

fn parse_startup(text: &str) -> Result<Duration, String> {
    ebb_config::value::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration (e.g. 2s, 500ms)"))
}
