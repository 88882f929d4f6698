//! Graceful drain of the real binary: SIGTERM while requests are in flight.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_serves_everything_then_exits_after_the_quiet_period() {
    // `/slow` is held until the test opens the gate; anything else answers at once.
    let gate = Arc::new(Semaphore::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let (g, i) = (gate.clone(), inside.clone());
    let addr = upstream(move |req| {
        let (gate, inside) = (g.clone(), i.clone());
        async move {
            if req.uri().path() == "/slow" {
                inside.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
            }
            response(200, full("served"))
        }
    })
    .await;

    let binary = env!("CARGO_BIN_EXE_queue-proxy");
    let mut child = Command::new(binary)
        .args(["--upstream", &addr.to_string(), "--bind-address", "127.0.0.1"])
        .args(["--data-port", "0", "--admin-port", "0", "--stats-port", "0", "--metrics-port", "0"])
        .args(["--pod-name", "drain-test", "--drain-quiet-period", "1s", "--drain-deadline", "60s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot start {binary}: {err}; build it with `cargo build -p ebb-queue-proxy`")
        });
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(DEADLINE, line).await.expect("address line in time").unwrap().unwrap();
    let addrs: serde_json::Value = serde_json::from_str(&line).expect("a JSON line of addresses on stdout");
    let data = addrs["data"].as_str().unwrap().to_owned();
    let admin = addrs["admin"].as_str().unwrap().parse().unwrap();

    eventually("the proxy reports ready", || async move { fetch(admin, "/ready").await.0 == 200 }).await;
    assert_eq!(fetch(admin, "/live").await.0, 200);
    // The readiness probe `ebb inject` writes: `GET /` with `Ebb-Probe: queue` on the admin port.
    assert_eq!(probe(admin).await, 200);

    let client = client();
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (client.clone(), format!("http://{data}/slow"));
            tokio::spawn(async move { text(send(&client, get(&url)).await).await })
        })
        .collect();
    let inside_now = inside.clone();
    eventually("3 requests are in flight", || {
        let inside = inside_now.clone();
        async move { inside.load(Ordering::SeqCst) == 3 }
    })
    .await;

    // The preStop hook's call returns only once the drain is complete.
    let wait_for_drain = tokio::spawn(async move { fetch(admin, "/wait-for-drain").await });

    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    eventually("readiness fails", || async move { fetch(admin, "/ready").await.0 == 503 }).await;
    assert_eq!(probe(admin).await, 503, "the injected readiness probe fails while draining too");
    assert_eq!(fetch(admin, "/live").await.0, 200, "liveness does not depend on draining");

    // Requests arriving while draining are still served (and told to close their connection).
    let during = send(&client, get(&format!("http://{data}/fast"))).await;
    assert_eq!(during.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    assert_eq!(text(during).await, "served");
    assert!(child.0.try_wait().unwrap().is_none(), "must not exit with requests in flight");
    assert!(!wait_for_drain.is_finished());

    gate.add_permits(3);
    for request in slow {
        assert_eq!(request.await.unwrap(), "served", "in-flight requests complete");
    }
    // A late arrival restarts the quiet period and is served.
    assert_eq!(text(send(&client, get(&format!("http://{data}/fast"))).await).await, "served");

    let (status, body) =
        tokio::time::timeout(DEADLINE, wait_for_drain).await.expect("drained in time").unwrap();
    assert_eq!((status, &body[..]), (200, &b"drained"[..]));
    let deadline = Instant::now() + DEADLINE;
    let exit = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the proxy did not exit after draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn invalid_configuration_exits_with_code_2_and_says_why() {
    let output = Command::new(env!("CARGO_BIN_EXE_queue-proxy"))
        .args(["--timeout", "soon", "--pod-name", "p"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--timeout") && stderr.contains("300s"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_queue-proxy"))
        .args(["--pod-name", "p", "--probe-path", "healthz"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--probe-path"));

    // A duration too large for any deadline is refused by name, not an arithmetic overflow (exit 101).
    let output = Command::new(env!("CARGO_BIN_EXE_queue-proxy"))
        .args(["--pod-name", "p", "--timeout", "18446744073709551615"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--timeout") && stderr.contains("at most 8760h"), "{stderr}");
}

/// Kills the child if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The kubelet's readiness probe as `ebb inject` writes it; the status.
async fn probe(admin: std::net::SocketAddr) -> u16 {
    let request = hyper::Request::get(format!("http://{admin}/"))
        .header("ebb-probe", "queue")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    send(&client(), request).await.status().as_u16()
}
