//! Instances of several pods, with ebb installed from `manifests/` on the real control
//! plane and pods run as real processes: a custom resource with a scale subresource shaped like KubeInfer's
//! (each instance 2 prefill pods and 1 decode pod, the entry; its controller played by the test, creating
//! and deleting the 3 pods of each instance), configured through `scale-target-instances`. Woken from zero
//! by a burst of requests that all succeed, none answered before all three pods of the instance were ready
//! (the decode entry's readiness gate, set by the autoscaler, holds it back while prefill loads); scaled to
//! 2 instances (6 pods) under load and back to zero. At a steady load of 2 instances, an instance restarting
//! as a whole and an instance-level rolling update with surge: counted in instances, and not fought. And a
//! LeaderWorkerSet (a stand-in for its CRD, the
//! shape ebb has built in), with the autoscaler in-process: its leader's gate follows its workers' readiness.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebb_test_support as support;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::cluster::{Cluster, complete, failed_completions, gateway_load, http_client, ready_ips};
use support::crd::ScalableKind;
use support::gateway::Gateway;
use support::manifests::grant_from;
use support::wait_for;

const GROUP: &str = "serving.example.com";
const KIND: &str = "inferenceservices.serving.example.com";
const NAME_LABEL: &str = "serving.example.com/name";
const INSTANCE_LABEL: &str = "serving.example.com/instance";
const ROLE_LABEL: &str = "serving.example.com/role";
const LONG: Duration = Duration::from_secs(120);

/// The KubeInfer-shaped kind, as the test serves it.
const INFERENCE: ScalableKind = ScalableKind {
    group: GROUP,
    kind: "InferenceService",
    plural: "inferenceservices",
    selector_path: ".status.selector",
};

/// The demo model as a container: `startup` to load, then ready on `/health`.
fn model(startup: &str) -> Value {
    json!({
        "name": "model",
        "image": "ghcr.io/ebb-dev/ebb:0.1.0",
        "command": ["ebb", "demo-model"],
        "args": ["--model", "demo", "--startup-delay", startup, "--tokens-per-second", "200", "--concurrency", "8"],
        "env": [{"name": "EBB_DEMO_LISTEN", "value": "0.0.0.0:8080"}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 1},
    })
}

/// Pod `role` of instance `instance` of `name`: decode is the entry (labelled `ebb.dev/service`, so the
/// webhook gives it the queue-proxy and the instance gate) and loads in 1 s; prefill loads in 6 s.
fn instance_pod(name: &str, instance: i64, role: &str, index: usize) -> Pod {
    let mut labels = json!({NAME_LABEL: name, INSTANCE_LABEL: instance.to_string(), ROLE_LABEL: role});
    let (pod_name, startup) = if role == "decode" {
        labels["ebb.dev/service"] = json!(name);
        (format!("{name}-{instance}-decode"), "1s")
    } else {
        (format!("{name}-{instance}-prefill-{index}"), "6s")
    };
    serde_json::from_value(json!({
        "metadata": {"name": pod_name, "labels": labels},
        "spec": {"containers": [model(startup)], "terminationGracePeriodSeconds": 5},
    }))
    .unwrap()
}

/// The instances the test's controller keeps, oldest first: as many as `spec.replicas` (new ones numbered
/// afresh, the youngest removed first), and `surge` more while a rolling update adds a new one before it
/// removes an old one.
#[derive(Debug, Default)]
struct Plan {
    instances: Vec<i64>,
    next: i64,
    surge: usize,
}

/// Plays the custom resource's controller once: the 3 pods of every instance of the plan (brought to
/// `spec.replicas` and the surge) created where missing, but none while one of the instance's pods is still
/// terminating, the pods of any other instance deleted,
/// `status.replicas` and `status.selector` written.
async fn play_controller(admin: &Client, ns: &str, name: &str, plan: &Mutex<Plan>) -> Result<(), String> {
    let selector = format!("{NAME_LABEL}={name}");
    let round = INFERENCE.round(admin, ns, name, &selector).await?;
    let want = round.replicas();
    let keep = {
        let mut plan = plan.lock().unwrap();
        let total = usize::try_from(want).unwrap_or(0) + plan.surge;
        while plan.instances.len() < total {
            let next = plan.next;
            plan.instances.push(next);
            plan.next += 1;
        }
        plan.instances.truncate(total);
        plan.instances.clone()
    };
    for &instance in &keep {
        // An instance is created whole: a restarted one once all of its old pods are gone.
        let terminating = round
            .existing
            .iter()
            .any(|p| instance_of(p) == Some(instance) && p.metadata.deletion_timestamp.is_some());
        if terminating {
            continue;
        }
        for (role, index) in [("prefill", 0), ("prefill", 1), ("decode", 0)] {
            let pod = instance_pod(name, instance, role, index);
            if round.has_pod(&pod.name_any()) {
                continue;
            }
            round.create(&pod).await?;
        }
    }
    round.delete_unless(|pod| instance_of(pod).is_some_and(|i| keep.contains(&i))).await?;
    round.write_status(json!({"replicas": want, "selector": selector})).await
}

