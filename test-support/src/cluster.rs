//! An ebb cluster for end-to-end tests: ebb-system installed from `manifests/` and run as
//! real processes of the `ebb` binary under test by the node emulator (each pod on its own 127.0.0.N, each
//! component with its ServiceAccount's token, so the manifests' RBAC is what they get), the example service
//! `manifests/examples/chat` (`ebb demo-model` with its queue-proxy sidecar), and closed-loop load through a
//! test gateway ([`super::gateway::Gateway`]).
//!
//! Each [`Cluster`] installs ebb-system in a namespace of its own (its cluster-wide RBAC renamed with the
//! namespace as suffix, and the components restricted to the test's service namespace with
//! `EBB_WATCH_NAMESPACES`, as an overlay would), so tests neither share nor disturb components. The
//! autoscaling windows are shortened through `config-autoscaler` and the service's annotations.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;
use kube::{Api, Client};
use serde_json::{Value, json};

use super::forward::ServiceForwarder;
use super::gateway::{Gateway, slice_now};
use super::load::Load;
use super::manifests::{find, is_namespaced, kind, name, render_in};
use super::paths::{ebb, in_repo};
use super::process_runtime::{ProcessRuntime, RuntimeLogs};
use super::require;
use super::{NodeEmulator, Readiness, TestNamespace, wait_for};
/// Waiting for processes to start, pods to become Ready, decisions to be made.
pub const WAIT: Duration = Duration::from_secs(90);
/// The completion every request asks for (a few tokens: the test is about routing, not generation).
pub const COMPLETION: &str = r#"{"model":"demo","prompt":"hello there","max_tokens":4}"#;

/// ebb-system and an application namespace, with the node running both.
pub struct Cluster {
    /// An admin client.
    pub admin: Client,
    /// The namespace ebb-system is installed in.
    pub system: TestNamespace,
    /// The application namespace, where services are deployed.
    pub apps: TestNamespace,
    /// The pods' logs and unexpected exits; [`RuntimeLogs::kill`] crashes a container.
    pub logs: RuntimeLogs,
    _node: NodeEmulator,
    /// Kinds of `manifests/` this API server does not serve, which were not installed.
    pub skipped: Vec<String>,
    /// The admission webhook's address for the API server (its Service, forwarded).
    pub webhook: ServiceForwarder,
    /// The name of this installation's MutatingWebhookConfiguration (cluster-wide, so renamed).
    pub webhook_configuration: String,
}

/// The label that puts an application namespace under one installation's webhook: the configurations of
/// the installations sharing the test control plane each select their own namespace by it (Kubernetes 1.20
/// has no `kubernetes.io/metadata.name` label yet).
pub const WEBHOOK_NAMESPACE_LABEL: &str = "ebb.dev/e2e-webhook";

impl Cluster {
    /// Installs `manifests/` into a fresh namespace with `config` added to `config-autoscaler`, runs its
    /// pods, and waits for the two autoscalers and the two activators to be Ready. `None` when there is no
    /// control plane to run on ([`require::control_plane`] says so): the test returns.
    pub async fn install(prefix: &str, config: &[(&str, &str)]) -> Option<Cluster> {
        Cluster::install_with(prefix, config, &[]).await
    }

