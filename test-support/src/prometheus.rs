//! A real Prometheus for the tests (Debian's `prometheus` package, run as the test's own instance on a free
//! port, never the packaged service), and the PromQL expressions of `manifests/`: every dashboard panel's and
//! every alert rule's, with Grafana's variables substituted. Tests reach Prometheus through
//! [`crate::require::prometheus`].

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::part::Missing;
use super::paths::in_repo;
use super::supervisor::Supervisor;
use super::up::request;
use super::wait::wait_for;

/// Families only the Kubernetes controller exports (docs/metrics.md, "a cluster only"): expressions on them
/// have no data in `ebb up`.
pub const CLUSTER_ONLY: [&str; 8] = [
    "ebb_autoscaler_scale_patch_seconds",
    "ebb_autoscaler_leader",
    "ebb_autoscaler_api_reachable",
    "ebb_autoscaler_config_errors_total",
    "ebb_autoscaler_external_replica_changes_total",
    "ebb_autoscaler_scale_downs_held_total",
    "ebb_autoscaler_blocked_pods",
    "ebb_autoscaler_scale_changes_total",
];

/// Debian's `prometheus` package's two programs.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The server.
    pub prometheus: PathBuf,
    /// Its rule and configuration checker.
    pub promtool: PathBuf,
}

/// Finds [`Tools`]: each at `$EBB_PROMETHEUS` / `$EBB_PROMTOOL` (set to a path that is not a file is
/// [`Missing::Broken`]), else on `PATH` ([`Missing::Absent`] when not there).
pub fn find_tools() -> Result<Tools, Missing> {
    Ok(Tools { prometheus: find_tool("prometheus")?, promtool: find_tool("promtool")? })
}

fn find_tool(name: &str) -> Result<PathBuf, Missing> {
    let variable = format!("EBB_{}", name.to_uppercase());
    if let Some(path) = std::env::var_os(&variable) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(Missing::Broken(format!(
            "{variable}={} is not a file: it must name the {name} binary, or be unset to find {name} on PATH",
            path.display()
        )));
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    found.ok_or_else(|| {
        Missing::Absent(format!(
            "{name} is not on PATH. To run these tests, install Debian's prometheus package (apt-get install \
             --no-install-recommends prometheus; .ci/run does), or set EBB_PROMETHEUS and EBB_PROMTOOL to its \
             prometheus and promtool binaries"
        ))
    })
}

/// A file of the repository, by its path from the root (panics if it cannot be read).
pub fn read(path: &str) -> String {
    let path = in_repo(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every expression of every dashboard panel: (dashboard, panel title, expression).
pub fn dashboard_expressions() -> Vec<(String, String, String)> {
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
pub fn alert_rules() -> Vec<(String, String)> {
    let rules: Value = serde_saphyr::from_str(&read("manifests/monitoring/alerts.rules.yml")).unwrap();
    let mut found = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_owned();
            found.push((name, rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    found
}

/// The signal of an alert expression written `(signal) OP threshold`.
pub fn signal(expr: &str) -> &str {
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
pub fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$service", ".*")
}

pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A running Prometheus of the test's own, stopped when dropped.
pub struct Prometheus {
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
    /// Starts one with these `scrape_configs` entries (YAML, each starting `- job_name:`), scraping every
    /// second and evaluating the alert rules of `manifests/monitoring/`.
    pub async fn start(tools: &Tools, scrape_configs: &str) -> Prometheus {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ebb-prometheus-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rules = in_repo("manifests/monitoring/alerts.rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{rules:?}]\nscrape_configs:\n{}\n",
            scrape_configs.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"),
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // A free port: Prometheus cannot bind :0 and say which it took.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let supervisor = Supervisor::start(Some(&dir)).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut command = std::process::Command::new(&tools.prometheus);
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
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = request(self.addr, "GET", &path, "", "prometheus").await?;
        let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || answer["status"] != "success" {
            return Err(format!("{expr}: {status} {body}"));
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Each scrape target's health and last error (`/api/v1/targets`), for failure messages.
    pub async fn targets(&self) -> String {
        match request(self.addr, "GET", "/api/v1/targets", "", "prometheus").await {
            Ok((_, body)) => {
                let answer: Value = serde_json::from_str(&body).unwrap_or_default();
                let targets = answer["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
                let lines: Vec<String> = targets
                    .iter()
                    .map(|t| format!("{} {}: {}", t["scrapeUrl"], t["health"], t["lastError"]))
                    .collect();
                lines.join("\n")
            }
            Err(e) => format!("targets unknown: {e}"),
        }
    }

    /// Whether the expression returns at least one sample that is a number (not NaN).
    pub async fn has_data(&self, expr: &str) -> Result<(), String> {
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

pub fn cluster_only(expr: &str) -> bool {
    CLUSTER_ONLY.iter().any(|family| expr.contains(family))
}
