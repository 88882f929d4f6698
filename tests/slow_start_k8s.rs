//! Slow starts are not failures, with ebb installed from `manifests/` on the real
//! control plane and pods run as real processes: a model that loads for 90 s behind a 10-minute startup
//! probe is not reported as blocked, and the requests that woke it from zero wait in the activator (its
//! activation timeout is the service's, here 10 minutes; it accepts up to 24 h) and are all served. While it
//! loads, the Deployment says since when it has been starting (`status.ebb.dev/starting-since`) and `ebb
//! status` shows it; once it is ready the note is gone.

use ebb_test_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use support::cluster::{Cluster, WAIT, complete, failed_completions, http_client, rename_service};
use support::manifests::{find, render_in};
use support::paths::in_repo;
use support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_loading_for_90_s_is_not_blocked_and_the_requests_that_woke_it_are_served() {
    let config =
        [("allow-zero-initial-scale", "true"), ("stable-window", "6s"), ("scale-to-zero-grace-period", "2s")];
    let Some(cluster) = Cluster::install("slow", &config).await else { return };
    let objects = render_in(&in_repo("manifests/examples/chat"), &cluster.apps).expect("render chat");
    let mut deployment = find(&objects, "Deployment", "chat").expect("the chat Deployment").clone();
    rename_service(&mut deployment, "slow");
    let annotations = &mut deployment["metadata"]["annotations"];
    annotations["autoscaling.knative.dev/initial-scale"] = json!("0");
    annotations["autoscaling.knative.dev/window"] = json!("6s");
    annotations["ebb.dev/activation-timeout"] = json!("10m");
    let model = &mut deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(model["name"], "model", "the example's first container is the model");
    model["args"] = json!(["--model", "demo", "--startup-delay", "90s", "--concurrency", "8"]);
    // Ten minutes to start, as a model that loads its weights may need.
    model["startupProbe"]["periodSeconds"] = json!(1);
    model["startupProbe"]["failureThreshold"] = json!(600);
    let deployment: Deployment = serde_json::from_value(deployment).expect("a Deployment");
    cluster.deployments().create(&PostParams::default(), &deployment).await.expect("create the service");
    cluster.wait_path("slow", "proxy", async || cluster.activator_endpoints().await).await;
    let gateway = cluster.gateway("slow").await;

    // A burst at zero: the requests wake the service and wait while the model loads.
    let http = http_client();
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let (http, addr) = (http.clone(), gateway.addr());
            tokio::spawn(async move { complete(&http, addr).await })
        })
        .collect();
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    wait_for(WAIT, "a pod of slow running, not ready yet", async || {
        let list = pods
            .list(&ListParams::default().labels("ebb.dev/service=slow"))
            .await
            .map_err(|e| e.to_string())?;
        let starting = list.items.iter().any(|p| {
            let status = p.status.as_ref();
            let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            running && !ready
        });
        if starting { Ok(()) } else { Err("no pod starting".to_owned()) }
    })
    .await;

    // How long it has been starting, on the Deployment and in `ebb status`.
    let deployments = cluster.deployments();
    let since = wait_for(WAIT, "status.ebb.dev/starting-since on slow", async || {
        let d = deployments.get("slow").await.map_err(|e| e.to_string())?;
        let a = d.metadata.annotations.unwrap_or_default();
        a.get("status.ebb.dev/starting-since").cloned().ok_or_else(|| format!("{a:?}"))
    })
    .await;
    let created = pods.list(&ListParams::default().labels("ebb.dev/service=slow")).await.unwrap().items;
    let oldest = created.iter().filter_map(|p| p.metadata.creation_timestamp.as_ref()).map(|t| t.0).min();
    assert_eq!(since.parse().ok(), oldest, "the oldest starting pod's creation time");
    let kubeconfig = support::require::control_plane().unwrap().kubeconfig_path().to_owned();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["status", "-n", cluster.apps.name(), "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    let note = format!("starting: {}/slow: pods starting for ", cluster.apps.name());
    assert!(table.contains(&note), "{table}{}", String::from_utf8_lossy(&status.stderr));

    let failed = failed_completions(requests).await;
    assert!(failed.is_empty(), "every request that waited for the slow start is served: {failed:?}");
    let blocked = cluster.events("slow", "PodBlocked").await;
    assert!(blocked.is_empty(), "a pod inside its startup probe is not blocked: {:?}", blocked);
    wait_for(WAIT, "the starting note removed once the pod is ready", async || {
        let d = deployments.get("slow").await.map_err(|e| e.to_string())?;
        let a = d.metadata.annotations.unwrap_or_default();
        a.get("status.ebb.dev/starting-since").map_or(Ok(()), |s| Err(format!("still {s}")))
    })
    .await;
}
