//! `ebb up` under attack, as an outsider on the same network would try it. Every test here is a hole that was
//! found open once: a closed, silent, slow or lying client must cost nothing and gain nothing.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::load::Load;
use support::up::{EBB, Up, chat_body, request_with, start};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// `ebb.yaml` for one demo-model service `name` whose completions take about a second, with a 6 s window and a
/// 1 s scale-to-zero grace period.
fn yaml(name: &str, annotations: &[(&str, &str)]) -> String {
    let mut text = format!(
        "config:\n  scale-to-zero-grace-period: 1s\nservices:\n  - name: {name}\n    command: [{EBB}, demo-model, \
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
