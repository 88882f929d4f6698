//! The dashboards and alert rules against a real Prometheus (Debian's `prometheus` package, run as this test's
//! own instance on a free port): `ebb up` serves two services under load, Prometheus scrapes it and, through
//! its `/service-discovery` endpoint, every pod's queue-proxy; then every PromQL expression of every dashboard
//! panel and alert rule, with Grafana's variables substituted, must return data. Panels that only a cluster
//! can fill (the Kubernetes controller's own families) are named in [`CLUSTER_ONLY`].

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::supervisor::Supervisor;
use support::up::{Load, Up, request, start};
use support::wait::wait_for;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Families only the Kubernetes controller exports (docs/metrics.md, "a cluster only"): expressions on them
/// have no data in `ebb up`.
const CLUSTER_ONLY: [&str; 8] = [
    "ebb_autoscaler_scale_patch_seconds",
    "ebb_autoscaler_leader",
    "ebb_autoscaler_api_reachable",
    "ebb_autoscaler_config_errors_total",
    "ebb_autoscaler_external_replica_changes_total",
    "ebb_autoscaler_scale_downs_held_total",
    "ebb_autoscaler_blocked_pods",
    "ebb_autoscaler_scale_changes_total",
];

/// A program from Debian's `prometheus` package: `$EBB_<NAME>` or on `PATH`.
fn tool(name: &str) -> PathBuf {
    let variable = format!("EBB_{}", name.to_uppercase());
    if let Some(path) = std::env::var_os(&variable) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} not found: install Debian's prometheus package (apt-get install --no-install-recommends \
             prometheus; .ci/run does) or set {variable} to the binary"
        )
    })
}

fn read(path: &str) -> String {
    let path = Path::new(ROOT).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every expression of every dashboard panel: (dashboard, panel title, expression).
fn dashboard_expressions() -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for name in ["service-overview", "cold-start", "data-plane", "control-plane"] {
        let dashboard: Value =
            serde_json::from_str(&read(&format!("manifests/dashboards/{name}.json"))).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().expect("every target has an expression");
                found.push((name.to_owned(), panel["title"].as_str().unwrap().to_owned(), expr.to_owned()));
            }
        }
    }
    found
}

/// Every alert rule: (name, expression).
fn alert_rules() -> Vec<(String, String)> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("manifests/monitoring/alerts.rules.yml")).unwrap();
    let mut found = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_owned();
            found.push((name, rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    found
}

/// The signal of an alert expression written `(signal) OP threshold`.
fn signal(expr: &str) -> &str {
    let open = expr.find('(').filter(|&i| i == 0).unwrap_or_else(|| panic!("{expr} does not start with '('"));
    let mut depth = 0;
    for (i, c) in expr.char_indices().skip(open) {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        if depth == 0 {
            let rest = expr[i + 1..].trim();
            assert!(
                ["> ", "< ", "== ", ">= ", "<= ", "!= "].iter().any(|op| rest.starts_with(op)),
                "{expr} is not (signal) OP threshold"
            );
            return &expr[1..i];
        }
    }
    panic!("unbalanced parentheses in {expr}")
}

/// Grafana's variables as a user picking every namespace and service would set them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$service", ".*")
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A running Prometheus of this test's own.
struct Prometheus {
    addr: std::net::SocketAddr,
    child: std::process::Child,
    supervisor: Supervisor,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.supervisor.shutdown(std::slice::from_mut(&mut self.child));
    }
}

