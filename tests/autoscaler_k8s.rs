//! The autoscaler as a Kubernetes controller, against the real v1.20.2 control plane.
//!
//! The controller runs in-process through its library API (`ebb_autoscaler::cluster::ClusterController`), as
//! ServiceAccount `ebb-autoscaler` holding exactly the RBAC of `ebb_autoscaler::cluster::rbac::RULES`:
//! in-process lets each test bind its ports on :0 and read the engine's decisions to wait on them, while the
//! RBAC and every API call are the real ones. (The failover test, which kills processes, runs the real
//! binary: `tests/autoscaler_failover.rs`.) Pods are played by the node emulator with [`FakePods`]:
//! queue-proxy stats on :9090 and activator probes on :8012 of each pod's own loopback address. Stats reach
//! the ingest port in the real wire format with the activator ServiceAccount's token.

use std::collections::BTreeMap;
use std::time::Duration;

use ebb_autoscaler::cluster::{ClusterController, Options};
use ebb_config::ServiceId;
use ebb_test_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::autoscaler::{
    FakePods, activator_frame, grant_autoscaler_rbac, metrics_text, send_stats, start_leading, test_options,
    token_of, wait_event_note,
};
use support::{ControlPlane, NodeEmulator, TestNamespace, require, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

struct Env {
    admin: Client,
    ns: TestNamespace,
    controller: Option<ClusterController>,
    activator_token: String,
    autoscaler_token: String,
    pods: FakePods,
    /// The autoscaler ServiceAccount's client, to start a fresh controller.
    client: Client,
    _emulator: NodeEmulator,
}

impl Env {
    /// `None` when there is no control plane to run on (see [`require::control_plane`]): the test returns.
    async fn start(prefix: &str, config: &[(&str, &str)]) -> Option<Env> {
        Self::start_with(prefix, config, |_| {}).await
    }

    /// [`Self::start`] with the controller's options changed by `tune`.
    async fn start_with(
        prefix: &str,
        config: &[(&str, &str)],
        tune: impl FnOnce(&mut Options),
    ) -> Option<Env> {
        let cp = require::control_plane()?;
        let admin = cp.client().await;
        let ns = TestNamespace::create(&admin, prefix).await;
        grant_autoscaler_rbac(&admin, &ns, "ebb-autoscaler").await;
        let sa_config = cp.service_account_kubeconfig(&admin, &ns, "ebb-autoscaler").await;
        let client = support::k8s::client_from_kubeconfig(&sa_config).await.unwrap();
        let autoscaler_token = token_of(&sa_config);
        let activator_token = token_of(&cp.service_account_kubeconfig(&admin, &ns, "ebb-activator").await);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        wait_for(TIMEOUT, "the autoscaler's RBAC to take effect", async || {
            deployments.list(&ListParams::default()).await.map(drop)
        })
        .await;
        if !config.is_empty() {
            let data: BTreeMap<String, String> =
                config.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some("config-autoscaler".into()),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            Api::<ConfigMap>::namespaced(admin.clone(), &ns)
                .create(&PostParams::default(), &cm)
                .await
                .unwrap();
        }
        let pods = FakePods::default();
        let emulator = NodeEmulator::builder().namespace(&ns).runtime(pods.clone()).start(&admin).await;
        let mut options = test_options(ns.name(), "replica-0");
        tune(&mut options);
        let controller = start_leading(client.clone(), options, TIMEOUT).await;
        Some(Env {
            admin,
            ns,
            controller: Some(controller),
            activator_token,
            autoscaler_token,
            pods,
            client,
            _emulator: emulator,
        })
    }

    /// Stops the controller (releasing the Lease) and starts a fresh one named `identity`, with no memory.
    async fn restart_controller(&mut self, identity: &str) {
        if let Some(controller) = self.controller.take() {
            controller.shutdown().await;
        }
        let options = test_options(self.ns.name(), identity);
        self.controller = Some(start_leading(self.client.clone(), options, TIMEOUT).await);
    }

    fn controller(&self) -> &ClusterController {
        self.controller.as_ref().unwrap()
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    async fn create(&self, name: &str, replicas: i32, annotations: &[(&str, &str)]) {
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"ebb.dev/service": name}, "annotations": annotations},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"ebb.dev/service": name}},
                "template": {
                    "metadata": {"labels": {"ebb.dev/service": name}},
                    "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
                },
            },
        }))
        .unwrap();
        self.deployments().create(&PostParams::default(), &deployment).await.expect("create the Deployment");
    }

    /// Creates `name` with a target of 1 per pod and at most 3 pods, and loads it until it has 3 replicas.
    async fn scale_to_three(&self, name: &str) {
        let annotations = [
            ("autoscaling.knative.dev/target", "1"),
            ("autoscaling.knative.dev/target-utilization-percentage", "100"),
            ("autoscaling.knative.dev/max-scale", "3"),
        ];
        self.create(name, 1, &annotations).await;
        self.pods.set_load(name, 5.0);
        self.wait_replicas(name, 3, TIMEOUT).await;
    }

    async fn replicas(&self, name: &str) -> Result<i32, String> {
        let d = self.deployments().get(name).await.map_err(|e| e.to_string())?;
        Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
    }

    async fn wait_replicas(&self, name: &str, want: i32, timeout: Duration) {
        wait_for(timeout, &format!("{name} at {want} replicas"), async || {
            let replicas = self.replicas(name).await?;
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

    async fn activator_pod(&self) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "activator-0", "labels": {
                "app.kubernetes.io/part-of": "ebb", "app.kubernetes.io/component": "activator"}},
            "spec": {"containers": [{"name": "activator", "image": "example.invalid/activator:1"}]},
        }))
        .unwrap();
        Api::<Pod>::namespaced(self.admin.clone(), &self.ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }

    async fn slice_addresses(&self, name: &str) -> Result<Vec<String>, String> {
        let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "endpointslices");
        let api: Api<DynamicObject> = Api::namespaced_with(self.admin.clone(), &self.ns, &ar);
        let slice = api.get(name).await.map_err(|e| e.to_string())?;
        let mut ips: Vec<String> = slice.data["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
            .collect();
        ips.sort();
        Ok(ips)
    }

    async fn pod_ips(&self, selector: &str) -> Vec<String> {
        let list = Api::<Pod>::namespaced(self.admin.clone(), &self.ns)
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        let mut ips: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ips.sort();
        ips
    }

    async fn stop(mut self) {
        if let Some(controller) = self.controller.take() {
            controller.shutdown().await;
        }
    }
}

