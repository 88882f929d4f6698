//! Scale targets other than Deployments, against the real v1.20 control plane: a StatefulSet whose pods the
//! real StatefulSet controller makes, and a custom resource that serves the scale subresource (its
//! controller played by the test). The autoscaler runs in-process as ServiceAccount `ebb-autoscaler` with
//! the base RBAC of `manifests/` plus exactly the folder of `manifests/scale-targets/` for the kind, so the
//! RBAC documented there is what these tests prove sufficient. Pods are played by the node emulator with
//! [`FakePods`] (queue-proxy stats with the load the test sets), except in the last test, where ebb is
//! installed from `manifests/` and a StatefulSet's real pods get the sidecar from the admission webhook and
//! serve completions from zero.

use std::collections::BTreeMap;
use std::time::Duration;

use ebb_autoscaler::cluster::ClusterController;
use ebb_config::ServiceId;
use ebb_test_support as support;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::autoscaler::{
    FakePods, activator_frame, grant_autoscaler_rbac, send_stats, start_leading, test_options, token_of,
    wait_event_note,
};
use support::cluster::{Cluster, WAIT, complete, failed_completions, http_client};
use support::crd::ScalableKind;
use support::manifests::{find, grant_from, render_in};
use support::paths::in_repo;
use support::{NodeEmulator, TestNamespace, require, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The windows shortened so a test goes to zero within a minute; the kinds to scale.
fn config(kinds: &str) -> Vec<(&'static str, String)> {
    vec![
        ("allow-zero-initial-scale", "true".into()),
        ("scale-to-zero-grace-period", "2s".into()),
        ("stable-window", "6s".into()),
        ("scale-target-kinds", kinds.into()),
    ]
}

/// Annotations of a service that starts at zero, wants one pod per concurrent request and at most three.
fn annotations() -> BTreeMap<&'static str, &'static str> {
    [
        ("autoscaling.knative.dev/initial-scale", "0"),
        ("autoscaling.knative.dev/target", "1"),
        ("autoscaling.knative.dev/target-utilization-percentage", "100"),
        ("autoscaling.knative.dev/target-burst-capacity", "0"),
        ("autoscaling.knative.dev/max-scale", "3"),
    ]
    .into()
}

struct Env {
    admin: Client,
    ns: TestNamespace,
    controller: Option<ClusterController>,
    activator_token: String,
    pods: FakePods,
    _emulator: NodeEmulator,
}

impl Env {
    /// A namespace with the base RBAC and `extra_rbac` (a folder of `manifests/scale-targets/`), the
    /// ConfigMap, an activator pod and a leading controller. `None` without a control plane.
    async fn start(prefix: &str, kinds: &str, extra_rbac: Option<&str>) -> Option<Env> {
        let cp = require::control_plane()?;
        let admin = cp.client().await;
        let ns = TestNamespace::create(&admin, prefix).await;
        grant_autoscaler_rbac(&admin, &ns, "ebb-autoscaler").await;
        if let Some(dir) = extra_rbac {
            grant_from(&admin, &ns, "ebb-autoscaler", dir).await;
        }
        let sa_config = cp.service_account_kubeconfig(&admin, &ns, "ebb-autoscaler").await;
        let client = support::k8s::client_from_kubeconfig(&sa_config).await.unwrap();
        let activator_token = token_of(&cp.service_account_kubeconfig(&admin, &ns, "ebb-activator").await);
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        wait_for(TIMEOUT, "the autoscaler's RBAC to take effect", async || {
            pods_api.list(&ListParams::default()).await.map(drop)
        })
        .await;
        let data: BTreeMap<String, String> =
            config(kinds).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta { name: Some("config-autoscaler".into()), ..Default::default() },
            data: Some(data),
            ..Default::default()
        };
        Api::<ConfigMap>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &cm).await.unwrap();
        let pods = FakePods::default();
        let emulator = NodeEmulator::builder().namespace(&ns).runtime(pods.clone()).start(&admin).await;
        let activator: Pod = serde_json::from_value(json!({
            "metadata": {"name": "activator-0", "labels": {
                "app.kubernetes.io/part-of": "ebb", "app.kubernetes.io/component": "activator"}},
            "spec": {"containers": [{"name": "activator", "image": "example.invalid/activator:1"}]},
        }))
        .unwrap();
        Api::<Pod>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &activator).await.unwrap();
        let options = test_options(ns.name(), "replica-0");
        let controller = start_leading(client, options, TIMEOUT).await;
        Some(Env { admin, ns, controller: Some(controller), activator_token, pods, _emulator: emulator })
    }

    fn controller(&self) -> &ClusterController {
        self.controller.as_ref().unwrap()
    }

    /// Waits until `read` says `name` has `want` replicas, showing the last decision while it waits.
    async fn wait_replicas(
        &self,
        name: &str,
        want: i64,
        timeout: Duration,
        read: impl AsyncFn() -> Result<i64, String>,
    ) {
        wait_for(timeout, &format!("{name} at {want} replicas"), async || {
            let replicas = read().await?;
            if replicas == want {
                Ok(())
            } else {
                let decisions =
                    self.controller().autoscaler().decisions(&ServiceId::new(self.ns.name(), name));
                let last = decisions.and_then(|d| d.last().map(|r| r.reason.to_string()));
                Err(format!("{replicas} replicas; last decision: {last:?}"))
            }
        })
        .await;
    }

    async fn wait_event(&self, name: &str, reason: &str, contains: &[&str]) -> String {
        wait_event_note(&self.admin, &self.ns, name, reason, contains, TIMEOUT).await
    }

    /// The addresses ebb's EndpointSlice of `name` lists.
    async fn slice_addresses(&self, name: &str) -> Result<Vec<String>, String> {
        let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "endpointslices");
        let api: Api<DynamicObject> = Api::namespaced_with(self.admin.clone(), &self.ns, &ar);
        let slice = api.get(name).await.map_err(|e| e.to_string())?;
        let mut ips: Vec<String> = slice.data["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
            .collect();
        ips.sort();
        Ok(ips)
    }

    /// The addresses of the ready, live pods that `selector` picks.
    async fn ready_pod_ips(&self, selector: &str) -> Vec<String> {
        let list = Api::<Pod>::namespaced(self.admin.clone(), &self.ns)
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        let ready = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        let mut ips: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p))
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ips.sort();
        ips
    }

    /// The activator says load arrived for `name` at zero.
    async fn wake(&self, name: &str) {
        let frame = activator_frame(&self.ns, name, 1.0);
        assert_eq!(
            send_stats(self.controller().ingest_addr, Some(&self.activator_token), &[frame]).await,
            200
        );
    }

    async fn stop(mut self) {
        if let Some(controller) = self.controller.take() {
            controller.shutdown().await;
        }
    }
}

