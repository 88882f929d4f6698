//! The dashboards and alert rules against a real Prometheus (Debian's `prometheus` package, run as this test's
//! own instance on a free port): `ebb up` serves two services under load, Prometheus scrapes it and, through
//! its `/service-discovery` endpoint, every pod's queue-proxy; then every PromQL expression of every dashboard
//! panel and alert rule, with Grafana's variables substituted, must return data. Panels that only a cluster
//! can fill (the Kubernetes controller's own families) are evaluated by tests/e2e_k8s.rs instead.
//!
//! Without Prometheus and promtool (`support::require::prometheus`), what needs them is skipped with a notice.

use std::sync::Arc;
use std::time::Duration;

use ebb_test_support as support;
use support::paths::in_repo;
use support::prometheus::{
    Prometheus, alert_rules, cluster_only, dashboard_expressions, read, signal, substitute,
};
use support::require;
use support::up::{chat_load, request, start};
use support::wait::wait_for;

#[test]
fn the_alert_rules_pass_promtool_and_the_prometheus_rule_carries_the_same_groups() {
    let plain: serde_json::Value =
        serde_saphyr::from_str(&read("manifests/monitoring/alerts.rules.yml")).unwrap();
    let operator: serde_json::Value =
        serde_saphyr::from_str(&read("manifests/monitoring/prometheusrule.yaml")).unwrap();
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(
        plain["groups"], operator["spec"]["groups"],
        "prometheusrule.yaml and alerts.rules.yml differ"
    );
    for (name, expr) in alert_rules() {
        assert!(!signal(&expr).is_empty(), "{name}");
    }

    let Some(tools) = require::prometheus() else { return };
    let rules = in_repo("manifests/monitoring/alerts.rules.yml");
    let output = std::process::Command::new(&tools.promtool).arg("check").arg("rules").arg(&rules).output();
    let output = output.expect("promtool runs");
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "promtool check rules failed:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_panel_and_alert_rule_returns_data_from_ebb_up() {
    let Some(tools) = require::prometheus() else { return };
    // `demo` takes load through a cold start; `stuck` never gets a ready pod and has room for two waiting
    // requests, so that the queue alerts have something to say.
    let ebb = support::ebb().display();
    let yaml = format!(
        "config:\n  scale-to-zero-grace-period: 30s\nservices:\n  - name: demo\n    command: [{ebb}, demo-model, \
         --startup-delay, 200ms, --time-to-first-token, 10ms, --tokens-per-second, '200']\n    annotations:\n      \
         autoscaling.knative.dev/window: 6s\n      ebb.dev/container-concurrency: '4'\n  - name: stuck\n    \
         command: [sleep, '600']\n    annotations:\n      ebb.dev/max-queued: '2'\n"
    );
    let up = Arc::new(start(&format!("prometheus-{}", std::process::id()), &yaml));
    let scrape_configs = format!(
        "- job_name: ebb-up\n  static_configs: [{{targets: ['{0}']}}]\n- job_name: ebb-pods\n  \
         http_sd_configs: [{{url: 'http://{0}/service-discovery', refresh_interval: 1s}}]",
        up.metrics
    );
    let prometheus = Prometheus::start(&tools, &scrape_configs).await;
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
    let load = chat_load(&up, "demo", 8);
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
    let (ok, load_failures) = load.finish().await;
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
