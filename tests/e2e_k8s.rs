//! End to end on a real control plane: ebb-system installed from `manifests/` and run as
//! real processes of the `ebb` binary under test by the node emulator (each pod on its own 127.0.0.N, each
//! component with its ServiceAccount's token, so the manifests' RBAC is what they get), the example service
//! `manifests/examples/chat` (`ebb demo-model` with its queue-proxy sidecar), and a test gateway following
//! the public Service's EndpointSlice in place of an ingress.
//!
//! Each test installs ebb-system in a namespace of its own ([`support::cluster::Cluster`]), so tests neither
//! share nor disturb components. The autoscaling windows are shortened through `config-autoscaler` and the
//! service's annotations. The restart and failover scenarios are in tests/e2e_failover_k8s.rs.
//!
//! Not here: the autoscaler's token cannot read Secrets or delete pods (tests/manifests_k8s.rs checks it).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ebb_test_support as support;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::cluster::{
    Cluster, WAIT, complete, failed_completions, gateway_load, http_client, is_completion, ready_ips,
};
use support::prometheus::{Prometheus, alert_rules, cluster_only, dashboard_expressions, signal, substitute};
use support::{require, wait_for};

/// Items (a) and (b): from zero, 100 concurrent requests through the gateway and the activators all succeed;
/// sustained load scales the service up with the slice in serve mode (the pods); idle, it goes back to zero
/// with the slice in proxy mode (the activators). No component crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_through_the_activator_scale_up_under_load_and_back_to_zero() {
    // Prometheus too, for the panels only a cluster fills: both looked for (and named if missing) first.
    let (Some(_), Some(tools)) = (require::control_plane(), require::prometheus()) else { return };
    let Some(cluster) = Cluster::install(
        "e2e-cold",
        &[
            ("allow-zero-initial-scale", "true"),
            ("stable-window", "6s"),
            ("scale-to-zero-grace-period", "2s"),
        ],
    )
    .await
    else {
        return;
    };
    eprintln!("kinds not served by this API server, not installed: {:?}", cluster.skipped);
    // Prometheus scrapes the autoscalers and the activators, for the panels only a cluster fills.
    let mut jobs = String::new();
    for component in ["autoscaler", "activator"] {
        let ips = cluster
            .wait_ready_pods(&cluster.system, &format!("app.kubernetes.io/component={component}"), 2)
            .await;
        let targets: Vec<String> = ips.iter().map(|ip| format!("'{ip}:9090'")).collect();
        jobs += &format!(
            "- job_name: {component}\n  honor_labels: true\n  static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
    }
    let prometheus = Prometheus::start(&tools, &jobs).await;
    cluster.deploy_scaling_chat("chat").await;
    // It starts at one pod and, idle, goes to zero: the public Service in proxy mode, its slice listing
    // the activators.
    cluster.wait_replicas("chat", "= 0 (idle)", |r| r == 0).await;
    cluster.wait_path("chat", "proxy", async || cluster.activator_endpoints().await).await;
    let gateway = cluster.gateway("chat").await;

    // (a) 100 concurrent requests from zero: the activators hold them until a pod is Ready.
    let http = http_client();
    let requests = (0..100).map(|_| {
        let http = http.clone();
        let addr = gateway.addr();
        tokio::spawn(async move { complete(&http, addr).await })
    });
    let failed = failed_completions(requests).await;
    assert!(failed.is_empty(), "{} of 100 cold-start requests failed: {failed:?}", failed.len());
    let replicas = cluster.replicas("chat").await.unwrap();
    assert!((1..=4).contains(&replicas), "scaled from zero within max-scale: {replicas}");

    // (b) Sustained load (40 clients over 8 per pod at a 70% target): more pods, the slice lists them.
    let load = gateway_load(gateway.addr(), 40);
    cluster.wait_replicas("chat", ">= 2", |r| r >= 2).await;
    let apps: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    cluster
        .wait_path("chat", "serve", async || {
            let ips = ready_ips(&apps, "ebb.dev/service=chat").await.unwrap_or_default();
            let mut out: Vec<SocketAddr> =
                ips.iter().map(|ip| format!("{ip}:8012").parse().unwrap()).collect();
            out.sort();
            if out.len() >= 2 { out } else { Vec::new() }
        })
        .await;
    let served_before = load.ok();
    wait_for(WAIT, "requests served in serve mode", async || {
        if load.ok() > served_before + 50 { Ok(()) } else { Err(format!("{} served", load.ok())) }
    })
    .await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests under load failed: {failures:?}",
        failures.len(),
        ok + failures.len() as u64
    );
    assert!(cluster.replicas("chat").await.unwrap() <= 4, "never above max-scale");
    every_cluster_only_panel_and_alert_has_data(&prometheus).await;

    // Idle: back to zero, the slice on the activators again.
    cluster.wait_replicas("chat", "= 0", |r| r == 0).await;
    cluster.wait_path("chat", "proxy", async || cluster.activator_endpoints().await).await;
    wait_for(WAIT, "the service's pods to be gone", async || {
        let list = apps
            .list(&ListParams::default().labels("ebb.dev/service=chat"))
            .await
            .map_err(|e| e.to_string())?;
        if list.items.is_empty() { Ok(()) } else { Err(format!("{} pods", list.items.len())) }
    })
    .await;

    // And a request from zero again gets through.
    let (status, body) = complete(&http, gateway.addr()).await.expect("a request after going to zero");
    assert!(is_completion(status, &body), "{status}: {body}");
    assert_eq!(cluster.logs.exits(), Vec::<String>::new(), "no container exited on its own");
}