    /// [`Cluster::install`] with `autoscaler_env` added to the autoscaler's environment (say, short
    /// certificate lifetimes for the webhook).
    pub async fn install_with(
        prefix: &str,
        config: &[(&str, &str)],
        autoscaler_env: &[(&str, &str)],
    ) -> Option<Cluster> {
        let cp = require::control_plane()?;
        let admin = cp.client().await;
        let system = TestNamespace::create(&admin, &format!("{prefix}-sys")).await;
        let apps = TestNamespace::create(&admin, &format!("{prefix}-app")).await;
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        let label = json!({"metadata": {"labels": {WEBHOOK_NAMESPACE_LABEL: system.name()}}});
        namespaces
            .patch(&apps, &PatchParams::default(), &Patch::Merge(label))
            .await
            .expect("label the namespace");
        let webhook = ServiceForwarder::start(&admin, &system, "ebb-webhook").await;
        let webhook_configuration = format!("ebb-queue-proxy-injector-{system}");
        let runtime = ProcessRuntime::new(ebb(), cp).probe_period_cap(Duration::from_millis(200));
        let logs = runtime.logs();
        let node = NodeEmulator::builder()
            .namespace(&system)
            .namespace(&apps)
            .readiness(Readiness::Manual)
            .runtime(runtime)
            .start(&admin)
            .await;
        let mut objects = render_in(&in_repo("manifests"), &system).expect("render manifests/");
        for object in &mut objects {
            overlay(object, &system, &apps, config);
            webhook_overlay(object, &system, webhook.addr(), autoscaler_env);
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
        let cluster =
            Cluster { admin, system, apps, logs, _node: node, skipped, webhook, webhook_configuration };
        for component in ["autoscaler", "activator"] {
            cluster
                .wait_ready_pods(&cluster.system, &format!("app.kubernetes.io/component={component}"), 2)
                .await;
        }
        cluster.wait_webhook().await;
        Some(cluster)
    }

    /// Waits until the API server calls the webhook successfully: the leader wrote the caBundle, and a
    /// labelled pod (created as a dry run, so nothing is left behind) is admitted.
    pub async fn wait_webhook(&self) {
        let configurations: Api<MutatingWebhookConfiguration> = Api::all(self.admin.clone());
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), &self.apps);
        let probe: Pod = serde_json::from_value(json!({
            "metadata": {"generateName": "webhook-probe-", "labels": {"ebb.dev/service": "probe"}},
            "spec": {"containers": [{"name": "probe", "image": "ghcr.io/ebb-dev/ebb:0.1.0"}]},
        }))
        .unwrap();
        wait_for(WAIT, "the webhook to admit a labelled pod", async || {
            let configuration =
                configurations.get(&self.webhook_configuration).await.map_err(|e| e.to_string())?;
            let written = configuration
                .webhooks
                .iter()
                .flatten()
                .any(|w| w.client_config.ca_bundle.as_ref().is_some_and(|b| !b.0.is_empty()));
            if !written {
                return Err("no caBundle yet".to_owned());
            }
            let dry_run = PostParams { dry_run: true, ..Default::default() };
            pods.create(&dry_run, &probe).await.map(drop).map_err(|e| e.to_string())
        })
        .await;
    }

    /// Waits for `count` Ready pods matching `selector` in `namespace`; returns their IPs.
    pub async fn wait_ready_pods(&self, namespace: &str, selector: &str, count: usize) -> Vec<String> {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), namespace);
        wait_for(WAIT, &format!("{count} Ready pods {selector} in {namespace}"), async || {
            let ips = ready_ips(&pods, selector).await?;
            if ips.len() == count { Ok(ips) } else { Err(format!("ready: {ips:?}")) }
        })
        .await
    }

    /// [`Self::deploy_chat`] as the scaling scenarios want it: 6 s windows, no pod retention, no burst capacity
    /// held in reserve (the activator leaves the path as soon as pods are warm), at most 4 pods, and a model
    /// that takes 1 s to start and serves 8 requests at once.
    pub async fn deploy_scaling_chat(&self, name: &str) {
        let annotations = [
            ("autoscaling.knative.dev/window", "6s"),
            ("autoscaling.knative.dev/scale-to-zero-pod-retention-period", "0s"),
            ("autoscaling.knative.dev/target-burst-capacity", "0"),
            ("autoscaling.knative.dev/max-scale", "4"),
        ];
        let args =
            ["--model", "demo", "--startup-delay", "1s", "--tokens-per-second", "200", "--concurrency", "8"];
        self.deploy_chat(name, &annotations, &args).await;
    }

    /// A gateway for service `name`, once it follows a slice with endpoints.
    pub async fn gateway(&self, name: &str) -> Gateway {
        let gateway = Gateway::start(&self.admin, &self.apps, name).await;
        wait_for(WAIT, "the gateway to follow the slice", async || {
            if gateway.endpoints().is_empty() { Err("no endpoints") } else { Ok(()) }
        })
        .await;
        gateway
    }

    /// Creates the example service `manifests/examples/chat` in the application namespace as `name`, with
    /// `annotations` added and the model's `args` replaced.
    pub async fn deploy_chat(&self, name: &str, annotations: &[(&str, &str)], args: &[&str]) {
        let objects = render_in(&in_repo("manifests/examples/chat"), &self.apps).expect("render chat");
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

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.admin.clone(), &self.apps)
    }

    pub async fn replicas(&self, name: &str) -> Result<i32, String> {
        let d = self.deployments().get(name).await.map_err(|e| e.to_string())?;
        Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
    }

    pub async fn wait_replicas(&self, name: &str, what: &str, want: impl Fn(i32) -> bool) -> i32 {
        wait_for(WAIT, &format!("{name}: replicas {what}"), async || {
            let replicas = self.replicas(name).await?;
            if want(replicas) { Ok(replicas) } else { Err(format!("replicas {replicas}")) }
        })
        .await
    }

    /// The addresses of the slice of service `name` (sorted).
    pub async fn slice(&self, name: &str) -> Result<Vec<SocketAddr>, String> {
        slice_now(&self.admin, &self.apps, name).await
    }

    /// The activators' data addresses (sorted), as the slice lists them in proxy mode.
    pub async fn activator_endpoints(&self) -> Vec<SocketAddr> {
        let ips = self.wait_ready_pods(&self.system, "app.kubernetes.io/component=activator", 2).await;
        let mut out: Vec<SocketAddr> = ips.iter().map(|ip| format!("{ip}:8012").parse().unwrap()).collect();
        out.sort();
        out
    }

    /// Waits for the public Service's mode annotation to be `mode` and its slice to list `endpoints`.
    pub async fn wait_path(&self, name: &str, mode: &str, endpoints: impl AsyncFn() -> Vec<SocketAddr>) {
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
    pub async fn events(&self, name: &str, reason: &str) -> Vec<Event> {
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
pub fn overlay(object: &mut Value, system: &str, apps: &str, config: &[(&str, &str)]) {
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
                    var["value"] = json!("info,ebb_autoscaler=debug,ebb_activator=debug,ebb::load=trace");
                }
            }
        }
        _ => {}
    }
}

