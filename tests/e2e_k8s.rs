//! End to end on a real control plane (issue 8, part 6): ebb-system installed from `manifests/` and run as
//! real processes of the `ebb` binary under test by the node emulator (each pod on its own 127.0.0.N, each
//! component with its ServiceAccount's token, so the manifests' RBAC is what they get), the example service
//! `manifests/examples/chat` (`ebb demo-model` with its queue-proxy sidecar), and a test gateway following
//! the public Service's EndpointSlice in place of an ingress.
//!
//! Each test installs ebb-system in a namespace of its own (its cluster-wide RBAC renamed with the
//! namespace as suffix, and the components restricted to the test's service namespace with
//! `EBB_WATCH_NAMESPACES`, as an overlay would), so tests neither share nor disturb components. The
//! autoscaling windows are shortened through `config-autoscaler` and the service's annotations.
//!
//! Not here: the autoscaler's token cannot read Secrets or delete pods (tests/manifests_k8s.rs checks it).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;
use kube::{Api, Client};
use serde_json::{Value, json};
use support::gateway::{Gateway, slice_now};
use support::manifests::{find, is_namespaced, kind, manifests_dir, name, render_in};
use support::process_runtime::{ProcessRuntime, RuntimeLogs};
use support::prometheus::{Prometheus, alert_rules, cluster_only, dashboard_expressions, signal, substitute};
use support::{ControlPlane, NodeEmulator, Readiness, TestNamespace, wait_for};

/// Waiting for processes to start, pods to become Ready, decisions to be made.
const WAIT: Duration = Duration::from_secs(90);
/// The completion every request asks for (a few tokens: the test is about routing, not generation).
const COMPLETION: &str = r#"{"model":"demo","prompt":"hello there","max_tokens":4}"#;

/// ebb-system and an application namespace, with the node running both.
struct Cluster {
    admin: Client,
    system: TestNamespace,
    apps: TestNamespace,
    logs: RuntimeLogs,
    _node: NodeEmulator,
    /// Kinds of `manifests/` this API server does not serve, which were not installed.
    skipped: Vec<String>,
}

impl Cluster {
    /// Installs `manifests/` into a fresh namespace with `config` added to `config-autoscaler`, runs its
    /// pods, and waits for the two autoscalers and the two activators to be Ready.
    async fn install(prefix: &str, config: &[(&str, &str)]) -> Cluster {
        let cp = ControlPlane::shared();
        let admin = cp.client().await;
        let system = TestNamespace::create(&admin, &format!("{prefix}-sys")).await;
        let apps = TestNamespace::create(&admin, &format!("{prefix}-app")).await;
        let runtime =
            ProcessRuntime::new(env!("CARGO_BIN_EXE_ebb"), cp).probe_period_cap(Duration::from_millis(200));
        let logs = runtime.logs();
        let node = NodeEmulator::builder()
            .namespace(&system)
            .namespace(&apps)
            .readiness(Readiness::Manual)
            .runtime(runtime)
            .start(&admin)
            .await;
        let mut objects = render_in(&manifests_dir("manifests"), &system).expect("render manifests/");
        for object in &mut objects {
            overlay(object, &system, &apps, config);
        }
        let mut skipped = Vec::new();
        for object in objects {
            if kind(&object) == "Namespace" {
                continue; // The test's namespace stands for it.
            }
            match apply(&admin, object.clone()).await {
                Ok(()) => {}
                Err(Unserved(what)) => skipped.push(what),
            }
        }
        let cluster = Cluster { admin, system, apps, logs, _node: node, skipped };
        for component in ["autoscaler", "activator"] {
            cluster
                .wait_ready_pods(&cluster.system, &format!("app.kubernetes.io/component={component}"), 2)
                .await;
        }
        cluster
    }