/// Items 2, 3, 4 and 6: the ingest authenticates; a stat at zero scales up at once; pod stats scale up
/// further (Normal Events with reasons, status annotations); the EndpointSlice flips from the activator to
/// the pods and back; idle after shortened windows scales to zero only with the activator in the path.
#[tokio::test]
async fn scales_from_zero_on_ingested_stats_up_on_pod_stats_and_back_to_zero() {
    let Some(env) = Env::start(
        "as-scale",
        &[
            ("allow-zero-initial-scale", "true"),
            ("scale-to-zero-grace-period", "2s"),
            ("stable-window", "6s"),
        ],
    )
    .await
    else {
        return;
    };
    // The token cannot read Secrets: the RBAC is no wider than the list.
    let sa = support::k8s::client_from_kubeconfig(
        &ControlPlane::shared().service_account_kubeconfig(&env.admin, &env.ns, "ebb-autoscaler").await,
    )
    .await
    .unwrap();
    match Api::<Secret>::namespaced(sa, &env.ns).list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("the autoscaler's token must not list Secrets: {other:?}"),
    }

    env.activator_pod().await;
    env.create(
        "web",
        0,
        &[
            ("autoscaling.knative.dev/initial-scale", "0"),
            ("autoscaling.knative.dev/target", "1"),
            ("autoscaling.knative.dev/target-utilization-percentage", "100"),
            ("autoscaling.knative.dev/target-burst-capacity", "0"),
            ("autoscaling.knative.dev/max-scale", "3"),
        ],
    )
    .await;
    let activator_ips = wait_for(TIMEOUT, "a ready activator", async || {
        let ips = env.pod_ips("app.kubernetes.io/component=activator").await;
        if ips.is_empty() { Err("none") } else { Ok(ips) }
    })
    .await;
    // The public Service, ebb's, and its slice listing the activator while at zero.
    wait_for(TIMEOUT, "the public Service", async || {
        let svc = Api::<Service>::namespaced(env.admin.clone(), &env.ns)
            .get("web")
            .await
            .map_err(|e| e.to_string())?;
        let labels = svc.metadata.labels.unwrap_or_default();
        let port = &svc.spec.unwrap_or_default().ports.unwrap_or_default()[0];
        if labels.get("app.kubernetes.io/managed-by").map(String::as_str) == Some("ebb") && port.port == 80 {
            Ok(())
        } else {
            Err(format!("{labels:?}"))
        }
    })
    .await;
    wait_for(TIMEOUT, "the slice to list the activator", async || {
        let ips = env.slice_addresses("web").await?;
        if ips == activator_ips { Ok(()) } else { Err(format!("{ips:?}")) }
    })
    .await;

    // The ingest: no token 401, another identity 403, the activator's token accepted.
    let ingest = env.controller().ingest_addr;
    let frame = activator_frame(&env.ns, "web", 1.0);
    assert_eq!(send_stats(ingest, None, std::slice::from_ref(&frame)).await, 401);
    assert_eq!(send_stats(ingest, Some("not-a-token"), std::slice::from_ref(&frame)).await, 401);
    assert_eq!(send_stats(ingest, Some(&env.autoscaler_token), std::slice::from_ref(&frame)).await, 403);
    assert_eq!(env.replicas("web").await.unwrap(), 0, "refused stats must not scale");
    assert_eq!(send_stats(ingest, Some(&env.activator_token), &[frame]).await, 200);
    env.wait_replicas("web", 1, Duration::from_secs(20)).await;
    env.wait_event("web", "Scaled", &["0 -> 1"]).await;

    // Load on the pods: 5 concurrent over a target of 1 -> max-scale 3.
    env.pods.set_load("web", 5.0);
    env.wait_replicas("web", 3, TIMEOUT).await;
    let note = env.wait_event("web", "Scaled", &["-> 3"]).await;
    assert!(note.contains("target"), "the event says why: {note}");
    wait_for(TIMEOUT, "the status annotations", async || {
        let d = env.deployments().get("web").await.map_err(|e| e.to_string())?;
        let a = d.metadata.annotations.unwrap_or_default();
        match (a.get("status.ebb.dev/desired"), a.get("status.ebb.dev/mode"), a.get("status.ebb.dev/reason"))
        {
            (Some(d), Some(m), Some(r)) if d == "3" && m == "serve" && !r.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Serve mode: the slice lists the ready pods.
    wait_for(TIMEOUT, "the slice to list the 3 pods", async || {
        let ips = env.slice_addresses("web").await?;
        let pods = env.pod_ips("ebb.dev/service=web").await;
        if ips.len() == 3 && ips == pods { Ok(()) } else { Err(format!("slice {ips:?}, pods {pods:?}")) }
    })
    .await;

    // Idle: down, then to zero once the activator is back in the path.
    env.pods.set_load("web", 0.0);
    env.wait_replicas("web", 0, Duration::from_secs(90)).await;
    let ips = env.slice_addresses("web").await.unwrap();
    assert_eq!(ips, activator_ips, "at zero the slice lists the activator");
    let svc = Api::<Service>::namespaced(env.admin.clone(), &env.ns).get("web").await.unwrap();
    let annotations = svc.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get("status.ebb.dev/mode").map(String::as_str), Some("proxy"), "{annotations:?}");
    assert!(annotations.contains_key("status.ebb.dev/mode-since"), "{annotations:?}");
    env.stop().await;
}

/// Items 1 and 4: an invalid annotation -> a Warning Event naming key, value and range, replicas untouched;
/// `ebb.dev/paused` -> decisions, but replicas left alone; a foreign Service is left alone and reported.
#[tokio::test]
async fn invalid_annotations_paused_and_foreign_services_are_left_alone() {
    let Some(env) = Env::start("as-invalid", &[]).await else { return };
    env.create("bad", 2, &[("autoscaling.knative.dev/window", "2s")]).await;
    let note = env.wait_event("bad", "InvalidConfiguration", &["autoscaling.knative.dev/window", "2s"]).await;
    assert!(note.contains("6s"), "the accepted range is named: {note}");
    assert_eq!(env.replicas("bad").await.unwrap(), 2);
    assert!(env.controller().autoscaler().decisions(&ServiceId::new(env.ns.name(), "bad")).is_none());

    // Paused with a load that would scale it up: decided on, not applied.
    env.pods.set_load("calm", 10.0);
    env.create("calm", 1, &[("ebb.dev/paused", "true"), ("autoscaling.knative.dev/target", "1")]).await;
    let id = ServiceId::new(env.ns.name(), "calm");
    wait_for(TIMEOUT, "a paused decision that wants more pods", async || {
        let decisions = env.controller().autoscaler().decisions(&id).unwrap_or_default();
        decisions
            .iter()
            .find(|d| d.decider_desired.unwrap_or(0) > 1 && d.reason.to_string().contains("paused"))
            .map(drop)
            .ok_or_else(|| format!("{:?}", decisions.last()))
    })
    .await;
    assert_eq!(env.replicas("calm").await.unwrap(), 1, "a paused Deployment is not scaled");

    // A valid one turning invalid keeps its last configuration.
    env.create("turns", 1, &[("autoscaling.knative.dev/target", "5")]).await;
    let turns = ServiceId::new(env.ns.name(), "turns");
    wait_for(TIMEOUT, "turns to be autoscaled", async || {
        env.controller().autoscaler().decisions(&turns).map(drop).ok_or("not yet")
    })
    .await;
    let patch = json!({"metadata": {"annotations": {"autoscaling.knative.dev/target": "-3"}}});
    env.deployments().patch("turns", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let note = env.wait_event("turns", "InvalidConfiguration", &["target", "-3"]).await;
    assert!(note.contains("last valid configuration stays in force"), "{note}");
    let status = env.controller().autoscaler().status();
    let target = status.iter().find(|s| s.name == "turns").unwrap().target;
    assert!((target - 5.0 * 0.7).abs() < 1e-9, "the old target stays: {target}");

    // A Service of that name that ebb did not create.
    let foreign: Service = serde_json::from_value(json!({
        "metadata": {"name": "taken"},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(env.admin.clone(), &env.ns)
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    env.create("taken", 1, &[]).await;
    env.wait_event("taken", "ServiceNotManaged", &["leaves it alone"]).await;
    let svc = Api::<Service>::namespaced(env.admin.clone(), &env.ns).get("taken").await.unwrap();
    assert!(svc.metadata.labels.is_none(), "the foreign Service is untouched: {:?}", svc.metadata);

    // A pod whose queue-proxy env disagrees with the annotations draws a Warning naming both values.
    let drift: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "drift", "labels": {"ebb.dev/service": "drift"},
            "annotations": {"ebb.dev/container-concurrency": "4"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"ebb.dev/service": "drift"}},
            "template": {
                "metadata": {"labels": {"ebb.dev/service": "drift"},
                    "annotations": {"autoscaling.knative.dev/window": "30s"}},
                "spec": {"containers": [
                    {"name": "app", "image": "example.invalid/app:1"},
                    {"name": "queue-proxy", "image": "example.invalid/queue-proxy:1", "env": [
                        {"name": "EBB_UPSTREAM", "value": "127.0.0.1:8080"},
                        {"name": "EBB_CONTAINER_CONCURRENCY", "value": "2"},
                        {"name": "EBB_QUEUE_DEPTH", "value": "40"},
                    ]},
                ]},
            },
        },
    }))
    .unwrap();
    env.deployments().create(&PostParams::default(), &drift).await.expect("create the Deployment");
    let note = env
        .wait_event(
            "drift",
            "ConfigMismatch",
            &["EBB_CONTAINER_CONCURRENCY is \"2\"", "ebb.dev/container-concurrency is \"4\""],
        )
        .await;
    assert!(note.contains("re-run ebb inject"), "{note}");
    // A Deployment whose ebb.dev/service label differs from its name is left alone and reported.
    let mislabelled: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "mislabelled", "labels": {"ebb.dev/service": "other"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "mislabelled"}},
            "template": {
                "metadata": {"labels": {"app": "mislabelled"}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            },
        },
    }))
    .unwrap();
    env.deployments().create(&PostParams::default(), &mislabelled).await.expect("create the Deployment");
    let note = env.wait_event("mislabelled", "ServiceLabelMismatch", &["\"other\"", "\"mislabelled\""]).await;
    assert!(note.contains("leaves it alone"), "{note}");
    assert_eq!(env.replicas("mislabelled").await.unwrap(), 2);
    let mislabelled_id = ServiceId::new(env.ns.name(), "mislabelled");
    assert!(env.controller().autoscaler().decisions(&mislabelled_id).is_none());
    // drift's pod template carries an autoscaling key, where ebb does not read it: a Warning too.
    let note = env.wait_event("drift", "AnnotationOnPodTemplate", &["autoscaling.knative.dev/window"]).await;
    assert!(note.contains("move it there"), "{note}");
    env.stop().await;
}