/// The dashboard panels and alert signals on the Kubernetes controller's own families (which `ebb up`
/// cannot fill; tests/prometheus.rs evaluates the rest) return data from the cluster's autoscalers.
async fn every_cluster_only_panel_and_alert_has_data(prometheus: &Prometheus) {
    let panels = dashboard_expressions().into_iter().map(|(d, p, e)| (format!("{d} / {p}"), substitute(&e)));
    let alerts = alert_rules().into_iter().map(|(name, e)| (format!("alert {name}"), signal(&e).to_owned()));
    let mut failures = Vec::new();
    let mut evaluated = 0;
    for (what, expr) in panels.chain(alerts).filter(|(_, e)| cluster_only(e)) {
        evaluated += 1;
        if let Err(e) = prometheus.has_data(&expr).await {
            failures.push(format!("{what}: {expr}: {e}"));
        }
    }
    assert!(evaluated > 0);
    let targets = prometheus.targets().await;
    assert!(
        failures.is_empty(),
        "{} of {evaluated} expressions failed:\n{}\nscrape targets:\n{targets}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{evaluated} cluster-only expressions returned data");
}

/// Item (c): an invalid annotation draws a Warning Event naming it, and the replicas are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_annotation_is_reported_and_replicas_are_untouched() {
    let Some(cluster) = Cluster::install("e2e-invalid", &[("stable-window", "6s")]).await else { return };
    let model_args = ["--model", "demo", "--startup-delay", "0s"];
    // A window below the 6 s minimum, on a service started at 2 replicas.
    cluster.deploy_chat("bad", &[("autoscaling.knative.dev/window", "2s")], &model_args).await;
    cluster
        .deployments()
        .patch("bad", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await
        .expect("set replicas");
    let event = wait_for(WAIT, "a Warning Event about the window", async || {
        let events = cluster.events("bad", "InvalidConfiguration").await;
        match events.into_iter().find(|e| e.type_.as_deref() == Some("Warning")) {
            Some(e) => Ok(e),
            None => Err("none yet"),
        }
    })
    .await;
    let note = event.note.unwrap_or_default();
    assert!(
        note.contains("autoscaling.knative.dev/window") && note.contains("2s"),
        "the Event names key and value: {note}"
    );
    // A valid service beside it is scaled: the autoscaler has made decisions since.
    cluster
        .deploy_chat(
            "good",
            &[("autoscaling.knative.dev/min-scale", "2"), ("autoscaling.knative.dev/window", "6s")],
            &model_args,
        )
        .await;
    cluster.wait_replicas("good", "= 2 (min-scale)", |r| r == 2).await;
    cluster.wait_ready_pods(&cluster.apps, "ebb.dev/service=good", 2).await;
    assert_eq!(cluster.replicas("bad").await.unwrap(), 2, "the invalid service's replicas are untouched");
    let d = cluster.deployments().get("bad").await.unwrap();
    let annotations: BTreeMap<String, String> = d.metadata.annotations.unwrap_or_default();
    assert!(
        annotations.get("status.ebb.dev/desired").is_none_or(|v| v == "2"),
        "no other desired: {annotations:?}"
    );
    assert_eq!(cluster.logs.exits(), Vec::<String>::new(), "no container exited on its own");
}