impl Prometheus {
    /// Scrapes `ebb up` every second, and every pod it lists for service discovery.
    async fn start(up: &Up) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("ebb-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rules = Path::new(ROOT).join("manifests/monitoring/alerts.rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{rules:?}]\nscrape_configs:\n  \
             - job_name: ebb-up\n    static_configs: [{{targets: ['{metrics}']}}]\n  - job_name: ebb-pods\n    \
             http_sd_configs: [{{url: 'http://{metrics}/service-discovery', refresh_interval: 1s}}]\n",
            metrics = up.metrics,
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // A free port: Prometheus cannot bind :0 and say which it took.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let supervisor = Supervisor::start(Some(&dir)).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut command = std::process::Command::new(tool("prometheus"));
        command
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = supervisor.spawn(&mut command).expect("prometheus starts");
        let prometheus = Prometheus { addr, child, supervisor };
        let log = dir.join("prometheus.log");
        wait_for(Duration::from_secs(60), "Prometheus to be ready", async || {
            match request(addr, "GET", "/-/ready", "", "prometheus").await {
                Ok((200, _)) => Ok(()),
                other => {
                    Err(format!("{other:?}; log: {}", std::fs::read_to_string(&log).unwrap_or_default()))
                }
            }
        })
        .await;
        prometheus
    }

    /// The instant query's result vector (an error names the expression and Prometheus' answer).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = request(self.addr, "GET", &path, "", "prometheus").await?;
        let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || answer["status"] != "success" {
            return Err(format!("{expr}: {status} {body}"));
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Whether the expression returns at least one sample that is a number (not NaN).
    async fn has_data(&self, expr: &str) -> Result<(), String> {
        let result = self.query(expr).await?;
        let numbers = result.iter().filter(|sample| {
            sample["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| !v.is_nan())
        });
        match numbers.count() {
            0 => Err(format!("no data: {} series, all NaN or none: {result:?}", result.len())),
            _ => Ok(()),
        }
    }
}

fn cluster_only(expr: &str) -> bool {
    CLUSTER_ONLY.iter().any(|family| expr.contains(family))
}

#[test]
fn the_alert_rules_pass_promtool_and_the_prometheus_rule_carries_the_same_groups() {
    let rules = Path::new(ROOT).join("manifests/monitoring/alerts.rules.yml");
    let output = std::process::Command::new(tool("promtool")).arg("check").arg("rules").arg(&rules).output();
    let output = output.expect("promtool runs");
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "promtool check rules failed:\n{text}");

    let plain: serde_yaml::Value =
        serde_yaml::from_str(&read("manifests/monitoring/alerts.rules.yml")).unwrap();
    let operator: serde_yaml::Value =
        serde_yaml::from_str(&read("manifests/monitoring/prometheusrule.yaml")).unwrap();
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(
        plain["groups"], operator["spec"]["groups"],
        "prometheusrule.yaml and alerts.rules.yml differ"
    );
    for (name, expr) in alert_rules() {
        assert!(!signal(&expr).is_empty(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_panel_and_alert_rule_returns_data_from_ebb_up() {
    // `demo` takes load through a cold start; `stuck` never gets a ready pod and has room for two waiting
    // requests, so that the queue alerts have something to say.
    let ebb = support::up::EBB;
    let yaml = format!(
        "config:\n  scale-to-zero-grace-period: 30s\nservices:\n  - name: demo\n    command: [{ebb}, demo-model, \
         --startup-delay, 200ms, --time-to-first-token, 10ms, --tokens-per-second, '200']\n    annotations:\n      \
         autoscaling.knative.dev/window: 6s\n      ebb.dev/container-concurrency: '4'\n  - name: stuck\n    \
         command: [sleep, '600']\n    annotations:\n      ebb.dev/max-queued: '2'\n"
    );
    let up = Arc::new(start(&format!("prometheus-{}", std::process::id()), &yaml));
    let prometheus = Prometheus::start(&up).await;
    // Prometheus must see the series at zero before the load: an increase before its first sample is not
    // one it can see.
    wait_for(Duration::from_secs(60), "two scrapes of ebb up at zero", async || {
        let scrapes = prometheus.query("count_over_time(ebb_activator_queued{service=\"demo\"}[1m])").await?;
        match scrapes.first().and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok()) {
            Some(n) if n >= 2.0 => Ok(()),
            other => Err(format!("{other:?} scrapes")),
        }
    })
    .await;

    let stuck: Vec<_> = (0..4)
        .map(|_| {
            let up = up.clone();
            tokio::spawn(async move { request(up.gateway, "GET", "/", "", "stuck").await })
        })
        .collect();
    let load = Load::start(&up, "demo", 8);
    // Let the load run through the cold start and a few scrapes of the warm pods.
    wait_for(Duration::from_secs(60), "load on warm demo pods in Prometheus", async || {
        let expr = "sum(rate(ebb_queue_proxy_requests_total{service=\"demo\",status_class=\"2xx\"}[1m]))";
        prometheus.has_data(expr).await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let mut failures = Vec::new();
    let mut evaluated = 0;
    for (dashboard, panel, expr) in dashboard_expressions() {
        if cluster_only(&expr) {
            continue;
        }
        evaluated += 1;
        if let Err(e) = prometheus.has_data(&substitute(&expr)).await {
            failures.push(format!("{dashboard} / {panel}: {expr}: {e}"));
        }
    }
    for (name, expr) in alert_rules() {
        let signal = signal(&expr);
        if cluster_only(signal) {
            continue;
        }
        evaluated += 1;
        if let Err(e) = prometheus.has_data(signal).await {
            failures.push(format!("alert {name}: {signal}: {e}"));
        }
    }
    // The queue alerts' conditions hold for `stuck` (their `for:` aside).
    for name in ["EbbServiceStuckActivating", "EbbActivatorQueueFull"] {
        let (_, expr) = alert_rules().into_iter().find(|(n, _)| n == name).unwrap();
        let firing = prometheus.query(&expr).await.unwrap();
        if !firing.iter().any(|s| s["metric"]["service"] == "stuck") {
            failures.push(format!("alert {name} does not hold for the stuck service: {firing:?}"));
        }
    }
    let (ok, load_failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {evaluated} expressions failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(load_failures.is_empty(), "the demo load failed: {load_failures:?}");
    assert!(ok > 0);
    for answer in stuck {
        if let Ok(Ok(Ok((status, _)))) = tokio::time::timeout(Duration::from_millis(10), answer).await {
            assert_eq!(status, 503, "only queue-full refusals answer while the stuck service waits");
        }
    }
    println!(
        "{evaluated} expressions returned data; skipped (cluster only): {}",
        dashboard_expressions().iter().filter(|(_, _, e)| cluster_only(e)).count()
            + alert_rules().iter().filter(|(_, e)| cluster_only(e)).count()
    );
}