    /// Waits for `count` Ready pods matching `selector` in `namespace`; returns their IPs.
    async fn wait_ready_pods(&self, namespace: &str, selector: &str, count: usize) -> Vec<String> {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), namespace);
        wait_for(WAIT, &format!("{count} Ready pods {selector} in {namespace}"), async || {
            let ips = ready_ips(&pods, selector).await?;
            if ips.len() == count { Ok(ips) } else { Err(format!("ready: {ips:?}")) }
        })
        .await
    }

    /// Creates the example service `manifests/examples/chat` in the application namespace as `name`, with
    /// `annotations` added and the model's `args` replaced.
    async fn deploy_chat(&self, name: &str, annotations: &[(&str, &str)], args: &[&str]) {
        let objects = render_in(&manifests_dir("manifests/examples/chat"), &self.apps).expect("render chat");
        let mut deployment = find(&objects, "Deployment", "chat").expect("the chat Deployment").clone();
        rename_service(&mut deployment, name);
        for (key, value) in annotations {
            deployment["metadata"]["annotations"][*key] = json!(value);
        }
        let model = &mut deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(model["name"], "model", "the example's first container is the model");
        model["args"] = json!(args);
        let deployment: Deployment = serde_json::from_value(deployment).expect("a Deployment");
        self.deployments().create(&PostParams::default(), &deployment).await.expect("create the service");
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.admin.clone(), &self.apps)
    }

    async fn replicas(&self, name: &str) -> Result<i32, String> {
        let d = self.deployments().get(name).await.map_err(|e| e.to_string())?;
        Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
    }

    async fn wait_replicas(&self, name: &str, what: &str, want: impl Fn(i32) -> bool) -> i32 {
        wait_for(WAIT, &format!("{name}: replicas {what}"), async || {
            let replicas = self.replicas(name).await?;
            if want(replicas) { Ok(replicas) } else { Err(format!("replicas {replicas}")) }
        })
        .await
    }

    /// The addresses of the slice of service `name` (sorted).
    async fn slice(&self, name: &str) -> Result<Vec<SocketAddr>, String> {
        slice_now(&self.admin, &self.apps, name).await
    }

    /// The activators' data addresses (sorted), as the slice lists them in proxy mode.
    async fn activator_endpoints(&self) -> Vec<SocketAddr> {
        let ips = self.wait_ready_pods(&self.system, "app.kubernetes.io/component=activator", 2).await;
        let mut out: Vec<SocketAddr> = ips.iter().map(|ip| format!("{ip}:8012").parse().unwrap()).collect();
        out.sort();
        out
    }

    /// Waits for the public Service's mode annotation to be `mode` and its slice to list `endpoints`.
    async fn wait_path(&self, name: &str, mode: &str, endpoints: impl AsyncFn() -> Vec<SocketAddr>) {
        let services: Api<Service> = Api::namespaced(self.admin.clone(), &self.apps);
        wait_for(WAIT, &format!("{name}: {mode} mode"), async || {
            let service = services.get(name).await.map_err(|e| e.to_string())?;
            let annotations = service.metadata.annotations.unwrap_or_default();
            let current = annotations.get("status.ebb.dev/mode").cloned().unwrap_or_default();
            let (slice, want) = (self.slice(name).await?, endpoints().await);
            if current == mode && slice == want && !want.is_empty() {
                Ok(())
            } else {
                Err(format!("mode {current:?}, slice {slice:?}, want {want:?}"))
            }
        })
        .await
    }

    /// The Events about Deployment `name` with `reason`.
    async fn events(&self, name: &str, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.admin.clone(), &self.apps);
        let list = events.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
        list.into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("unexpected container exits: {:?}", self.logs.exits());
            eprintln!("{}", self.logs.tails("", 40));
        }
    }
}

/// The test's overlay on `manifests/`: cluster-wide RBAC renamed for the namespace, the components watching
/// only the application namespace, and `config` added to `config-autoscaler`.
fn overlay(object: &mut Value, system: &str, apps: &str, config: &[(&str, &str)]) {
    let suffixed = |n: &str| format!("{n}-{system}");
    match kind(object) {
        "ClusterRole" => object["metadata"]["name"] = json!(suffixed(name(object))),
        "ClusterRoleBinding" => {
            object["metadata"]["name"] = json!(suffixed(name(object)));
            let role = object["roleRef"]["name"].as_str().unwrap_or_default().to_string();
            object["roleRef"]["name"] = json!(suffixed(&role));
        }
        "ConfigMap" if name(object) == "config-autoscaler" => {
            for (key, value) in config {
                object["data"][*key] = json!(value);
            }
        }
        "Deployment" => {
            for container in
                object["spec"]["template"]["spec"]["containers"].as_array_mut().into_iter().flatten()
            {
                let env = container["env"].as_array_mut().expect("the ebb containers set env");
                env.push(json!({"name": "EBB_WATCH_NAMESPACES", "value": apps}));
                // The components' debug logs help when a test fails.
                for var in env.iter_mut().filter(|v| v["name"] == "RUST_LOG") {
                    var["value"] = json!("info,ebb_autoscaler=debug,ebb_activator=debug");
                }
            }
        }
        _ => {}
    }
}