/// Item 1: the ConfigMap is hot reloaded; an invalid one draws a Warning Event and the previous one stays.
#[tokio::test]
async fn config_map_is_hot_reloaded_and_an_invalid_one_is_reported() {
    let Some(env) = Env::start("as-config", &[("container-concurrency-target-default", "50")]).await else {
        return;
    };
    env.create("app", 1, &[]).await;
    let target = async || {
        let status = env.controller().autoscaler().status();
        status.iter().find(|s| s.name == "app").map(|s| s.target).ok_or_else(|| "no service yet".to_owned())
    };
    wait_for(TIMEOUT, "target 50 x 70%", async || match target().await {
        Ok(t) if (t - 35.0).abs() < 1e-9 => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(env.admin.clone(), &env.ns);
    let patch = json!({"data": {"container-concurrency-target-default": "10"}});
    cms.patch("config-autoscaler", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for(TIMEOUT, "target 10 x 70%", async || match target().await {
        Ok(t) if (t - 7.0).abs() < 1e-9 => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let patch = json!({"data": {"stable-window": "1s"}});
    cms.patch("config-autoscaler", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    env.wait_event("config-autoscaler", "InvalidConfiguration", &["stable-window", "previous configuration"])
        .await;
    assert!((target().await.unwrap() - 7.0).abs() < 1e-9, "the previous configuration stays");
    env.stop().await;
}

/// Item 5: another writer changes replicas -> a Warning Event naming it, and ebb sets its count back.
#[tokio::test]
async fn an_external_scale_draws_a_warning_and_is_undone() {
    let Some(env) = Env::start("as-external", &[]).await else { return };
    env.create("fought", 1, &[]).await;
    let id = ServiceId::new(env.ns.name(), "fought");
    wait_for(TIMEOUT, "fought to be autoscaled", async || {
        env.controller().autoscaler().decisions(&id).filter(|d| !d.is_empty()).map(drop).ok_or("not yet")
    })
    .await;
    let kubectl = PatchParams { field_manager: Some("kubectl".into()), ..Default::default() };
    let scale = json!({"spec": {"replicas": 4}});
    env.deployments().patch_scale("fought", &kubectl, &Patch::Merge(&scale)).await.unwrap();
    let note = env.wait_event("fought", "ReplicasOverridden", &["from 1 to 4"]).await;
    assert!(note.contains("ebb.dev/paused"), "{note}");
    // v1.20 does not record scale-subresource writes in managedFields (1.22 does): the writer is unknown, and
    // must not be taken to be the Deployment's creator, the newest entry with `f:replicas`.
    assert!(
        note.contains("by \"kubectl\"") || note.contains("a writer the API server did not record"),
        "{note}"
    );
    env.wait_replicas("fought", 1, TIMEOUT).await;
    env.stop().await;
}

/// Item 7: a replica that first sees a Deployment while another writer has just changed its replicas starts
/// from the last leader's decision (`status.ebb.dev/desired`), not from that passing value: as the next leader
/// it sets the replicas back. Its pods never get their image, so there is no data: without data a service keeps the
/// replicas it started from, and only where it started from decides.
#[tokio::test]
async fn a_new_leader_starts_from_the_last_leaders_decision_not_from_an_external_write() {
    let Some(env) = Env::start("as-inherit", &[]).await else { return };
    env.pods.stick_pulling("inherited");
    env.create("inherited", 3, &[("status.ebb.dev/desired", "1")]).await;
    env.wait_replicas("inherited", 1, TIMEOUT).await;
    env.stop().await;
}

/// Item 8: a pod that cannot pull its image draws a PodBlocked Warning naming why, and the blocked-pods gauge
/// counts it.
#[tokio::test]
async fn a_pod_stuck_pulling_its_image_is_reported() {
    let Some(env) = Env::start("as-blocked", &[]).await else { return };
    env.pods.stick_pulling("stuck");
    env.create("stuck", 1, &[]).await;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    let selector = ListParams::default().labels("ebb.dev/service=stuck");
    let name = wait_for(TIMEOUT, "the stuck pod", async || {
        let items = pods.list(&selector).await.map_err(|e| e.to_string())?.items;
        items.into_iter().find_map(|p| p.metadata.name).ok_or_else(|| "no pod yet".to_owned())
    })
    .await;
    let note = env.wait_event("stuck", "PodBlocked", &[&name, "ImagePullBackOff"]).await;
    assert!(note.contains("Back-off pulling image"), "{note}");
    let gauge = |metrics: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("ebb_autoscaler_blocked_pods{")
                    && l.contains("service=\"stuck\"")
                    && l.contains("kind=\"image_pull\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
    };
    let metrics = metrics_text(env.controller().metrics_addr).await;
    assert_eq!(gauge(&metrics), Some(1), "{metrics}");
    env.stop().await;
}

/// Item 8: a controller that starts (a restart, a new leader) and finds a service with more than one ready pod
/// starts it in panic holding that count, so a restart never shrinks a scaled service on thin data; it scales
/// down only after a stable window.
#[tokio::test]
async fn after_a_restart_a_scaled_service_starts_in_panic_holding_its_pods() {
    let Some(mut env) = Env::start("as-restart", &[("stable-window", "6s")]).await else { return };
    env.scale_to_three("scaled").await;
    let id = ServiceId::new(env.ns.name(), "scaled");
    wait_for(TIMEOUT, "3 ready pods", async || {
        let status = env.controller().autoscaler().status();
        let ready = status.iter().find(|s| s.name == "scaled").map_or(0, |s| s.ready);
        if ready == 3 { Ok(()) } else { Err(format!("{ready} ready")) }
    })
    .await;

    // Light load now: a controller with no memory would see one pod's worth at once.
    env.pods.set_load("scaled", 0.2);
    env.restart_controller("replica-restarted").await;
    let decisions = wait_for(TIMEOUT, "the fresh controller's first decisions", async || {
        let decisions = env.controller().autoscaler().decisions(&id).unwrap_or_default();
        if decisions.iter().any(|d| d.observed_stable.is_some()) { Ok(decisions) } else { Err("no data yet") }
    })
    .await;
    for d in decisions.iter().filter(|d| d.observed_stable.is_some()) {
        assert!(d.panic && d.desired == 3, "holds 3 pods in panic at first: {d:?}");
    }
    assert_eq!(env.replicas("scaled").await.unwrap(), 3);
    // ...and scales down once the stable window has passed without panic.
    env.wait_replicas("scaled", 1, TIMEOUT).await;
    env.stop().await;
}

/// Item 7 in-process: two replicas, one Lease, exactly one leader; the other takes over on release.
#[tokio::test]
async fn one_of_two_replicas_leads_and_the_other_takes_over_on_release() {
    let Some(env) = Env::start("as-lease", &[]).await else { return };
    let cp = ControlPlane::shared();
    let client = cp.service_account_client(&env.admin, &env.ns, "ebb-autoscaler").await;
    let mut options = Options::new(env.ns.name(), "replica-1");
    options.watch_namespaces = vec![env.ns.name().to_owned()];
    options.ingest_addr = "127.0.0.1:0".parse().unwrap();
    options.metrics_addr = "127.0.0.1:0".parse().unwrap();
    let second = ClusterController::start(client, options).await.unwrap();
    // Give the second replica time to look at the Lease a few times: it must not lead.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(env.admin.clone(), &env.ns);
    for _ in 0..3 {
        let before = leases.get("ebb-autoscaler").await.unwrap().metadata.resource_version;
        wait_for(TIMEOUT, "a renewal", async || {
            let now =
                leases.get("ebb-autoscaler").await.map_err(|e| e.to_string())?.metadata.resource_version;
            if now != before { Ok(()) } else { Err("not renewed".to_owned()) }
        })
        .await;
        assert!(env.controller().is_leader() && !second.is_leader(), "exactly one leader");
    }
    let lease = leases.get("ebb-autoscaler").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("replica-0"));
    env.stop().await;
    wait_for(Duration::from_secs(15), "the second replica to take over after the release", async || {
        if second.is_leader() { Ok(()) } else { Err("not leading") }
    })
    .await;
    second.shutdown().await;
}

/// A fresh leader resumes the scale-to-zero clocks from the public Service's annotations.
/// The Service says the service went inactive (and proxy) 25 s ago; with a 30 s grace period and a 6 s stable
/// window, a controller that started its clocks afresh would keep the pod for at least 30 s, a resumed one
/// only for the grace period's remaining few seconds.
#[tokio::test]
async fn a_fresh_leader_resumes_the_scale_to_zero_clock_from_the_service() {
    let Some(mut env) =
        Env::start("as-resume", &[("scale-to-zero-grace-period", "30s"), ("stable-window", "6s")]).await
    else {
        return;
    };
    // No controller while the state a previous leader would have left is set up.
    env.controller.take().unwrap().shutdown().await;
    env.activator_pod().await;
    let entered = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(25);
    let service: Service = serde_json::from_value(json!({
        "metadata": {
            "name": "idle",
            "labels": {"app.kubernetes.io/managed-by": "ebb", "ebb.dev/service": "idle"},
            "annotations": {
                "status.ebb.dev/mode": "proxy", "status.ebb.dev/mode-since": entered.to_string(),
                "status.ebb.dev/phase": "inactive", "status.ebb.dev/phase-since": entered.to_string(),
            },
        },
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8012, "protocol": "TCP"}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(env.admin.clone(), &env.ns)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    env.create("idle", 1, &[]).await;
    wait_for(TIMEOUT, "the pod and the activator to be ready", async || {
        let pods = env.pod_ips("ebb.dev/service=idle").await;
        let activators = env.pod_ips("app.kubernetes.io/component=activator").await;
        if pods.len() == 1 && activators.len() == 1 {
            Ok(())
        } else {
            Err(format!("{pods:?} {activators:?}"))
        }
    })
    .await;

    env.restart_controller("replica-fresh").await;
    let started = std::time::Instant::now();
    // Well under the 30 s a fresh clock would need; the remaining grace plus probing and a few passes.
    env.wait_replicas("idle", 0, Duration::from_secs(20)).await;
    let took = started.elapsed();
    let id = ServiceId::new(env.ns.name(), "idle");
    let decisions = env.controller().autoscaler().decisions(&id).unwrap();
    assert!(
        decisions.iter().all(|d| d.policy_kind != "active_window" && d.policy_kind != "deactivated"),
        "resumed inactive, never active: {decisions:#?}"
    );
    assert!(took < Duration::from_secs(20), "zero after {took:?}");
    env.stop().await;
}

/// Item 4: while an activator reports requests queued (waiting for a pod) for a service, its replicas are not
/// lowered, though the decision wants fewer; load it merely proxies to pods with room does not hold them (in
/// proxy mode all traffic passes through the activator, and a scale-down must still happen).
#[tokio::test]
async fn replicas_are_not_lowered_while_requests_are_queued_in_an_activator_but_are_under_proxied_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(env) = Env::start("as-queued", &[("stable-window", "6s")]).await else { return };
    env.scale_to_three("busy").await;

    // The pods go idle; an activator keeps reporting a trickle of load (0.1 over a target of 1: the decision
    // wants 1 pod, fewer than 3), first queued, then merely proxied.
    env.pods.set_load("busy", 0.0);
    let (sending, queued) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let sender = {
        let (ingest, token, ns) =
            (env.controller().ingest_addr, env.activator_token.clone(), env.ns.name().to_owned());
        let (sending, queued) = (sending.clone(), queued.clone());
        tokio::spawn(async move {
            while sending.load(Ordering::Relaxed) {
                let mut frame = activator_frame(&ns, "busy", 0.1);
                frame.stat.average_queued = Some(if queued.load(Ordering::Relaxed) { 0.1 } else { 0.0 });
                assert_eq!(send_stats(ingest, Some(&token), &[frame]).await, 200);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let id = ServiceId::new(env.ns.name(), "busy");
    let wanted = async || {
        let status = env.controller().autoscaler().status();
        status.iter().find(|s| s.name == "busy").map(|s| s.desired).ok_or_else(|| "no status".to_owned())
    };
    wait_for(TIMEOUT, "a decision that wants fewer than 3 pods", async || {
        match (wanted().await?, env.replicas("busy").await?) {
            (desired, 3) if desired < 3 => Ok(()),
            (desired, replicas) => {
                assert_eq!(replicas, 3, "lowered while requests are queued (desired {desired})");
                Err(format!("desired {desired}"))
            }
        }
    })
    .await;
    // Held across several passes and more than the 3 s hold, as long as queued requests are reported.
    let held_since = std::time::Instant::now();
    wait_for(TIMEOUT, "5 s of held scale-down", async || {
        let replicas = env.replicas("busy").await?;
        assert_eq!(replicas, 3, "lowered while requests are queued");
        assert!(wanted().await? < 3, "the decision still wants fewer");
        if held_since.elapsed() >= Duration::from_secs(5) { Ok(()) } else { Err("holding".to_owned()) }
    })
    .await;
    let metrics = metrics_text(env.controller().metrics_addr).await;
    let held = metrics
        .lines()
        .find(|l| {
            l.starts_with("ebb_autoscaler_scale_downs_held_total{")
                && l.contains("service=\"busy\"")
                && l.contains("reason=\"activator_queued\"")
        })
        .unwrap_or_else(|| panic!("no held series: {metrics}"));
    assert!(!held.ends_with(" 0"), "{held}");

    // Nothing queued any more, though the activator still proxies load: down to the decision's count.
    queued.store(false, Ordering::Relaxed);
    env.wait_replicas("busy", 1, TIMEOUT).await;
    assert!(sending.load(Ordering::Relaxed) && !sender.is_finished(), "the activator's load kept coming");
    sending.store(false, Ordering::Relaxed);
    sender.await.unwrap();
    let decisions = env.controller().autoscaler().decisions(&id).unwrap();
    assert!(decisions.iter().any(|d| d.changed && d.desired < 3), "{decisions:#?}");
    env.stop().await;
}

/// The autoscaler's ports are attack surface like the proxies': a client that connects and says nothing, or
/// sends the start of a request and goes quiet, is dropped (ebb-http's first-bytes deadline), and the port
/// keeps answering meanwhile.
#[tokio::test]
async fn silent_clients_on_the_metrics_and_ingest_ports_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let Some(env) = Env::start("as-silent", &[]).await else { return };
    let ports = [("metrics", env.controller().metrics_addr), ("ingest", env.controller().ingest_addr)];
    let mut silent = Vec::new();
    for (port, addr) in ports {
        for i in 0..50 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                // One byte of the HTTP/2 preface, then nothing.
                stream.write_all(b"P").await.unwrap();
            }
            silent.push((port, stream));
        }
    }
    let metrics = metrics_text(env.controller().metrics_addr).await;
    assert!(metrics.contains("ebb_autoscaler"), "the port answers while silent clients hold connections");
    // The deadline is 10 s; each silent connection must see the server close it.
    for (port, mut stream) in silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent client on the {port} port was kept: {read:?}"
        );
    }
    env.stop().await;
}

/// A watch event makes the pass visit the services it touches, not every service: once the services are
/// settled, a change to one pod is followed by a pass that visited fewer services than there are (the count
/// is the `reconcile_services` metric). A pass over every service, as the level-triggered pass made on every
/// event, visits them all each time.
#[tokio::test]
async fn a_pod_event_visits_its_service_not_every_service() {
    // No full resync during the test: only the marks decide what is visited.
    let tune = |o: &mut Options| o.resync_interval = Duration::from_secs(3600);
    let Some(env) = Env::start_with("as-dirty", &[], tune).await else { return };
    let names = ["d0", "d1", "d2", "d3"];
    for name in names {
        env.create(name, 1, &[("autoscaling.knative.dev/min-scale", "1")]).await;
    }
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    for name in names {
        let selector = format!("ebb.dev/service={name}");
        wait_for(TIMEOUT, &format!("{name}'s pod in its EndpointSlice"), async || {
            let ips = env.pod_ips(&selector).await;
            let listed = env.slice_addresses(name).await?;
            if !ips.is_empty() && listed == ips {
                Ok(())
            } else {
                Err(format!("pods {ips:?}, slice {listed:?}"))
            }
        })
        .await;
    }
    let visited = async || {
        let metrics = metrics_text(env.controller().metrics_addr).await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("ebb_autoscaler_reconcile_services_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no ebb_autoscaler_reconcile_services_total in\n{metrics}"))
    };
    let pod = env.pod_ips("ebb.dev/service=d0").await;
    assert_eq!(pod.len(), 1);
    let pod_name = pods
        .list(&ListParams::default().labels("ebb.dev/service=d0"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .unwrap();
    // A few tries: a service still settling (its status annotations seen back) may be visited in between.
    let mut seen = Vec::new();
    for attempt in 0..5 {
        let before = visited().await;
        let patch = json!({"metadata": {"annotations": {"test.ebb.dev/poke": attempt.to_string()}}});
        pods.patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let after = wait_for(TIMEOUT, "a pass to visit the poked pod's service", async || {
            let now = visited().await;
            if now > before { Ok(now) } else { Err(format!("{now} services visited")) }
        })
        .await;
        seen.push(after - before);
        if after - before < names.len() as u64 {
            break;
        }
    }
    assert!(
        seen.iter().any(|&n| n < names.len() as u64),
        "every pass after a pod event visited all {} services: {seen:?}",
        names.len()
    );
    env.stop().await;
}

/// A pass that finds a problem with many services at once publishes their Warning Events a few at a time, over
/// a few connections: unbounded, each Event was a request of its own at once, and kube's pool opened (and kept)
/// a connection to the API server for each.
#[tokio::test]
async fn a_burst_of_warnings_is_published_over_a_few_connections() {
    const SERVICES: usize = 150;
    let Some(mut env) = Env::start("as-burst", &[]).await else { return };
    let cp = require::control_plane().expect("a control plane, as Env started");
    // Created while no controller runs, so that the next one finds every problem in its first pass.
    env.controller.take().expect("a controller").shutdown().await;
    for i in 0..SERVICES {
        env.create(&format!("bad-{i}"), 0, &[("autoscaling.knative.dev/window", "2s")]).await;
    }
    let before = cp.connections_from_this_process();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(cp.connections_from_this_process(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    env.restart_controller("replica-1").await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.admin.clone(), &env.ns);
    wait_for(TIMEOUT, "an InvalidConfiguration Event on every service", async || {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let warned: std::collections::BTreeSet<String> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("InvalidConfiguration"))
            .filter_map(|e| e.regarding?.name)
            .collect();
        if warned.len() == SERVICES { Ok(()) } else { Err(format!("{} of {SERVICES}", warned.len())) }
    })
    .await;
    sampler.abort();
    let opened = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(before);
    // The new controller's watches, its pass's writes, and the Events in flight; not one per Event.
    assert!(
        opened < SERVICES / 3,
        "{opened} connections opened to the API server for {SERVICES} Events ({before} before)"
    );
    env.stop().await;
}
