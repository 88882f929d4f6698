//! Every component as log collectors and Prometheus' tools read it, each started as the real `ebb` binary with
//! stderr piped (not a terminal):
//!
//! - without `--log-format` it writes JSON, one object per line, the message at the top level with the event's
//!   fields beside it, and no ANSI escape codes;
//! - its metrics page, fetched as `curl` fetches it, passes `promtool check metrics` (when Prometheus' tools
//!   are installed: `support::require::prometheus`).
//!
//! The queue-proxy and `ebb up` need nothing else; the activator and the autoscaler need the Kubernetes
//! control plane.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ebb_test_support as support;
use serde_json::Value;
use support::supervisor::Supervisor;
use support::{TestNamespace, require};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A component started with its stderr read line by line, and the addresses it printed on stdout.
struct Logging {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    addresses: Value,
}

impl Logging {
    fn start(supervisor: &Supervisor, command: &mut Command) -> Logging {
        let mut child = supervisor
            .spawn(command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()))
            .expect("start the ebb binary");
        let stderr = child.stderr.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // Every component prints the addresses it bound as one JSON line, once it listens.
        let first = stdout.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || stdout.for_each(drop));
        let addresses = serde_json::from_str(&first).unwrap_or(Value::Null);
        Logging { child, lines, seen: Vec::new(), addresses }
    }

    /// Its metrics page, fetched without an `Accept` header as `curl` fetches it, passes `promtool check
    /// metrics`.
    fn lint_metrics(&self, component: &str) {
        let Some(tools) = require::prometheus() else { return };
        let addr: SocketAddr = self.addresses["metrics"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{component} printed no metrics address: {}", self.addresses));
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: ebb\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, page) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{component}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"),
            "{component}: {head}"
        );
        let mut promtool = Command::new(&tools.promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs");
        promtool.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
        let output = promtool.wait_with_output().unwrap();
        let said =
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && said.trim().is_empty(),
            "{component}: promtool check metrics:\n{said}"
        );
    }

    /// The first line whose JSON `want` accepts; every line before it must be a JSON log object too.
    fn wait_for(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let line = match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no log line {what} within {TIMEOUT:?}:\n{:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("exited before logging {what}:\n{:#?}", self.seen)
                }
            };
            self.seen.push(line.clone());
            let object = json_log_line(&line);
            if want(&object) {
                return object;
            }
        }
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `line` as a collector reads it: a JSON object with the message, level, target and timestamp at the top.
fn json_log_line(line: &str) -> Value {
    assert!(!line.contains('\x1b'), "an ANSI escape code in a log line written to a pipe: {line:?}");
    let object: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    for key in ["message", "level", "target", "timestamp"] {
        assert!(object[key].is_string(), "no top-level {key:?} string: {line}");
    }
    assert!(object.get("fields").is_none(), "fields nested under \"fields\": {line}");
    object
}

fn ebb(args: &[&str]) -> Command {
    let mut command = Command::new(support::ebb());
    command.args(args).env_remove("EBB_LOG_FORMAT").env_remove("RUST_LOG").env_remove("NO_COLOR");
    command
}

#[test]
fn the_queue_proxy_logs_json_lines_and_its_metrics_lint_clean() {
    let supervisor = Supervisor::start(None).unwrap();
    // A user container that accepts connections (the queue-proxy's TCP readiness probe).
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap().to_string();
    let mut command = ebb(&["queue-proxy", "--upstream", &upstream_addr, "--bind-address", "127.0.0.1"]);
    command.args(["--data-port", "0", "--admin-port", "0", "--stats-port", "0", "--metrics-port", "0"]);
    command.args(["--service-namespace", "logs", "--service-name", "web"]);
    let mut proxy = Logging::start(&supervisor, &mut command);
    let ready =
        proxy.wait_for("that the user container is ready", |l| l["message"] == "user container is ready");
    assert_eq!(ready["level"], "INFO");
    assert!(ready["after_ms"].is_u64(), "the event's field sits beside the message: {ready}");
    proxy.lint_metrics("queue-proxy");

    // `--log-format text` asks for text: still no colours on a pipe.
    let mut command = ebb(&["queue-proxy", "--log-format", "text", "--upstream", &upstream_addr]);
    command.args(["--bind-address", "127.0.0.1", "--data-port", "0", "--admin-port", "0"]);
    command.args([
        "--stats-port",
        "0",
        "--metrics-port",
        "0",
        "--service-namespace",
        "logs",
        "--service-name",
        "web",
    ]);
    let text = Logging::start(&supervisor, &mut command);
    let line = text.lines.recv_timeout(TIMEOUT).expect("a text log line");
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    assert!(line.contains(" INFO ") && line.contains("queue-proxy listening data=127.0.0.1:"), "{line}");
    assert!(!line.contains('\x1b'), "{line:?}");
}

#[test]
fn ebb_up_logs_json_lines_and_its_metrics_lint_clean() {
    let supervisor = Supervisor::start(None).unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-logs-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ebb.yaml");
    std::fs::write(&file, "services:\n  - name: idle\n    command: [sleep, '60']\n").unwrap();
    let mut command = ebb(&["up", "--port", "0", "--metrics-port", "0", "--grace-period", "1s", "-f"]);
    let mut up = Logging::start(&supervisor, command.arg(&file));
    let line = up.wait_for("from ebb up", |_| true);
    assert!(line["target"].as_str().unwrap().starts_with("ebb"), "{line}");
    up.lint_metrics("ebb up");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_activator_and_the_autoscaler_log_json_lines_and_their_metrics_lint_clean() {
    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "logs").await;
    let kubeconfig: &Path = cp.kubeconfig_path();
    let supervisor = Supervisor::start(None).unwrap();

    let mut command =
        ebb(&["activator", "--bind-address", "127.0.0.1", "--data-port", "0", "--metrics-port", "0"]);
    command
        .args(["--pod-namespace", ns.name(), "--watch-namespaces", ns.name()])
        .env("KUBECONFIG", kubeconfig);
    let mut activator = Logging::start(&supervisor, &mut command);
    let line =
        activator.wait_for("that it streams stats", |l| l["message"] == "streaming stats to the autoscalers");
    assert!(line["autoscaler_port"].is_u64(), "{line}");
    activator.lint_metrics("activator");

    let mut command = ebb(&["autoscaler", "--namespace", ns.name(), "--watch-namespaces", ns.name()]);
    command.args([
        "--identity",
        "logs-0",
        "--ingest-address",
        "127.0.0.1:0",
        "--metrics-address",
        "127.0.0.1:0",
    ]);
    let mut autoscaler = Logging::start(&supervisor, command.arg("--kubeconfig").arg(kubeconfig));
    let line = autoscaler.wait_for("that it leads", |l| l["message"] == "became the leader");
    assert_eq!(line["identity"], "logs-0", "{line}");
    autoscaler.lint_metrics("autoscaler");

    drop((activator, autoscaler));
    ns.delete(&admin).await;
}