/// A StatefulSet labelled `ebb.dev/service` is scaled through `statefulsets/scale` from zero to one on the
/// activator's first stat, up to three under load and back to zero; its pods are those the scale
/// subresource's selector picks (a labelled pod outside it is never routed to); Events and the status
/// annotations go on the StatefulSet.
#[tokio::test]
async fn a_statefulset_is_scaled_from_zero_and_back_through_its_scale_subresource() {
    let kinds = "deployments.apps, statefulsets.apps";
    let Some(env) = Env::start("st-sts", kinds, Some("manifests/scale-targets/statefulsets")).await else {
        return;
    };
    let sets: Api<StatefulSet> = Api::namespaced(env.admin.clone(), &env.ns);
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "labels": {"ebb.dev/service": "db"}, "annotations": annotations()},
        "spec": {
            "replicas": 0,
            "serviceName": "db-pods",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"ebb.dev/service": "db", "app": "db"}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            },
        },
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.expect("create the StatefulSet");
    // Labelled for ebb but outside the StatefulSet's selector: not one of its pods. Ready on another node
    // (its status written here), so it would be routed to if ebb went by the label alone.
    let pods_api = Api::<Pod>::namespaced(env.admin.clone(), &env.ns);
    let stray: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"ebb.dev/service": "db"}},
        "spec": {"nodeName": "elsewhere", "containers": [{"name": "app", "image": "example.invalid/app:1"}]},
    }))
    .unwrap();
    pods_api.create(&PostParams::default(), &stray).await.unwrap();
    let ready = json!({"status": {"phase": "Running", "podIP": "10.99.0.1", "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}});
    pods_api.patch_status("stray", &PatchParams::default(), &Patch::Merge(&ready)).await.unwrap();
    let activators = wait_for(TIMEOUT, "a ready activator", async || {
        let ips = env.ready_pod_ips("app.kubernetes.io/component=activator").await;
        if ips.is_empty() { Err("not yet") } else { Ok(ips) }
    })
    .await;
    wait_for(TIMEOUT, "the slice to list the activator at zero", async || {
        let ips = env.slice_addresses("db").await?;
        if ips == activators { Ok(()) } else { Err(format!("{ips:?}")) }
    })
    .await;

    let replicas = async || {
        let set = sets.get("db").await.map_err(|e| e.to_string())?;
        Ok(i64::from(set.spec.and_then(|s| s.replicas).unwrap_or(1)))
    };
    env.wake("db").await;
    env.wait_replicas("db", 1, TIMEOUT, replicas).await;
    env.wait_event("db", "Scaled", &["0 -> 1"]).await;

    env.pods.set_load("db", 5.0);
    env.wait_replicas("db", 3, TIMEOUT, replicas).await;
    // The real StatefulSet controller made db-0..2; serve mode lists exactly them, never the stray pod.
    wait_for(TIMEOUT, "the slice to list the StatefulSet's 3 pods", async || {
        let ips = env.slice_addresses("db").await?;
        let pods = env.ready_pod_ips("app=db").await;
        if ips.len() == 3 && ips == pods { Ok(()) } else { Err(format!("slice {ips:?}, pods {pods:?}")) }
    })
    .await;
    wait_for(TIMEOUT, "the status annotations on the StatefulSet", async || {
        let set = sets.get("db").await.map_err(|e| e.to_string())?;
        let a = set.metadata.annotations.unwrap_or_default();
        match (a.get("status.ebb.dev/desired"), a.get("status.ebb.dev/mode")) {
            (Some(d), Some(m)) if d == "3" && m == "serve" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // `ebb status` lists it beside Deployments, with its kind (found through its public Service).
    let kubeconfig = require::control_plane().unwrap().kubeconfig_path().to_owned();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["status", "-o", "wide", "-n", env.ns.name(), "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    let row = table.lines().find(|l| l.starts_with(&format!("{}/db ", env.ns.name()))).unwrap_or_else(|| {
        panic!("no row for the StatefulSet: {table}{}", String::from_utf8_lossy(&status.stderr))
    });
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!((cells[1], cells[7]), ("3", "statefulsets.apps"), "{table}");

    env.pods.set_load("db", 0.0);
    env.wait_replicas("db", 0, Duration::from_secs(90), replicas).await;
    assert_eq!(env.slice_addresses("db").await.unwrap(), activators, "at zero the slice lists the activator");
    env.stop().await;
}

/// The custom kind: a KubeInfer-shaped resource that counts instances in `spec.replicas` and reports its
/// pods' selector in `status.selector`, served through the scale subresource.
const GROUP: &str = "serving.example.com";

/// The kind as the test serves it.
const INFERENCE: ScalableKind = ScalableKind {
    group: GROUP,
    kind: "InferenceService",
    plural: "inferenceservices",
    selector_path: ".status.selector",
};

/// Plays the custom resource's controller once: one pod per instance (`NAME-I`, labelled as its
/// selector says), surplus pods deleted, `status` written.
async fn play_controller(admin: &Client, ns: &str, name: &str) -> Result<(), String> {
    let selector = format!("ebb.dev/service={name},{GROUP}/instance-of={name}");
    let round = INFERENCE.round(admin, ns, name, &selector).await?;
    let want = round.replicas();
    for i in 0..want {
        let pod_name = format!("{name}-{i}");
        if round.has_pod(&pod_name) {
            continue;
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod_name, "labels": {"ebb.dev/service": name, format!("{GROUP}/instance-of"): name}},
            "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
        }))
        .unwrap();
        round.create(&pod).await?;
    }
    round
        .delete_unless(|pod| {
            let index = pod.metadata.name.as_deref().and_then(|n| n.rsplit('-').next()?.parse::<i64>().ok());
            index.is_none_or(|i| i < want)
        })
        .await?;
    round.write_status(json!({"replicas": want, "selector": selector})).await
}

/// A custom resource with a scale subresource: before the autoscaler holds the kind's RBAC it says so on
/// the ConfigMap and leaves the kind alone; with exactly `manifests/scale-targets/custom` it scales the
/// object through `inferenceservices/scale` from zero and back, finding the pods by the selector the scale
/// subresource reports.
#[tokio::test]
async fn a_custom_resource_is_scaled_through_its_scale_subresource_with_the_documented_rbac() {
    let kind = format!("inferenceservices.{GROUP}");
    let Some(env) = Env::start("st-crd", &kind, None).await else { return };
    INFERENCE.install(&env.admin).await;
    let objects: Api<DynamicObject> = Api::namespaced_with(env.admin.clone(), &env.ns, &INFERENCE.resource());
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "InferenceService",
        "metadata": {"name": "llm", "labels": {"ebb.dev/service": "llm"}, "annotations": annotations()},
        "spec": {"replicas": 0},
    }))
    .unwrap();
    wait_for(TIMEOUT, "the CRD to be served", async || objects.create(&PostParams::default(), &object).await)
        .await;

    // Without the kind's RBAC: reported on the ConfigMap, nothing scaled.
    env.wait_event("config-autoscaler", "ScaleTargetUnavailable", &[&kind, "manifests/scale-targets/"]).await;

    grant_from(&env.admin, &env.ns, "ebb-autoscaler", "manifests/scale-targets/custom").await;
    let controller_task = {
        let (admin, ns) = (env.admin.clone(), env.ns.name().to_owned());
        tokio::spawn(async move {
            loop {
                if let Err(e) = play_controller(&admin, &ns, "llm").await {
                    eprintln!("the test's controller: {e}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Discovery is retried every 30 s after a refusal; then the public Service points at the activator.
    let activators = env.ready_pod_ips("app.kubernetes.io/component=activator").await;
    wait_for(Duration::from_secs(90), "the slice to list the activator at zero", async || {
        let ips = env.slice_addresses("llm").await?;
        if !ips.is_empty() && ips == activators { Ok(()) } else { Err(format!("{ips:?}")) }
    })
    .await;

    let replicas = async || {
        let object = objects.get("llm").await.map_err(|e| e.to_string())?;
        Ok(object.data["spec"]["replicas"].as_i64().unwrap_or(-1))
    };
    env.wake("llm").await;
    env.wait_replicas("llm", 1, TIMEOUT, replicas).await;
    env.wait_event("llm", "Scaled", &["0 -> 1"]).await;
    env.pods.set_load("llm", 5.0);
    env.wait_replicas("llm", 3, TIMEOUT, replicas).await;
    wait_for(TIMEOUT, "the slice to list the 3 instances' pods", async || {
        let ips = env.slice_addresses("llm").await?;
        let pods = env.ready_pod_ips(&format!("{GROUP}/instance-of=llm")).await;
        if ips.len() == 3 && ips == pods { Ok(()) } else { Err(format!("slice {ips:?}, pods {pods:?}")) }
    })
    .await;
    env.pods.set_load("llm", 0.0);
    env.wait_replicas("llm", 0, Duration::from_secs(90), replicas).await;
    controller_task.abort();
    env.stop().await;
}

/// The whole path with a StatefulSet: ebb installed from `manifests/` plus `manifests/scale-targets/
/// statefulsets`; the chat example written as a StatefulSet; its pods, made by the real StatefulSet
/// controller, get the queue-proxy from the admission webhook (found by their label, as a StatefulSet's pods
/// have no ReplicaSet); idle it goes to zero, and a burst of completions through a gateway wakes it and
/// all succeed; idle again, back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulsets_pods_get_the_sidecar_and_serve_from_zero_through_the_activator() {
    let config = [
        ("allow-zero-initial-scale", "true"),
        ("stable-window", "6s"),
        ("scale-to-zero-grace-period", "2s"),
        ("scale-target-kinds", "deployments.apps, statefulsets.apps"),
    ];
    let Some(cluster) = Cluster::install("st-e2e", &config).await else { return };
    grant_from(&cluster.admin, &cluster.system, "ebb-autoscaler", "manifests/scale-targets/statefulsets")
        .await;
    let objects = render_in(&in_repo("manifests/examples/chat"), &cluster.apps).expect("render chat");
    let mut set = find(&objects, "Deployment", "chat").expect("the chat Deployment").clone();
    set["kind"] = json!("StatefulSet");
    set["spec"]["serviceName"] = json!("chat-pods");
    set["spec"]["podManagementPolicy"] = json!("Parallel");
    set["metadata"]["annotations"]["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] =
        json!("0s");
    set["metadata"]["annotations"]["autoscaling.knative.dev/window"] = json!("6s");
    set["spec"]["template"]["spec"]["containers"][0]["args"] = json!([
        "--model",
        "demo",
        "--startup-delay",
        "1s",
        "--tokens-per-second",
        "200",
        "--concurrency",
        "8"
    ]);
    let set: StatefulSet = serde_json::from_value(set).expect("a StatefulSet");
    let sets: Api<StatefulSet> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    sets.create(&PostParams::default(), &set).await.expect("create the StatefulSet");

    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    let pod = wait_for(WAIT, "chat-0 with the queue-proxy", async || {
        let pod = pods.get("chat-0").await.map_err(|e| e.to_string())?;
        let names: Vec<String> =
            pod.spec.iter().flat_map(|s| &s.containers).map(|c| c.name.clone()).collect();
        if names.iter().any(|n| n == "queue-proxy") { Ok(pod) } else { Err(format!("containers {names:?}")) }
    })
    .await;
    let owner = pod.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        owner.first().map(|o| o.kind.as_str()),
        Some("StatefulSet"),
        "made by the StatefulSet controller"
    );

    let replicas = async || {
        let set = sets.get("chat").await.map_err(|e| e.to_string())?;
        Ok::<_, String>(set.spec.and_then(|s| s.replicas).unwrap_or(1))
    };
    wait_for(Duration::from_secs(120), "chat idle at zero", async || {
        let r = replicas().await?;
        if r == 0 { Ok(()) } else { Err(format!("{r} replicas")) }
    })
    .await;
    cluster.wait_path("chat", "proxy", async || cluster.activator_endpoints().await).await;
    let gateway = cluster.gateway("chat").await;
    let http = http_client();
    let requests = (0..20).map(|_| {
        let (http, addr) = (http.clone(), gateway.addr());
        tokio::spawn(async move { complete(&http, addr).await })
    });
    let failed = failed_completions(requests).await;
    assert!(failed.is_empty(), "every request from zero is served: {failed:?}");
    assert!(replicas().await.unwrap() >= 1);
    wait_for(Duration::from_secs(120), "chat back at zero", async || {
        let r = replicas().await?;
        if r == 0 { Ok(()) } else { Err(format!("{r} replicas")) }
    })
    .await;
}