/// Renames the example service `chat` to `name` (Deployment name, `ebb.dev/service` label and selector, the
/// sidecar's EBB_SERVICE_NAME).
fn rename_service(deployment: &mut Value, name: &str) {
    deployment["metadata"]["name"] = json!(name);
    deployment["metadata"]["labels"]["ebb.dev/service"] = json!(name);
    deployment["spec"]["selector"]["matchLabels"]["ebb.dev/service"] = json!(name);
    deployment["spec"]["template"]["metadata"]["labels"]["ebb.dev/service"] = json!(name);
    for container in deployment["spec"]["template"]["spec"]["containers"].as_array_mut().into_iter().flatten()
    {
        for var in container["env"].as_array_mut().into_iter().flatten() {
            if var["name"] == "EBB_SERVICE_NAME" {
                var["value"] = json!(name);
            }
        }
    }
}

/// An object kind the API server does not serve (say `policy/v1` PodDisruptionBudget on v1.20).
struct Unserved(String);

/// Creates `object` with `admin`; `Err` only for a kind the server does not serve.
async fn apply(admin: &Client, object: Value) -> Result<(), Unserved> {
    let (group, version) = match object["apiVersion"].as_str().unwrap_or_default().split_once('/') {
        Some((group, version)) => (group.to_string(), version.to_string()),
        None => (String::new(), object["apiVersion"].as_str().unwrap_or_default().to_string()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, kind(&object));
    let Ok((resource, _)) = pinned_kind(admin, &gvk).await else {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        return Err(Unserved(format!("{api_version} {} {}", kind(&object), name(&object))));
    };
    let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(ns) if is_namespaced(kind(&object)) => Api::namespaced_with(admin.clone(), ns, &resource),
        _ => Api::all_with(admin.clone(), &resource),
    };
    let dynamic: DynamicObject = serde_json::from_value(object.clone()).expect("an object");
    api.create(&PostParams::default(), &dynamic)
        .await
        .unwrap_or_else(|e| panic!("creating {} {}: {e}", kind(&object), name(&object)));
    Ok(())
}