fn instance_of(pod: &Pod) -> Option<i64> {
    pod.metadata.labels.as_ref()?.get(INSTANCE_LABEL)?.parse().ok()
}

fn condition(pod: &Pod, kind: &str) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    conditions.iter().any(|c| c.type_ == kind && c.status == "True")
}

fn is_decode(pod: &Pod) -> bool {
    pod.metadata.labels.as_ref().and_then(|l| l.get(ROLE_LABEL)).map(String::as_str) == Some("decode")
}

/// One listing of the service's pods, taken at `sent` (the request's start; the listing shows a state at or
/// after it).
#[derive(Debug, Clone)]
struct Listing {
    sent: Instant,
    /// Instances whose 3 pods all exist and are Ready.
    whole: usize,
    /// Instances whose decode pod's containers are ready while the pod is not: its gate holds it.
    held: usize,
}

/// Lists the pods of `name` every 100 ms until stopped.
struct InstanceWatch {
    stop: Arc<AtomicBool>,
    listings: Arc<Mutex<Vec<Listing>>>,
    task: tokio::task::JoinHandle<()>,
}

impl InstanceWatch {
    fn start(pods: Api<Pod>, name: &str) -> InstanceWatch {
        let (stop, listings) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let selector = format!("{NAME_LABEL}={name}");
        let task = {
            let (stop, listings) = (stop.clone(), listings.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
                        let mut instances: BTreeMap<i64, Vec<&Pod>> = BTreeMap::new();
                        for pod in list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
                            instances.entry(instance_of(pod).unwrap_or(-1)).or_default().push(pod);
                        }
                        let whole = instances
                            .values()
                            .filter(|pods| pods.len() == 3 && pods.iter().all(|p| condition(p, "Ready")))
                            .count();
                        let held = instances
                            .values()
                            .flatten()
                            .filter(|p| {
                                is_decode(p) && condition(p, "ContainersReady") && !condition(p, "Ready")
                            })
                            .count();
                        listings.lock().unwrap().push(Listing { sent, whole, held });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        InstanceWatch { stop, listings, task }
    }

    /// The latest listing.
    fn latest(&self) -> Option<Listing> {
        self.listings.lock().unwrap().last().cloned()
    }

    async fn finish(self) -> Vec<Listing> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.listings.lock().unwrap().clone()
    }
}

/// Live pods of `name` and how many of them are Ready.
async fn pods_of(pods: &Api<Pod>, name: &str) -> Result<(usize, usize), String> {
    let list = pods.list(&ListParams::default().labels(&format!("{NAME_LABEL}={name}"))).await;
    let list = list.map_err(|e| e.to_string())?;
    let live: Vec<&Pod> = list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    Ok((live.len(), live.iter().filter(|p| condition(p, "Ready")).count()))
}

/// ebb installed with the CRD served, and one InferenceService `llm` (3 pods per instance, 8 requests per
/// entry) idle at zero, with the test playing its controller, and a gateway to it.
struct Llm {
    cluster: Cluster,
    objects: Api<DynamicObject>,
    pods: Api<Pod>,
    plan: Arc<Mutex<Plan>>,
    controller: tokio::task::JoinHandle<()>,
    gateway: Gateway,
}

