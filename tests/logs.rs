//! Every component's log lines as a log collector reads them: each one is started as the real `ebb` binary with
//! stderr piped (not a terminal), so without `--log-format` it writes JSON, one object per line, the message
//! at the top level with the event's fields beside it, and no ANSI escape codes. The queue-proxy and `ebb up`
//! need nothing else; the activator and the autoscaler need the Kubernetes control plane.

use ebb_test_support as support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::supervisor::Supervisor;
use support::{TestNamespace, require};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A component started with its stderr read line by line.
struct Logging {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Logging {
    fn start(supervisor: &Supervisor, command: &mut Command) -> Logging {
        let mut child = supervisor
            .spawn(command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()))
            .expect("start the ebb binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Logging { child, lines, seen: Vec::new() }
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
fn the_queue_proxy_logs_json_lines_with_the_message_and_fields_at_the_top() {
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
fn ebb_up_logs_json_lines() {
    let supervisor = Supervisor::start(None).unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-logs-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ebb.yaml");
    std::fs::write(&file, "services:\n  - name: idle\n    command: [sleep, '60']\n").unwrap();
    let mut command = ebb(&["up", "--port", "0", "--metrics-port", "0", "--grace-period", "1s", "-f"]);
    let mut up = Logging::start(&supervisor, command.arg(&file));
    let line = up.wait_for("from ebb up", |_| true);
    assert!(line["target"].as_str().unwrap().starts_with("ebb"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_activator_and_the_autoscaler_log_json_lines() {
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

    drop((activator, autoscaler));
    ns.delete(&admin).await;
}
