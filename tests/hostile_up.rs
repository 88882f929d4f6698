//! `ebb up` under attack, as an outsider on the same network would try it. Every test here is a hole that was
//! found open once: a closed, silent, slow or lying client must cost nothing and gain nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_test_support as support;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::ebb;
use support::load::Load;
use support::up::{Up, chat_body, processes_with, request_with, start, start_with};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// `ebb.yaml` for one demo-model service `name` whose completions take about a second, with a 6 s window and a
/// 1 s scale-to-zero grace period.
fn yaml(name: &str, annotations: &[(&str, &str)]) -> String {
    let ebb = ebb().display();
    let mut text = format!(
        "config:\n  scale-to-zero-grace-period: 1s\nservices:\n  - name: {name}\n    command: [{ebb}, demo-model, \
         --model, {name}, --startup-delay, 100ms, --time-to-first-token, 10ms, --tokens-per-second, '100']\n    \
         port: 8080\n    annotations:\n      autoscaling.knative.dev/window: 6s\n"
    );
    for (k, v) in annotations {
        text.push_str(&format!("      {k}: \"{v}\"\n"));
    }
    text
}

/// The data address of the service's first pod, once one is ready.
async fn first_pod(up: &Up, name: &str) -> std::net::SocketAddr {
    let s = up
        .wait_for(name, "a ready pod", Duration::from_secs(20), |s| {
            s["ready"].as_u64() >= Some(1) && s["pod_addresses"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
    s["pod_addresses"][0]["address"].as_str().unwrap().parse().unwrap()
}

/// Six clients that bypass the gateway and mark their requests as the activator's: a pod counts every request,
/// so the autoscaler sees the load and the busy service keeps its pod. (Once the pod left marked load out of its
/// stats: the autoscaler saw 0, scaled the service to zero and cut the clients' streams.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_marked_as_the_activators_by_a_client_still_counts() {
    let name = unique("forged");
    let up = Arc::new(start(&name, &yaml(&name, &[])));
    up.chat(&name).await.expect("a first request wakes the service");
    let pod = first_pod(&up, &name).await;

    let (body, model) = (chat_body(&name, 100), name.clone());
    let forged = Load::start(6, move || {
        let (body, name) = (body.clone(), model.clone());
        async move {
            let headers =
                [("host", name.as_str()), ("ebb-proxied", "activator"), ("k-proxy-request", "activator")];
            match request_with(pod, "POST", "/v1/chat/completions", &body, &headers).await? {
                (200, body) if body.contains("data: [DONE]") => Ok(()),
                (status, body) => Err(format!("status {status}: {body}")),
            }
        }
    });
    up.wait_for(&name, "the marked load observed", Duration::from_secs(20), |s| {
        s["observed_stable"].as_f64().is_some_and(|c| c > 3.0)
    })
    .await;
    // Past the stable window and the grace period, the service still has its pod.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let s = up.service(&name).await;
        assert!(
            s["desired"].as_u64() >= Some(1) && s["ready"].as_u64() >= Some(1),
            "scaled away under load: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, failures) = forged.finish().await;
    assert!(
        failures.is_empty(),
        "{} of the clients' requests failed: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(ok > 0);
}

/// Twenty streaming clients on two pods, and one pod's model is killed: only the requests that were in flight on
/// that model are cut. (Once, its queue-proxy answered 502 for about a second until the pod was noticed, the
/// gateway kept choosing it because it failed fastest, and 54-62 requests failed per kill.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_model_costs_only_the_streams_it_was_serving() {
    let name = unique("crash");
    let annotations = [("autoscaling.knative.dev/min-scale", "2"), ("ebb.dev/container-concurrency", "10")];
    let up = Arc::new(start(&name, &yaml(&name, &annotations)));
    up.wait_for(&name, "two ready pods", Duration::from_secs(30), |s| s["ready"].as_u64() == Some(2)).await;
    // Half-second streams: at any moment about ten are in flight on each pod.
    let (client_up, model) = (up.clone(), name.clone());
    let load = Load::start(20, move || {
        let (up, model) = (client_up.clone(), model.clone());
        async move { up.chat_tokens(&model, 50).await }
    });
    let busy = Instant::now() + Duration::from_secs(20);
    while load.ok() < 40 {
        assert!(Instant::now() < busy, "the load does not get going: {} failed", load.failed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let models = processes_with(&format!("--model\0{name}"));
    assert_eq!(models.len(), 2, "one model process per pod: {models:?}");
    kill(Pid::from_raw(models[0]), Signal::SIGKILL).unwrap();
    // The pod is replaced while the load goes on.
    let before = load.ok();
    up.wait_for(&name, "the pod replaced", Duration::from_secs(30), |s| {
        s["restarts"].as_u64() == Some(1) && s["ready"].as_u64() == Some(2)
    })
    .await;
    let after = Instant::now() + Duration::from_secs(20);
    while load.ok() < before + 40 {
        assert!(Instant::now() < after, "the load stalls after the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, failures) = load.finish().await;
    // A stream cut mid-way ends without [DONE] (status 200) or as a broken connection. A request the model had
    // been handed but not yet answered when it died is cut too: its queue-proxy answers 502 `upstream_reset`
    // (it cannot be sent again: a POST may have been acted on). Anything else is a refusal, and none may be.
    let cut = |f: &String| {
        !f.starts_with("status ")
            || f.starts_with("status 200")
            || (f.starts_with("status 502") && f.contains("\"upstream_reset\""))
    };
    let refused: Vec<&String> = failures.iter().filter(|f| !cut(f)).collect();
    assert!(
        refused.is_empty(),
        "{} requests were refused after the kill: {:?}",
        refused.len(),
        refused.first()
    );
    assert!(
        failures.len() <= 10,
        "{} failed, more than the dead model's 10 slots could hold: {:?}\n{}",
        failures.len(),
        failures.first(),
        up.log()
    );
    eprintln!("{ok} requests served, {} cut by the kill", failures.len());
}

/// Serving other machines does not show them the metrics port, whose `/status` lists every pod's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_stays_on_loopback_when_the_gateway_is_public() {
    let name = unique("public");
    let up = start_with(&name, &yaml(&name, &[]), &["--bind-address", "0.0.0.0"]);
    assert!(up.gateway.ip().is_unspecified(), "{}", up.gateway);
    assert!(up.metrics.ip().is_loopback(), "{}", up.metrics);
}

/// A burst at zero on a service with no max-scale starts no more pods than the machine can run. (Once, 500
/// requests at zero started 179 pods on 2 cores.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_zero_is_bounded_by_the_machine() {
    let name = unique("bounded");
    let up = Arc::new(start(&name, &yaml(&name, &[("ebb.dev/container-concurrency", "1")])));
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    let burst: Vec<_> = (0..200)
        .map(|_| {
            let (up, name) = (up.clone(), name.clone());
            tokio::spawn(async move { up.chat(&name).await })
        })
        .collect();
    let mut most = 0;
    while !burst.iter().all(|r| r.is_finished()) {
        let s = up.service(&name).await;
        most = most.max(s["desired"].as_u64().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for request in burst {
        request.await.unwrap().unwrap_or_else(|e| panic!("a request of the burst failed: {e}"));
    }
    assert!(most > 1, "the burst scaled the service out");
    assert!(most <= 4 * cores, "{most} pods wanted on {cores} cores");
}
