//! `docs/metrics.md` and the metrics the components export agree: every exported family is documented with
//! its type and labels, and every documented one is exported. Each component's registry is built as its
//! binary builds it, with one service known, so that every per-service family has series to show its labels.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ebb_activator::metrics::Metrics as ActivatorMetrics;
use ebb_autoscaler::cluster::metrics::KubeMetrics;
use ebb_autoscaler::engine::{Autoscaler, Options, Scaler};
use ebb_config::{GlobalConfig, Mode, ServiceId, resolve_service};
use ebb_queue_proxy::metrics::Metrics as QueueProxyMetrics;

/// A family as a user queries it: type and label names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
}

type Catalogue = BTreeMap<String, Family>;

/// Every family in a Prometheus text page, named as queried: counters with `_total`, histograms by their base
/// name. Labels are collected from the series (a histogram's `le` excluded).
fn exported(text: &str) -> Catalogue {
    let mut families = Catalogue::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("a TYPE line names a type");
            let queried = if kind == "counter" { format!("{name}_total") } else { name.to_owned() };
            types.insert(name.to_owned(), queried.clone());
            families.insert(queried, Family { kind: kind.to_owned(), labels: BTreeSet::new() });
        } else if !line.starts_with('#') && !line.is_empty() {
            let series = line.split(['{', ' ']).next().unwrap();
            let family = types
                .iter()
                .filter(|(name, _)| series.starts_with(name.as_str()))
                .max_by_key(|(name, _)| name.len())
                .map(|(_, queried)| queried.clone())
                .unwrap_or_else(|| panic!("series {series} has no TYPE line"));
            let labels = line.split_once('{').map(|(_, rest)| rest.split_once('}').unwrap().0).unwrap_or("");
            let names = labels.split(',').filter_map(|pair| pair.split_once('=')).map(|(k, _)| k.to_owned());
            families.get_mut(&family).unwrap().labels.extend(names.filter(|k| k != "le"));
        }
    }
    families
}

/// The families `docs/metrics.md` lists: rows `| `name` | type | `label`, ... | meaning |`.
fn documented(doc: &str) -> Catalogue {
    let mut families = Catalogue::new();
    for line in doc.lines().filter(|l| l.starts_with("| `ebb_")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells.len() >= 4, "a catalogue row has name, type, labels and meaning: {line}");
        let name = cells[0].trim_matches('`').to_owned();
        let labels = cells[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`'))
            .filter(|l| !l.is_empty() && *l != "-")
            .map(str::to_owned)
            .collect();
        let previous = families.insert(name.clone(), Family { kind: cells[1].to_owned(), labels });
        assert!(previous.is_none(), "{name} is documented twice");
    }
    families
}

/// A scaler that applies nothing: the engine's page needs a decision, not its effect.
struct Unapplied;

impl Scaler for Unapplied {
    fn set_replicas(&self, _service: &ServiceId, _replicas: u32) {}
    fn set_mode(&self, _service: &ServiceId, _mode: Mode) {}
    fn activator_in_path(&self, _service: &ServiceId) -> bool {
        true
    }
}

/// The engine's page with one service known and decided once (a decision counter's series appears with the
/// service's first decision of its kind).
fn engine_page() -> String {
    let engine = Autoscaler::new(Arc::new(Unapplied), Options::default());
    let config = resolve_service(&BTreeMap::new(), &GlobalConfig::default()).expect("the defaults").value;
    engine.set_service(ServiceId::new("demo", "chat"), config, 1).expect("a valid service");
    engine.tick();
    engine.encode_metrics()
}

fn export_everything() -> Catalogue {
    let queue_proxy = QueueProxyMetrics::new().encode(0, 0, true);

    let activator = ActivatorMetrics::new();
    let _ = activator.service(&ServiceId::new("demo", "chat"));
    let activator = activator.encode(&[], 0);

    let kube = KubeMetrics::new();
    kube.add_service(&ServiceId::new("demo", "chat"));
    // The autoscaler serves the controller's families, then the runtime's page.
    let autoscaler = kube.page(|out| out.push_str(&engine_page()));

    let mut all = Catalogue::new();
    for page in [queue_proxy, activator, autoscaler] {
        for (name, family) in exported(&page) {
            assert!(all.insert(name.clone(), family).is_none(), "{name} is exported by two components");
        }
    }
    all
}

#[test]
fn the_metrics_document_and_the_exported_metrics_agree() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let documented = documented(&doc);
    let exported = export_everything();

    let missing: Vec<_> = exported.keys().filter(|n| !documented.contains_key(*n)).collect();
    let stale: Vec<_> = documented.keys().filter(|n| !exported.contains_key(*n)).collect();
    assert!(missing.is_empty(), "exported but not in docs/metrics.md: {missing:?}");
    assert!(stale.is_empty(), "in docs/metrics.md but not exported: {stale:?}");
    for (name, family) in &exported {
        assert_eq!(&documented[name], family, "docs/metrics.md disagrees with what {name} exports");
    }
}

#[test]
fn every_family_is_named_with_its_unit_and_bounded_labels() {
    let allowed: BTreeSet<&str> =
        ["namespace", "service", "status_class", "kind", "origin", "reason", "source", "result"].into();
    for (name, family) in export_everything() {
        assert!(name.starts_with("ebb_"), "{name} lacks the ebb_ prefix");
        if family.kind == "histogram" {
            assert!(name.ends_with("_seconds"), "histogram {name} names no unit");
        }
        for label in &family.labels {
            assert!(allowed.contains(label.as_str()), "{name} has an unbounded or unknown label {label}");
        }
    }
}

/// Every component's page as it serves it: the queue-proxy's, the activator's, the autoscaler's in a cluster
/// (the controller's families, then the runtime's) and `ebb up`'s (the runtime's and the activator's in one
/// document), each with one service known.
fn pages() -> Vec<(&'static str, String)> {
    let queue_proxy = QueueProxyMetrics::new().encode(0, 0, true);
    let activator = ActivatorMetrics::new();
    let _ = activator.service(&ServiceId::new("demo", "chat"));
    let activator = activator.encode(&[], 3);
    let engine = engine_page();
    let kube = KubeMetrics::new();
    kube.add_service(&ServiceId::new("demo", "chat"));
    let autoscaler = kube.page(|out| out.push_str(&engine));
    // As `ebb up`'s metrics port joins them: one document, one `# EOF`.
    let mut up = String::new();
    for part in [engine, activator.clone()] {
        up.push_str(part.trim_end().trim_end_matches("# EOF"));
    }
    up.push_str("# EOF\n");
    vec![("queue-proxy", queue_proxy), ("activator", activator), ("autoscaler", autoscaler), ("ebb up", up)]
}

/// `promtool check metrics` (Debian's `prometheus` package) reads each page as a client that does not ask for
/// OpenMetrics gets it (`curl -s :9091/metrics | promtool check metrics`) and finds nothing to lint: counters
/// end in `_total`, units are in the names, every family has help.
#[test]
fn every_components_page_passes_promtool_check_metrics() {
    let Some(tools) = ebb_test_support::require::prometheus() else { return };
    for (component, openmetrics) in pages() {
        let page = ebb_process::exposition::prometheus_text(&openmetrics);
        let mut child = std::process::Command::new(&tools.promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool runs");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), page.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let said =
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && said.trim().is_empty(),
            "{component}: promtool check metrics:\n{said}"
        );
    }
}