/// The image of every pod of service `name` that is not being deleted.
async fn pod_images(pods: &Api<Pod>, name: &str) -> Result<Vec<String>, String> {
    let list = pods
        .list(&ListParams::default().labels(&format!("ebb.dev/service={name}")))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
        .collect())
}

/// Sets the image of every container of Deployment `name` (a rollout).
async fn set_image(cluster: &Cluster, name: &str, image: &str) {
    let d = cluster.deployments().get(name).await.expect("the Deployment");
    let containers: Vec<Value> = d
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "image": image}))
        .collect();
    let patch = json!({"spec": {"template": {"spec": {"containers": containers}}}});
    cluster
        .deployments()
        .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .expect("roll out");
}

/// Item (e): an image rollout under load loses no request and does not scale up; one at zero starts no pod,
/// and the next request is served by the new image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_rollouts_under_load_and_at_zero_lose_nothing_and_do_not_over_scale() {
    let Some(cluster) =
        Cluster::install("e2e-roll", &[("stable-window", "6s"), ("scale-to-zero-grace-period", "2s")]).await
    else {
        return;
    };
    cluster.deploy_scaling_chat("chat").await;
    let apps: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    let gateway = cluster.gateway("chat").await;
    // Steady load: 14 clients over 8 per pod at a 70% target (5.6) want 3 pods (2.5), far enough from the
    // step to 4 (16.8) that a second's stat counted twice while pods come and go does not cross it; the
    // rollout starts once they are all Ready.
    let load = gateway_load(gateway.addr(), 14);
    let before = cluster.wait_replicas("chat", "= 3", |r| r == 3).await;
    cluster.wait_ready_pods(&cluster.apps, "ebb.dev/service=chat", 3).await;

    set_image(&cluster, "chat", "ghcr.io/ebb-dev/ebb:0.1.1").await;
    let mut highest = before;
    wait_for(WAIT, "the rollout under load to finish", async || {
        highest = highest.max(cluster.replicas("chat").await?);
        let images = pod_images(&apps, "chat").await?;
        let ready = ready_ips(&apps, "ebb.dev/service=chat").await?;
        let done =
            !images.is_empty() && images.iter().all(|i| i.ends_with(":0.1.1")) && ready.len() == images.len();
        if done { Ok(()) } else { Err(format!("images {images:?}, {} ready", ready.len())) }
    })
    .await;
    let served = load.ok();
    wait_for(WAIT, "requests served by the new pods", async || {
        if load.ok() > served + 20 { Ok(()) } else { Err(format!("{} served", load.ok())) }
    })
    .await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rollout: {failures:?}",
        failures.len(),
        ok as usize + failures.len()
    );
    assert!(highest <= before, "the rollout scaled the service up: {before} -> {highest} replicas");

    // At zero: the rollout starts no pod; the next request cold-starts one of the new image.
    cluster.wait_replicas("chat", "= 0", |r| r == 0).await;
    wait_for(WAIT, "the pods to be gone", async || {
        let images = pod_images(&apps, "chat").await?;
        if images.is_empty() { Ok(()) } else { Err(format!("{images:?}")) }
    })
    .await;
    set_image(&cluster, "chat", "ghcr.io/ebb-dev/ebb:0.1.2").await;
    wait_for(WAIT, "the Deployment controller to see the rollout", async || {
        let d = cluster.deployments().get("chat").await.map_err(|e| e.to_string())?;
        let (generation, observed) = (d.metadata.generation, d.status.and_then(|s| s.observed_generation));
        if observed >= generation {
            Ok(())
        } else {
            Err(format!("generation {generation:?}, observed {observed:?}"))
        }
    })
    .await;
    assert_eq!(cluster.replicas("chat").await.unwrap(), 0, "a rollout at zero stays at zero");
    assert_eq!(pod_images(&apps, "chat").await.unwrap(), Vec::<String>::new(), "no pod started");
    let (status, body) = complete(&http_client(), gateway.addr()).await.expect("a request after the rollout");
    assert!(is_completion(status, &body), "{status}: {body}");
    let images = pod_images(&apps, "chat").await.unwrap();
    assert!(
        !images.is_empty() && images.iter().all(|i| i.ends_with(":0.1.2")),
        "served by the new image: {images:?}"
    );
    assert_eq!(cluster.logs.exits(), Vec::<String>::new(), "no container exited on its own");
}