/// The test's overlay for the admission webhook: the configuration renamed for the installation (with the
/// one rule that names it), limited to the installation's application namespace, and registered with
/// `clientConfig.url` on the forwarder at `forwarder` (127.0.0.1, a name its certificate is made for);
/// `autoscaler_env` added to the autoscaler's environment.
pub fn webhook_overlay(
    object: &mut Value,
    system: &str,
    forwarder: SocketAddr,
    autoscaler_env: &[(&str, &str)],
) {
    let configuration = format!("ebb-queue-proxy-injector-{system}");
    match kind(object) {
        "MutatingWebhookConfiguration" => {
            object["metadata"]["name"] = json!(configuration);
            for webhook in object["webhooks"].as_array_mut().into_iter().flatten() {
                let path = webhook["clientConfig"]["service"]["path"].as_str().unwrap_or("/").to_owned();
                webhook["clientConfig"] = json!({"url": format!("https://{forwarder}{path}")});
                webhook["namespaceSelector"] = json!({"matchLabels": {WEBHOOK_NAMESPACE_LABEL: system}});
            }
        }
        "ClusterRole" => {
            for rule in object["rules"].as_array_mut().into_iter().flatten() {
                if rule["resources"] == json!(["mutatingwebhookconfigurations"]) {
                    rule["resourceNames"] = json!([configuration]);
                }
            }
        }
        "Deployment" if name(object) == "ebb-autoscaler" => {
            let env = object["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array_mut()
                .expect("the autoscaler sets env");
            for var in env.iter_mut().filter(|v| v["name"] == "EBB_WEBHOOK_CONFIGURATION") {
                var["value"] = json!(configuration);
            }
            env.push(json!({"name": "EBB_WEBHOOK_HOSTS", "value": "127.0.0.1"}));
            for (key, value) in autoscaler_env {
                env.push(json!({"name": key, "value": value}));
            }
        }
        _ => {}
    }
}

/// Renames the example service `chat` to `name` (Deployment name, `ebb.dev/service` label and selector, the
/// sidecar's EBB_SERVICE_NAME).
pub fn rename_service(deployment: &mut Value, name: &str) {
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
pub struct Unserved(pub String);

/// Creates `object` with `admin`; `Err` only for a kind the server does not serve.
pub async fn apply(admin: &Client, object: Value) -> Result<(), Unserved> {
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
pub async fn ready_ips(pods: &Api<Pod>, selector: &str) -> Result<Vec<String>, String> {
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
pub async fn complete(
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

pub fn http_client() -> HttpClient<HttpConnector, Full<Bytes>> {
    HttpClient::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http()
}

/// Waits for `requests` (tasks of [`complete`]) and lists those not answered with a completion.
pub async fn failed_completions(
    requests: impl IntoIterator<Item = tokio::task::JoinHandle<Result<(u16, String), String>>>,
) -> Vec<String> {
    futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|answer| answer.expect("a request task"))
        .filter_map(|answer| match answer {
            Ok((status, body)) if is_completion(status, &body) => None,
            Ok((status, body)) => Some(format!("{status}: {body}")),
            Err(e) => Some(e),
        })
        .collect()
}

/// A completion answered by the demo model (an OpenAI-style completion object).
pub fn is_completion(status: u16, body: &str) -> bool {
    status == 200 && body.contains("\"text_completion\"")
}

/// Closed-loop load through the gateway: `workers` clients sending completions one after the other.
pub fn gateway_load(gateway: SocketAddr, workers: usize) -> Load {
    let http = http_client();
    Load::start(workers, move || {
        let http = http.clone();
        async move {
            match complete(&http, gateway).await {
                Ok((status, body)) if is_completion(status, &body) => Ok(()),
                Ok((status, body)) => Err(format!("{status}: {body}")),
                Err(e) => Err(e),
            }
        }
    })
}
