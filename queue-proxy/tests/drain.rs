//! Graceful drain of the real binary: SIGTERM while requests are in flight.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::Semaphore;

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

    let flags = ["--drain-quiet-period", "1s", "--drain-deadline", "60s"];
    let mut child = BinaryProxy::start(addr, &flags).await;
    let (data, admin) = (child.data, child.admin);

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

    kill(Pid::from_raw(child.pid()), Signal::SIGTERM).unwrap();
    eventually("readiness fails", || async move { fetch(admin, "/ready").await.0 == 503 }).await;
    assert_eq!(probe(admin).await, 503, "the injected readiness probe fails while draining too");
    assert_eq!(fetch(admin, "/live").await.0, 200, "liveness does not depend on draining");

    // Requests arriving while draining are still served (and told to close their connection).
    let during = send(&client, get(&format!("http://{data}/fast"))).await;
    assert_eq!(during.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    assert_eq!(text(during).await, "served");
    assert!(child.child.try_wait().unwrap().is_none(), "must not exit with requests in flight");
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
    let exit = child.wait_exit().await.expect("the proxy exits after draining");
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

/// The kubelet's readiness probe as `ebb inject` writes it; the status.
async fn probe(admin: std::net::SocketAddr) -> u16 {
    let request = hyper::Request::get(format!("http://{admin}/"))
        .header("ebb-probe", "queue")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    send(&client(), request).await.status().as_u16()
}