impl Llm {
    /// Installs ebb in namespaces named after `prefix` and creates `llm` with `annotations` added to the
    /// common ones; `None` without a control plane.
    async fn start(prefix: &str, annotations: &[(&str, &str)]) -> Option<Llm> {
        let instances = format!("{KIND}: name-label={NAME_LABEL}, instance-label={INSTANCE_LABEL}");
        let kinds = format!("deployments.apps, {KIND}");
        let config = [
            ("allow-zero-initial-scale", "true"),
            ("stable-window", "6s"),
            ("scale-to-zero-grace-period", "2s"),
            ("scale-target-kinds", kinds.as_str()),
            ("scale-target-instances", instances.as_str()),
        ];
        let cluster = Cluster::install(prefix, &config).await?;
        grant_from(&cluster.admin, &cluster.system, "ebb-autoscaler", "manifests/scale-targets/custom").await;
        INFERENCE.install(&cluster.admin).await;
        let objects: Api<DynamicObject> =
            Api::namespaced_with(cluster.admin.clone(), &cluster.apps, &INFERENCE.resource());
        let mut object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{GROUP}/v1"),
            "kind": "InferenceService",
            "metadata": {"name": "llm", "labels": {"ebb.dev/service": "llm"}, "annotations": {
                "ebb.dev/instance-pods": "3",
                "ebb.dev/container-concurrency": "8",
                "autoscaling.knative.dev/initial-scale": "0",
                "autoscaling.knative.dev/window": "6s",
                "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "0s",
                "autoscaling.knative.dev/target-burst-capacity": "0",
            }},
            "spec": {"replicas": 0, "roles": [{"name": "prefill", "replicas": 2}, {"name": "decode", "replicas": 1}]},
        }))
        .unwrap();
        let all = object.metadata.annotations.get_or_insert_default();
        all.extend(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        wait_for(LONG, "the CRD to be served", async || {
            objects.create(&PostParams::default(), &object).await
        })
        .await;
        let plan = Arc::new(Mutex::new(Plan::default()));
        let controller = {
            let (admin, ns, plan) = (cluster.admin.clone(), cluster.apps.name().to_owned(), plan.clone());
            tokio::spawn(async move {
                loop {
                    if let Err(e) = play_controller(&admin, &ns, "llm", &plan).await {
                        eprintln!("the test's controller: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
        // The kind's watch starts once discovery sees the CRD and the RBAC (retried every 30 s).
        cluster.wait_path("llm", "proxy", async || cluster.activator_endpoints().await).await;
        let gateway = cluster.gateway("llm").await;
        let llm = Llm { cluster, objects, pods, plan, controller, gateway };
        llm.wait_instances(0, "llm idle at zero").await;
        Some(llm)
    }

    /// `spec.replicas` of the custom resource.
    async fn replicas(&self) -> Result<i64, String> {
        let object = self.objects.get("llm").await.map_err(|e| e.to_string())?;
        Ok(object.data["spec"]["replicas"].as_i64().unwrap_or(-1))
    }

    /// Waits until `spec.replicas` is `want` and exactly that many instances' pods live, all Ready.
    async fn wait_instances(&self, want: i64, what: &str) {
        wait_for(LONG, what, async || {
            let (r, (live, ready)) = (self.replicas().await?, pods_of(&self.pods, "llm").await?);
            let whole = 3 * want as usize;
            if r == want && live == whole && ready == whole {
                Ok(())
            } else {
                Err(format!("{r} instance(s), {live} pods, {ready} Ready"))
            }
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeinfer_shaped_instance_wakes_whole_scales_in_instances_and_goes_to_zero() {
    let Some(llm) = Llm::start("inst", &[("autoscaling.knative.dev/max-scale", "2")]).await else { return };
    let (cluster, pods, gateway) = (&llm.cluster, &llm.pods, &llm.gateway);

    // A burst at zero: one instance starts; the decode entry is up in 1 s, but no request is answered
    // before both prefill pods are ready too.
    let watch = InstanceWatch::start(pods.clone(), "llm");
    let http = http_client();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let (http, addr) = (http.clone(), gateway.addr());
            tokio::spawn(async move {
                let answer = complete(&http, addr).await;
                (answer, Instant::now())
            })
        })
        .collect();
    let mut first_answer: Option<Instant> = None;
    let mut answers = Vec::new();
    for request in requests {
        let (answer, at) = request.await.expect("a request task");
        first_answer = Some(first_answer.map_or(at, |f| f.min(at)));
        answers.push(tokio::spawn(async move { answer }));
    }
    let failed = failed_completions(answers).await;
    assert!(
        failed.is_empty(),
        "every request from zero is served: {failed:?}\n{}",
        cluster.logs.tails("", 20)
    );
    // Watched until an instance is whole, so that every listing between the first answer and then is kept.
    wait_for(LONG, "a whole instance", async || match watch.latest() {
        Some(l) if l.whole > 0 => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let listings = watch.finish().await;
    let first_answer = first_answer.expect("answers");
    // The timeline, for whoever reads a failure: when instances were held, whole, and first answered.
    let start = listings.first().map_or(first_answer, |l| l.sent);
    let mut last = None;
    for l in &listings {
        if last != Some((l.whole, l.held)) {
            eprintln!("{:>6} ms: {} whole, {} held", (l.sent - start).as_millis(), l.whole, l.held);
            last = Some((l.whole, l.held));
        }
    }
    eprintln!("{:>6} ms: first answer", first_answer.saturating_duration_since(start).as_millis());
    // Whole instances stay whole during the burst: a listing begun after the first answer that shows none
    // means a request was answered before all 3 pods of any instance were Ready.
    let early: Vec<&Listing> = listings.iter().filter(|l| l.sent > first_answer && l.whole == 0).collect();
    assert!(
        early.is_empty(),
        "a request was answered before all 3 pods of its instance were Ready: {early:?}"
    );
    assert!(
        listings.iter().any(|l| l.held > 0 && l.whole == 0),
        "a decode entry's gate held it while its prefill pods loaded: {listings:?}"
    );

    // Load for more than one instance: two whole instances, 6 pods.
    let load = gateway_load(gateway.addr(), 16);
    llm.wait_instances(2, "two whole instances under load").await;
    let (ok, failures) = load.finish().await;
    assert!(ok > 0 && failures.is_empty(), "{ok} served; failures: {failures:?}");

    // Idle: back to zero, every pod gone.
    llm.wait_instances(0, "llm back at zero").await;
    llm.controller.abort();
    assert!(cluster.logs.exits().is_empty(), "no container exited: {:?}", cluster.logs.exits());
}

const LWS_GROUP: &str = "leaderworkerset.x-k8s.io";
const LWS_NAME: &str = "leaderworkerset.sigs.k8s.io/name";
const LWS_GROUP_INDEX: &str = "leaderworkerset.sigs.k8s.io/group-index";
const LWS_WORKER_INDEX: &str = "leaderworkerset.sigs.k8s.io/worker-index";

/// A stand-in for LeaderWorkerSet's CRD: its group, names and scale subresource (replicas are groups; the
/// HPA selector picks the leaders).
const LWS: ScalableKind = ScalableKind {
    group: LWS_GROUP,
    kind: "LeaderWorkerSet",
    plural: "leaderworkersets",
    selector_path: ".status.hpaPodSelector",
};

/// Plays LeaderWorkerSet's controller once, as its pods are labelled: for each group below `spec.replicas`
/// a leader `NAME-G` (labelled `ebb.dev/service`, with the instance gate as `ebb inject` writes it into the
/// leader template, when `gate`) and `size - 1` workers `NAME-G-W`; groups above it deleted; the status
/// written.
async fn play_lws(admin: &Client, ns: &str, name: &str, gate: bool) -> Result<(), String> {
    let round = LWS.round(admin, ns, name, &format!("{LWS_NAME}={name}")).await?;
    let want = round.replicas();
    let size = round.object.data["spec"]["leaderWorkerTemplate"]["size"].as_i64().unwrap_or(1);
    for group in 0..want {
        for worker in 0..size {
            let pod_name =
                if worker == 0 { format!("{name}-{group}") } else { format!("{name}-{group}-{worker}") };
            if round.has_pod(&pod_name) {
                continue;
            }
            let mut labels = json!({LWS_NAME: name, LWS_GROUP_INDEX: group.to_string(), LWS_WORKER_INDEX: worker.to_string()});
            let mut spec = json!({"containers": [{"name": "model", "image": "example.invalid/model:1"}]});
            if worker == 0 {
                labels["ebb.dev/service"] = json!(name);
            }
            if worker == 0 && gate {
                spec["readinessGates"] = json!([{"conditionType": "ebb.dev/instance-ready"}]);
            }
            let pod: Pod = serde_json::from_value(
                json!({"metadata": {"name": pod_name, "labels": labels}, "spec": spec}),
            )
            .unwrap();
            round.create(&pod).await?;
        }
    }
    round
        .delete_unless(|pod| {
            let group =
                pod.metadata.labels.as_ref().and_then(|l| l.get(LWS_GROUP_INDEX)?.parse::<i64>().ok());
            group.unwrap_or(i64::MAX) < want
        })
        .await?;
    let selector = format!("{LWS_NAME}={name},{LWS_WORKER_INDEX}=0");
    round.write_status(json!({"replicas": want, "hpaPodSelector": selector})).await
}

/// The instance gate's condition on pod `name` and whether the pod is Ready.
async fn gate_and_ready(pods: &Api<Pod>, name: &str) -> Result<(Option<String>, bool), String> {
    let pod = pods.get(name).await.map_err(|e| e.to_string())?;
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let gate = conditions.iter().find(|c| c.type_ == "ebb.dev/instance-ready").map(|c| c.status.clone());
    Ok((gate, condition(&pod, "Ready")))
}

/// A LeaderWorkerSet, with the instance shape ebb has built in (no `scale-target-instances`): its group of 3
/// pods (a leader and 2 workers) is one instance. The autoscaler (in-process, as ServiceAccount
/// `ebb-autoscaler` with the base RBAC and `manifests/scale-targets/leaderworkersets`) sets the leader's gate
/// False while a worker is not ready, so the node (emulated as a kubelet) does not report the leader Ready and
/// the engine counts no ready instance; True once both workers are ready; False again when one fails. A
/// leader made without the gate is reported on its LeaderWorkerSet.
#[tokio::test]
async fn a_leaderworkersets_leader_is_ready_only_with_its_whole_group() {
    let Some(cp) = support::require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = support::TestNamespace::create(&admin, "inst-lws").await;
    support::autoscaler::grant_autoscaler_rbac(&admin, &ns, "ebb-autoscaler").await;
    grant_from(&admin, &ns, "ebb-autoscaler", "manifests/scale-targets/leaderworkersets").await;
    let sa_config = cp.service_account_kubeconfig(&admin, &ns, "ebb-autoscaler").await;
    let client = support::k8s::client_from_kubeconfig(&sa_config).await.unwrap();
    let activator_token =
        support::autoscaler::token_of(&cp.service_account_kubeconfig(&admin, &ns, "ebb-activator").await);
    LWS.install(&admin).await;
    let data: std::collections::BTreeMap<String, String> = [
        ("allow-zero-initial-scale", "true"),
        ("scale-target-kinds", "deployments.apps, leaderworkersets.leaderworkerset.x-k8s.io"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config_map: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "config-autoscaler"}, "data": data})).unwrap();
    Api::namespaced(admin.clone(), &ns).create(&PostParams::default(), &config_map).await.unwrap();
    let fake = support::autoscaler::FakePods::default();
    let node = support::NodeEmulator::builder()
        .namespace(&ns)
        .readiness(support::Readiness::Manual)
        .runtime(fake.clone())
        .start(&admin)
        .await;
    let objects: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &ns, &LWS.resource());
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{LWS_GROUP}/v1"),
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "llm", "labels": {"ebb.dev/service": "llm"}, "annotations": {
            "autoscaling.knative.dev/initial-scale": "0",
            "autoscaling.knative.dev/target": "1",
            "autoscaling.knative.dev/max-scale": "1",
        }},
        "spec": {"replicas": 0, "leaderWorkerTemplate": {"size": 3}},
    }))
    .unwrap();
    wait_for(LONG, "the CRD to be served", async || objects.create(&PostParams::default(), &object).await)
        .await;
    // A group whose leader was made without the gate (say, before its kind had an instance shape).
    let mut old = object.clone();
    old.metadata.name = Some("old".into());
    old.metadata.labels = Some([("ebb.dev/service".to_owned(), "old".to_owned())].into());
    old.metadata.annotations =
        Some([("autoscaling.knative.dev/min-scale".to_owned(), "1".to_owned())].into());
    old.data["spec"]["replicas"] = json!(1);
    objects.create(&PostParams::default(), &old).await.expect("create LeaderWorkerSet old");
    let lws_controller = {
        let (admin, ns) = (admin.clone(), ns.name().to_owned());
        tokio::spawn(async move {
            loop {
                for (name, gate) in [("llm", true), ("old", false)] {
                    if let Err(e) = play_lws(&admin, &ns, name, gate).await {
                        eprintln!("the test's LeaderWorkerSet controller: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let controller = support::autoscaler::start_leading(
        client,
        support::autoscaler::test_options(ns.name(), "replica-0"),
        LONG,
    )
    .await;
    let id = ebb_config::ServiceId::new(ns.name(), "llm");
    let ready_instances =
        || controller.autoscaler().status().into_iter().find(|s| s.name == "llm").map_or(0, |s| s.ready);

    // Woken from zero (the activator reports load): one group, its 3 pods.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    wait_for(LONG, "the autoscaler to follow the LeaderWorkerSet", async || {
        let frame = support::autoscaler::activator_frame(&ns, "llm", 1.0);
        let sent =
            support::autoscaler::send_stats(controller.ingest_addr, Some(&activator_token), &[frame]).await;
        let replicas = objects.get("llm").await.map_err(|e| e.to_string())?.data["spec"]["replicas"].as_i64();
        if sent == 200 && replicas == Some(1) {
            Ok(())
        } else {
            Err(format!("stat {sent}, replicas {replicas:?}"))
        }
    })
    .await;
    let set_ready = async |name: &str, ready: bool| {
        wait_for(LONG, &format!("{name} started"), async || node.set_ready(&ns, name, ready).await).await;
    };
    // The leader and one worker ready, the other worker still loading: the leader is held.
    set_ready("llm-0", true).await;
    set_ready("llm-0-1", true).await;
    wait_for(LONG, "the gate False on the leader", async || match gate_and_ready(&pods, "llm-0").await? {
        (Some(gate), false) if gate == "False" => Ok(()),
        other => Err(format!("gate and Ready {other:?}")),
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gate_and_ready(&pods, "llm-0").await.unwrap(), (Some("False".into()), false), "still held");
    assert_eq!(ready_instances(), 0, "no whole instance yet");

    // The last worker ready: the gate opens and the kubelet reports the leader Ready; one ready instance.
    set_ready("llm-0-2", true).await;
    wait_for(LONG, "the leader Ready with its group", async || {
        match gate_and_ready(&pods, "llm-0").await? {
            (Some(gate), true) if gate == "True" => Ok(()),
            other => Err(format!("gate and Ready {other:?}")),
        }
    })
    .await;
    wait_for(LONG, "one ready instance in the engine", async || {
        if ready_instances() == 1 { Ok(()) } else { Err(format!("{} ready", ready_instances())) }
    })
    .await;

    // A worker fails: the instance is broken, the leader leaves the rotation.
    set_ready("llm-0-1", false).await;
    wait_for(LONG, "the leader held again", async || match gate_and_ready(&pods, "llm-0").await? {
        (Some(gate), false) if gate == "False" => Ok(()),
        other => Err(format!("gate and Ready {other:?}")),
    })
    .await;
    wait_for(LONG, "no ready instance in the engine", async || {
        if ready_instances() == 0 { Ok(()) } else { Err(format!("{} ready", ready_instances())) }
    })
    .await;
    assert!(controller.autoscaler().decisions(&id).is_some(), "the service is the engine's");

    // A leader without the gate is reported: requests could reach it before its group is whole.
    let contains =
        ["old-0", "lack the readiness gate ebb.dev/instance-ready", "delete the pods of LeaderWorkerSet"];
    support::autoscaler::wait_event_note(&admin, &ns, "old", "InstanceGateMissing", &contains, LONG).await;
    lws_controller.abort();
    controller.shutdown().await;
    drop(fake);
}

/// What the autoscaler replicas' engines say of `llm`, one `(ready, panic)` per replica that reports it:
/// `ebb_autoscaler_ready_pods` (which counts an entry only while its instance is whole, so instances) and
/// `ebb_autoscaler_panic_mode`.
async fn engine_views(system: &Api<Pod>, namespace: &str) -> Result<Vec<(i64, bool)>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let series = format!("{{namespace=\"{namespace}\",service=\"llm\"}} ");
    let mut views = Vec::new();
    for ip in ready_ips(system, "app.kubernetes.io/component=autoscaler").await? {
        let mut stream =
            tokio::net::TcpStream::connect((ip.as_str(), 9090)).await.map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut page = String::new();
        stream.read_to_string(&mut page).await.map_err(|e| e.to_string())?;
        let value = |family: &str| {
            let prefix = format!("ebb_autoscaler_{family}{series}");
            page.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
        };
        if let (Some(ready), Some(panic)) = (value("ready_pods"), value("panic_mode")) {
            views.push((ready as i64, panic > 0.0));
        }
    }
    Ok(views)
}

/// Each autoscaler replica's last decisions for `llm` (`/debug/decisions`), for a failure's message.
async fn decision_traces(system: &Api<Pod>, namespace: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = String::new();
    for ip in ready_ips(system, "app.kubernetes.io/component=autoscaler").await.unwrap_or_default() {
        let Ok(mut stream) = tokio::net::TcpStream::connect((ip.as_str(), 9090)).await else { continue };
        let request = format!("GET /debug/decisions?service={namespace}%2Fllm HTTP/1.0\r\nHost: a\r\n\r\n");
        let mut page = String::new();
        if stream.write_all(request.as_bytes()).await.is_ok()
            && stream.read_to_string(&mut page).await.is_ok()
        {
            out.push_str(&format!("{ip}: {}\n", page.split_once("\r\n\r\n").map_or("", |(_, body)| body)));
        }
    }
    out
}

/// One look at `llm`: `spec.replicas` and the engines' views.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    replicas: i64,
    engines: Vec<(i64, bool)>,
}

/// Samples `spec.replicas` and the engines every 200 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(llm: &Llm) -> Sampler {
        let (stop, samples) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let objects = llm.objects.clone();
        let system: Api<Pod> = Api::namespaced(llm.cluster.admin.clone(), &llm.cluster.system);
        let namespace = llm.cluster.apps.name().to_owned();
        let task = {
            let (stop, samples) = (stop.clone(), samples.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let replicas = objects.get("llm").await.map(|o| o.data["spec"]["replicas"].as_i64());
                    let engines = engine_views(&system, &namespace).await;
                    if let (Ok(Some(replicas)), Ok(engines)) = (replicas, engines) {
                        samples.lock().unwrap().push(Sample { at, replicas, engines });
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        Sampler { stop, samples, task }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.samples.lock().unwrap().clone()
    }
}

/// Waits until every autoscaler replica that reports `llm` counts `want` ready instances (at least one
/// reports it).
async fn wait_engines(llm: &Llm, want: i64, what: &str) {
    let system: Api<Pod> = Api::namespaced(llm.cluster.admin.clone(), &llm.cluster.system);
    wait_for(LONG, what, async || {
        let views = engine_views(&system, llm.cluster.apps.name()).await?;
        if !views.is_empty() && views.iter().all(|&(ready, _)| ready == want) {
            Ok(())
        } else {
            Err(format!("engines (ready, panic): {views:?}"))
        }
    })
    .await
}

/// The instance labels of `llm`'s live pods.
async fn live_instances(pods: &Api<Pod>) -> Vec<i64> {
    let list = pods.list(&ListParams::default().labels(&format!("{NAME_LABEL}=llm"))).await.unwrap();
    let mut instances: Vec<i64> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(instance_of)
        .collect();
    instances.sort();
    instances.dedup();
    instances
}

/// The same custom resource at a steady load that wants exactly 2 instances (6 pods), with room to scale to
/// 4. An instance restarts as a whole, as KubeInfer's recovery policy does (its 3 pods deleted, and recreated
/// together once all are gone, prefill loading for 6 s): meanwhile its entry's gate is False, the engines
/// count 1 ready instance, and no instance is added for the missing capacity. Then an instance-level rolling
/// update with a surge of 1 instance: each old instance is replaced by first creating a new one (new
/// instance label), waiting until it is whole, then deleting the old one; the engines count at most 3
/// ready, never the pods. `spec.replicas` stays 2 through both, sampled every 200 ms, and every request
/// is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_restarting_or_rolled_out_with_surge_is_counted_whole_and_not_fought() {
    let Some(llm) = Llm::start("roll", &[("autoscaling.knative.dev/max-scale", "4")]).await else { return };
    let (sampler, t0) = (Sampler::start(&llm), Instant::now());
    let mark = |what: &str| eprintln!("{:>6} ms: {what}", t0.elapsed().as_millis());
    // 10 clients against a target of 5.6 per instance (8 at 70%): 2 instances, and still 2 while all 10
    // requests are at one instance.
    let load = gateway_load(llm.gateway.addr(), 10);
    llm.wait_instances(2, "two whole instances under steady load").await;
    wait_engines(&llm, 2, "the engines counting 2 ready instances").await;
    let steady = Instant::now();
    mark("steady: 2 instances");

    // 1. A whole-instance restart: its 3 pods deleted, then recreated under the same names by the controller
    // once all are gone (the old entry first drains: its queue-proxy's quiet period, 30 s).
    let restarted = llm.plan.lock().unwrap().instances[0];
    let entry = format!("llm-{restarted}-decode");
    let old_uid = llm.pods.get(&entry).await.unwrap().metadata.uid;
    let of_instance = format!("{NAME_LABEL}=llm,{INSTANCE_LABEL}={restarted}");
    llm.pods
        .delete_collection(&DeleteParams::default(), &ListParams::default().labels(&of_instance))
        .await
        .expect("delete the instance's pods");
    mark(&format!("instance {restarted} deleted"));
    let system: Api<Pod> = Api::namespaced(llm.cluster.admin.clone(), &llm.cluster.system);
    // The recreated entry is up (its containers ready) but held by its gate while prefill loads, and the
    // engines count the other instance alone.
    let held = wait_for(LONG, "the restarted entry held by its gate, 1 ready instance", async || {
        let pod = llm.pods.get(&entry).await.map_err(|e| e.to_string())?;
        let (gate, ready) = gate_and_ready(&llm.pods, &entry).await?;
        let views = engine_views(&system, llm.cluster.apps.name()).await?;
        let recreated = pod.metadata.uid != old_uid && pod.metadata.deletion_timestamp.is_none();
        if recreated
            && condition(&pod, "ContainersReady")
            && gate.as_deref() == Some("False")
            && !ready
            && !views.is_empty()
            && views.iter().all(|&(r, _)| r == 1)
        {
            Ok(views)
        } else {
            Err(format!("recreated {recreated}, gate {gate:?}, Ready {ready}, engines {views:?}"))
        }
    })
    .await;
    mark(&format!(
        "restarting: engines (ready, panic) {held:?}; {} served, {} failed",
        load.ok(),
        load.failed()
    ));
    llm.wait_instances(2, "the restarted instance whole again").await;
    wait_engines(&llm, 2, "the engines counting 2 ready instances again").await;
    assert_eq!(gate_and_ready(&llm.pods, &entry).await.unwrap(), (Some("True".into()), true));
    mark(&format!("restarted: {} served, {} failed", load.ok(), load.failed()));

    // 2. A rolling update with a surge of 1 instance: a new instance, whole, then an old one deleted.
    let old = llm.plan.lock().unwrap().instances.clone();
    for &replaced in &old {
        llm.plan.lock().unwrap().surge = 1;
        wait_for(LONG, "the surge instance whole", async || {
            let (live, ready) = pods_of(&llm.pods, "llm").await?;
            if (live, ready) == (9, 9) { Ok(()) } else { Err(format!("{live} pods, {ready} Ready")) }
        })
        .await;
        wait_engines(&llm, 3, "the engines counting 3 ready instances during the surge").await;
        mark(&format!("surge: 3 instances {:?}", llm.plan.lock().unwrap().instances));
        {
            let mut plan = llm.plan.lock().unwrap();
            plan.instances.retain(|&i| i != replaced);
            plan.surge = 0;
        }
        llm.wait_instances(2, "the old instance gone").await;
        wait_engines(&llm, 2, "the engines counting 2 ready instances after the surge").await;
        mark(&format!("instance {replaced} replaced: {} served, {} failed", load.ok(), load.failed()));
    }
    let new = live_instances(&llm.pods).await;
    assert_eq!(new, llm.plan.lock().unwrap().instances, "the planned instances serve");
    assert!(new.len() == 2 && new.iter().all(|i| !old.contains(i)), "2 new instances {new:?}, old {old:?}");
    // Only new instances are left, so whatever is served from now on, they serve.
    let before = load.ok();
    wait_for(LONG, "requests served by the new instances", async || {
        if load.ok() >= before + 100 { Ok(()) } else { Err(format!("{} served since", load.ok() - before)) }
    })
    .await;

    let (ok, failures) = load.finish().await;
    let samples = sampler.finish().await;
    if samples.iter().any(|s| s.replicas > 2) {
        let system: Api<Pod> = Api::namespaced(llm.cluster.admin.clone(), &llm.cluster.system);
        eprintln!("decisions:\n{}", decision_traces(&system, llm.cluster.apps.name()).await);
    }
    llm.controller.abort();
    // The timeline, for whoever reads a failure or the figures.
    let mut last = None;
    for s in &samples {
        if last.as_ref() != Some(&(s.replicas, s.engines.clone())) {
            let at = s.at.saturating_duration_since(t0).as_millis();
            eprintln!("{at:>6} ms: spec.replicas {}, engines (ready, panic) {:?}", s.replicas, s.engines);
            last = Some((s.replicas, s.engines.clone()));
        }
    }
    let max_replicas = samples.iter().map(|s| s.replicas).max();
    let max_ready = samples.iter().flat_map(|s| s.engines.iter().map(|&(r, _)| r)).max();
    eprintln!(
        "{} samples ({:?} since steady): max spec.replicas {max_replicas:?}, max ready {max_ready:?}; {ok} \
         served, {} failed",
        samples.len(),
        steady.elapsed(),
        failures.len()
    );
    assert!(ok > 0 && failures.is_empty(), "{ok} served; failures: {failures:?}");
    assert!(samples.len() > 10, "sampled: {samples:?}");
    assert!(samples.iter().all(|s| s.replicas <= 2), "spec.replicas never above 2: {samples:?}");
    // From the steady state on, ebb never patches it: neither the restart nor the surge moves it.
    let moved: Vec<&Sample> = samples.iter().filter(|s| s.at >= steady && s.replicas != 2).collect();
    assert!(moved.is_empty(), "spec.replicas stays 2 once steady: {moved:?}");
    assert!(max_ready <= Some(3), "at most 3 ready instances, never pods: {samples:?}");
    assert!(llm.cluster.logs.exits().is_empty(), "no container exited: {:?}", llm.cluster.logs.exits());
}
