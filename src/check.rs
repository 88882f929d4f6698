//! `ebb check FILE...`: validates autoscaled Deployments and `config-autoscaler` ConfigMaps in Kubernetes YAML,
//! printing every problem as `FILE: Deployment NAMESPACE/NAME: KEY: "VALUE": what is accepted`.
//!
//! Exit codes: 0 when no error was found (warnings alone are fine), 1 when any error was, 2 when an input
//! could not be read or is not YAML.

use std::fmt;
use std::process::ExitCode;

use ebb_config::groups::{LABEL_GROUP, MemberMeta, lone_problems, resolve_groups};
use ebb_config::names::{CONFIG_MAP_NAME, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY_EBB};
use ebb_config::placement::template_only_keys;
use ebb_config::targets::{ANNOTATION_INSTANCE_PODS, SizeField, format_kinds};
use ebb_config::{Diagnosed, GlobalConfig, Invalid, resolve_service};

use crate::manifest::{Object, Source, parse_objects, read_source};

/// Arguments of `ebb check`.
#[derive(clap::Args)]
pub struct Args {
    /// YAML files to check (several documents each, `kind: List` too); `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,
    /// Also print the effective configuration of every valid service and ConfigMap.
    #[arg(long, short)]
    verbose: bool,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The object would be refused by the autoscaler.
    Error,
    /// Legal, but probably not what was meant.
    Warning,
}

/// One thing `ebb check` says about one object.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The input it came from.
    pub source: String,
    /// `Kind NAMESPACE/NAME`; empty when the finding is about the whole input.
    pub object: String,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = if self.severity == Severity::Warning { "warning: " } else { "" };
        // A finding about a whole input names no object.
        let object = if self.object.is_empty() { String::new() } else { format!("{}: ", self.object) };
        write!(f, "{}: {object}{label}{}", self.source, self.message)
    }
}

/// Objects read from one source.
pub struct Input {
    /// Where they came from.
    pub source: Source,
    /// The objects, in order.
    pub objects: Vec<Object>,
}

/// What checking found: the findings, and the effective configurations for `--verbose`.
#[derive(Default)]
pub struct Report {
    /// Every error and warning, in input order.
    pub findings: Vec<Finding>,
    /// The effective configuration of every valid service and ConfigMap.
    pub effective: Vec<Effective>,
}