/// The IPs of the Ready pods matching `selector` (sorted), except those being deleted.
async fn ready_ips(pods: &Api<Pod>, selector: &str) -> Result<Vec<String>, String> {
    let list = pods.list(&ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?;
    let mut ips: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    ips.sort();
    Ok(ips)
}

/// Sends one completion through the gateway; `(status, body)`.
async fn complete(
    http: &HttpClient<HttpConnector, Full<Bytes>>,
    gateway: SocketAddr,
) -> Result<(u16, String), String> {
    let request = http::Request::post(format!("http://{gateway}/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(COMPLETION.as_bytes())))
        .unwrap();
    let response = http.request(request).await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn http_client() -> HttpClient<HttpConnector, Full<Bytes>> {
    HttpClient::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http()
}

/// A completion answered by the demo model (an OpenAI-style completion object).
fn is_completion(status: u16, body: &str) -> bool {
    status == 200 && body.contains("\"text_completion\"")
}

/// Keeps a failure: all of them are counted, the first 10 are kept whole (the rest as a marker).
fn keep(failures: &std::sync::Mutex<Vec<String>>, failure: String) {
    let mut failures = failures.lock().unwrap();
    let failure = if failures.len() < 10 { failure } else { String::from("...") };
    failures.push(failure);
}

/// Closed-loop load: `workers` clients sending completions one after the other until stopped. Counts
/// successes and keeps every failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU32>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gateway: SocketAddr, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok: Arc<AtomicU32> = Arc::default();
        let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let http = http_client();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failures, http) =
                    (stop.clone(), Arc::clone(&ok), Arc::clone(&failures), http.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match complete(&http, gateway).await {
                            Ok((status, body)) if is_completion(status, &body) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((status, body)) => keep(&failures, format!("{status}: {body}")),
                            Err(e) => keep(&failures, e),
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failures, tasks }
    }

    fn ok(&self) -> u32 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops and returns (successes, failures).
    async fn finish(self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a load worker");
        }
        (self.ok.load(Ordering::Relaxed), self.failures.lock().unwrap().clone())
    }
}

/// Items (a) and (b): from zero, 100 concurrent requests through the gateway and the activators all succeed;
/// sustained load scales the service up with the slice in serve mode (the pods); idle, it goes back to zero
/// with the slice in proxy mode (the activators). No component crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_through_the_activator_scale_up_under_load_and_back_to_zero() {
    let cluster = Cluster::install(
        "e2e-cold",
        &[
            ("allow-zero-initial-scale", "true"),
            ("stable-window", "6s"),
            ("scale-to-zero-grace-period", "2s"),
        ],
    )
    .await;
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
    let prometheus = Prometheus::start(&jobs).await;
    cluster
        .deploy_chat(
            "chat",
            &[
                ("autoscaling.knative.dev/window", "6s"),
                ("autoscaling.knative.dev/scale-to-zero-pod-retention-period", "0s"),
                // No burst capacity kept in reserve: the activator leaves the path as soon as pods are warm.
                ("autoscaling.knative.dev/target-burst-capacity", "0"),
                ("autoscaling.knative.dev/max-scale", "4"),
            ],
            &["--model", "demo", "--startup-delay", "1s", "--tokens-per-second", "200", "--concurrency", "8"],
        )
        .await;
    // It starts at one pod and, idle, goes to zero: the public Service in proxy mode, its slice listing
    // the activators.
    cluster.wait_replicas("chat", "= 0 (idle)", |r| r == 0).await;
    cluster.wait_path("chat", "proxy", async || cluster.activator_endpoints().await).await;
    let gateway = Gateway::start(&cluster.admin, &cluster.apps, "chat").await;
    wait_for(WAIT, "the gateway to follow the slice", async || {
        if gateway.endpoints().is_empty() { Err("no endpoints") } else { Ok(()) }
    })
    .await;

    // (a) 100 concurrent requests from zero: the activators hold them until a pod is Ready.
    let http = http_client();
    let requests = (0..100).map(|_| {
        let http = http.clone();
        let addr = gateway.addr();
        tokio::spawn(async move { complete(&http, addr).await })
    });
    let answers = futures::future::join_all(requests).await;
    let failed: Vec<String> = answers
        .into_iter()
        .map(|a| a.expect("a request task"))
        .filter_map(|a| match a {
            Ok((status, body)) if is_completion(status, &body) => None,
            Ok((status, body)) => Some(format!("{status}: {body}")),
            Err(e) => Some(e),
        })
        .collect();
    assert!(failed.is_empty(), "{} of 100 cold-start requests failed: {failed:?}", failed.len());
    let replicas = cluster.replicas("chat").await.unwrap();
    assert!((1..=4).contains(&replicas), "scaled from zero within max-scale: {replicas}");

    // (b) Sustained load (40 clients over 8 per pod at a 70% target): more pods, the slice lists them.
    let load = Load::start(gateway.addr(), 40);
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
        ok + failures.len() as u32
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
    let cluster = Cluster::install("e2e-invalid", &[("stable-window", "6s")]).await;
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
    let cluster =
        Cluster::install("e2e-roll", &[("stable-window", "6s"), ("scale-to-zero-grace-period", "2s")]).await;
    cluster
        .deploy_chat(
            "chat",
            &[
                ("autoscaling.knative.dev/window", "6s"),
                ("autoscaling.knative.dev/scale-to-zero-pod-retention-period", "0s"),
                ("autoscaling.knative.dev/target-burst-capacity", "0"),
                ("autoscaling.knative.dev/max-scale", "4"),
            ],
            &["--model", "demo", "--startup-delay", "1s", "--tokens-per-second", "200", "--concurrency", "8"],
        )
        .await;
    let gateway = Gateway::start(&cluster.admin, &cluster.apps, "chat").await;
    let apps: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    wait_for(WAIT, "the gateway to follow the slice", async || {
        if gateway.endpoints().is_empty() { Err("no endpoints") } else { Ok(()) }
    })
    .await;
    // Steady load: 16 clients over 8 per pod at a 70% target (5.6) want 3 pods; the rollout starts once
    // they are all Ready.
    let load = Load::start(gateway.addr(), 16);
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