/// The effective configuration of one valid object, for `--verbose`.
pub struct Effective {
    /// The input it came from.
    pub source: String,
    /// `Kind NAMESPACE/NAME`.
    pub object: String,
    /// Every key with its effective value.
    pub values: Vec<(&'static str, String)>,
    /// For a service, the inputs only `config-autoscaler` sets (keys in the ConfigMap's spelling).
    pub config_map: Vec<(&'static str, String)>,
}

impl Report {
    fn push(&mut self, source: &Source, object: &Object, severity: Severity, message: String) {
        let (source, object) = (source.to_string(), object.describe());
        self.findings.push(Finding { source, object, severity, message });
    }

    fn push_diagnostics(
        &mut self,
        source: &Source,
        object: &Object,
        invalid: Option<&Invalid>,
        warnings: &[ebb_config::Warning],
    ) {
        for error in invalid.map(|i| i.errors.as_slice()).unwrap_or_default() {
            self.push(source, object, Severity::Error, error.to_string());
        }
        for warning in warnings {
            self.push(source, object, Severity::Warning, warning.to_string());
        }
    }
}

/// Checks every object of every input. The first valid `config-autoscaler` ConfigMap in the inputs is the
/// global configuration the Deployments are checked against; without one, Knative's defaults are.
pub fn check(inputs: &[Input]) -> Report {
    let mut report = Report::default();
    let mut global = None;
    for input in inputs {
        // A file that is valid YAML but holds no object (a scalar, a wrong file) would otherwise pass silently.
        if input.objects.is_empty() {
            report.findings.push(Finding {
                source: input.source.to_string(),
                object: String::new(),
                severity: Severity::Warning,
                message:
                    "no Kubernetes objects found (no YAML document has a `kind`), so nothing was checked; \
                          is this the right file?"
                        .into(),
            });
        }
        for object in input.objects.iter().filter(|o| o.kind == "ConfigMap" && o.name == CONFIG_MAP_NAME) {
            match GlobalConfig::from_data(&object.data) {
                Ok(Diagnosed { value, warnings }) => {
                    report.push_diagnostics(&input.source, object, None, &warnings);
                    let values = value.effective_values();
                    let (source, object) = (input.source.to_string(), object.describe());
                    report.effective.push(Effective { source, object, values, config_map: Vec::new() });
                    global.get_or_insert(value);
                }
                Err(invalid) => {
                    report.push_diagnostics(&input.source, object, Some(&invalid), &invalid.warnings)
                }
            }
        }
    }
    let global = global.unwrap_or_default();
    let services: Vec<(&Source, &Object)> = inputs
        .iter()
        .flat_map(|input| input.objects.iter().map(move |object| (&input.source, object)))
        .filter(|(_, object)| object.labels.contains_key(LABEL_SERVICE))
        .collect();
    for &(source, object) in &services {
        check_service(&mut report, source, object, &global);
    }
    check_groups(&mut report, inputs);
    for input in inputs {
        for service in input.objects.iter().filter(|o| o.kind == "Service") {
            let shadows = services.iter().any(|(_, d)| {
                d.target_kind().is_some() && d.name == service.name && d.namespace == service.namespace
            });
            if shadows && service.labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_EBB) {
                let message = format!(
                    "has the name of the ebb service {}/{}: the autoscaler creates and owns that Service and leaves one it \
                     did not create alone, so traffic would bypass ebb; remove or rename this Service",
                    service.namespace, service.name
                );
                report.push(&input.source, service, Severity::Warning, message);
            }
        }
    }
    report
}

/// Role groups (`ebb.dev/group`): their keys on each object, then each group of Deployments as a whole;
/// a bad group is an error on every member, since the autoscaler scales none of them.
fn check_groups(report: &mut Report, inputs: &[Input]) {
    let objects =
        || inputs.iter().flat_map(|input| input.objects.iter().map(move |object| (&input.source, object)));
    let mut members = Vec::new();
    for (source, object) in objects() {
        let meta = MemberMeta {
            namespace: &object.namespace,
            name: &object.name,
            labels: &object.labels,
            annotations: &object.annotations,
        };
        for problem in lone_problems(&meta) {
            report.push(source, object, Severity::Error, problem);
        }
        if !object.labels.contains_key(LABEL_GROUP) {
            continue;
        }
        if object.kind == "Deployment" {
            members.push(meta);
        } else {
            let message = format!(
                "is labelled {LABEL_GROUP} but role groups are of Deployments only: the label has no effect"
            );
            report.push(source, object, Severity::Warning, message);
        }
    }
    let (_good, bad) = resolve_groups(members);
    for group in bad {
        let message = group.message();
        for (source, object) in objects().filter(|(_, o)| {
            o.kind == "Deployment" && o.namespace == group.namespace && group.members.contains(&o.name)
        }) {
            report.push(source, object, Severity::Error, message.clone());
        }
    }
}

fn check_service(report: &mut Report, source: &Source, object: &Object, global: &GlobalConfig) {
    let listed = object.target_kind().filter(|k| global.scale_target_kinds.contains(k));
    if listed.is_none() {
        let kinds = format_kinds(&global.scale_target_kinds);
        let message = match object.target_kind() {
            Some(kind) => format!(
                "is labelled {LABEL_SERVICE} but {kind} is not in scale-target-kinds ({kinds}): add it in \
                 config-autoscaler and give the autoscaler its RBAC (manifests/scale-targets/); until then the \
                 label has no effect"
            ),
            None => format!(
                "is labelled {LABEL_SERVICE} but a {} is not a scale target (scale-target-kinds: {kinds}); the \
                 label has no effect",
                object.kind
            ),
        };
        return report.push(source, object, Severity::Warning, message);
    }
    for key in &object.non_string_annotations {
        let value = &object.annotations[key];
        let message = format!("{key}: {value}: annotation values must be strings; quote it: \"{value}\"");
        report.push(source, object, Severity::Error, message);
    }
    let label = &object.labels[LABEL_SERVICE];
    if *label != object.name {
        let message = format!(
            "label {LABEL_SERVICE} is {label:?} but must equal the {}'s name {:?}",
            object.kind, object.name
        );
        report.push(source, object, Severity::Warning, message);
    }
    // A custom kind's pod template is where only its controller knows; the pods are checked in the cluster.
    if object.has_template && object.template_labels.get(LABEL_SERVICE) != Some(&object.name) {
        let message = format!(
            "the pod template lacks the label {LABEL_SERVICE}: {}; the activator and autoscaler find pods by it",
            object.name
        );
        report.push(source, object, Severity::Warning, message);
    }
    for (_key, message) in template_only_keys(&object.annotations, &object.template_annotations) {
        report.push(source, object, Severity::Warning, message);
    }
    check_instances(report, source, object, global);
    match resolve_service(&object.annotations, global) {
        Ok(Diagnosed { value, warnings }) => {
            report.push_diagnostics(source, object, None, &warnings);
            report.effective.push(Effective {
                source: source.to_string(),
                object: object.describe(),
                values: value.effective_values(),
                config_map: value.config_map_values(),
            });
        }
        Err(invalid) => report.push_diagnostics(source, object, Some(&invalid), &invalid.warnings),
    }
}

/// A kind whose replica is several pods needs its pods per instance from the object (the shape's `size=`,
/// which its own controller validates) or from `ebb.dev/instance-pods`; that annotation elsewhere has no effect.
fn check_instances(report: &mut Report, source: &Source, object: &Object, global: &GlobalConfig) {
    let shape = object.target_kind().and_then(|k| global.instance_shape(&k));
    let annotation = object.annotations.get(ANNOTATION_INSTANCE_PODS);
    match shape {
        Some(shape) if shape.size_path.is_none() => {
            let unused = |_: &[String]| SizeField::Absent;
            if let Err(why) = shape.pods_per_instance(unused, &object.annotations) {
                let message = format!(
                    "{why}: ebb cannot tell when an instance has all its pods (scale-target-instances says \
                     where its kind keeps them, else this annotation must)"
                );
                report.push(source, object, Severity::Error, message);
            }
        }
        Some(_) if annotation.is_some() => {
            let message = format!(
                "{ANNOTATION_INSTANCE_PODS} is set but its kind says its pods per instance in the object: the \
                 annotation has no effect"
            );
            report.push(source, object, Severity::Warning, message);
        }
        Some(_) => {}
        None if annotation.is_some() => {
            let message = format!(
                "{ANNOTATION_INSTANCE_PODS} is set but a replica of {} is one pod (no scale-target-instances \
                 entry for its kind): the annotation has no effect",
                object.kind
            );
            report.push(source, object, Severity::Warning, message);
        }
        None => {}
    }
}

/// Runs `ebb check`.
pub fn run(args: Args) -> ExitCode {
    let mut inputs = Vec::new();
    let mut unreadable = false;
    for file in args.files {
        let source = Source(file);
        match read_source(&source).and_then(|text| parse_objects(&text)) {
            Ok(objects) => inputs.push(Input { source, objects }),
            Err(err) => {
                eprintln!("{source}: {err}");
                unreadable = true;
            }
        }
    }
    let report = check(&inputs);
    for finding in &report.findings {
        println!("{finding}");
    }
    if args.verbose {
        for Effective { source, object, values, config_map } in &report.effective {
            println!("{source}: {object}: effective configuration:");
            for (key, value) in values {
                println!("  {key}: {value:?}");
            }
            // No annotation sets these; name where they come from so a user knows where to change them.
            for (key, value) in config_map {
                println!("  {key}: {value:?} (from {CONFIG_MAP_NAME})");
            }
        }
    }
    let errors = report.findings.iter().filter(|f| f.severity == Severity::Error).count();
    let warnings = report.findings.len() - errors;
    let services = report.effective.len();
    eprintln!("ebb check: {errors} error(s), {warnings} warning(s); {services} valid object(s)");
    if unreadable {
        ExitCode::from(ebb_process::exit::USAGE)
    } else if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
