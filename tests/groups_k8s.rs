//! Role groups of Deployments, with ebb installed from `manifests/` on the real control
//! plane and pods run as real processes: the prefill/decode example (`manifests/examples/prefill-decode`: 2
//! prefill pods and 1 decode pod, the entry, per instance) woken from zero by a burst of requests that all
//! succeed, with no decode pod before its instance's prefill pods are ready; scaled to 2 instances (6 pods)
//! under load and back to zero together. And bad groups, reported in Events, `status.ebb.dev/group` and
//! `ebb status`, and left alone, by the autoscaler in-process (as ServiceAccount `ebb-autoscaler` with the
//! base RBAC): a second installation in this binary would share two cores with the first.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebb_autoscaler::cluster::ClusterController;
use ebb_test_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::autoscaler::{event_notes, grant_autoscaler_rbac, start_leading, test_options};
use support::cluster::{Cluster, WAIT, complete, failed_completions, gateway_load, http_client};
use support::manifests::{find, render_in};
use support::paths::in_repo;
use support::{ControlPlane, TestNamespace, require, wait_for};

/// What the pods showed once: live decode pods and ready prefill pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    decode: usize,
    prefill_ready: usize,
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One listing of the namespace's pods (one consistent read): live decode pods, ready prefill pods.
async fn seen(pods: &Api<Pod>) -> Result<Seen, String> {
    let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
    let live = |p: &&Pod| p.metadata.deletion_timestamp.is_none();
    let label = |p: &Pod, key: &str, value: &str| {
        p.metadata.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str) == Some(value)
    };
    let decode = list.items.iter().filter(live).filter(|p| label(p, "ebb.dev/service", "decode")).count();
    let prefill_ready = list
        .items
        .iter()
        .filter(live)
        .filter(|p| label(p, "app.kubernetes.io/name", "prefill") && is_ready(p))
        .count();
    Ok(Seen { decode, prefill_ready })
}

/// Watches the pods until stopped, keeping every listing in which a decode pod exists beyond the instances
/// whose 2 prefill pods are ready (the gate broken), and whether it saw the gate hold (prefill starting,
/// no decode pod).
struct GateWatch {
    stop: Arc<AtomicBool>,
    broken: Arc<Mutex<Vec<Seen>>>,
    held: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl GateWatch {
    fn start(pods: Api<Pod>) -> GateWatch {
        let (stop, broken, held) = (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::default());
        let task = {
            let (stop, broken, held): (_, Arc<Mutex<Vec<Seen>>>, Arc<AtomicBool>) =
                (stop.clone(), Arc::clone(&broken), Arc::clone(&held));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(seen) = seen(&pods).await {
                        if seen.decode > seen.prefill_ready / 2 {
                            broken.lock().unwrap().push(seen);
                        }
                        if seen.decode == 0 && seen.prefill_ready < 2 {
                            held.store(true, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        GateWatch { stop, broken, held, task }
    }

    async fn finish(self) -> (Vec<Seen>, bool) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let broken = self.broken.lock().unwrap().clone();
        (broken, self.held.load(Ordering::Relaxed))
    }
}

/// The example's two Deployments, tuned for a test: decode starts at zero with 6 s windows, no retention, no
/// burst capacity and at most 2 instances; prefill loads for 4 s, decode for 1 s.
fn example(apps: &str) -> (Value, Value) {
    let objects = render_in(&in_repo("manifests/examples/prefill-decode"), apps).expect("render the example");
    let mut decode = find(&objects, "Deployment", "decode").expect("the decode Deployment").clone();
    let mut prefill = find(&objects, "Deployment", "prefill").expect("the prefill Deployment").clone();
    let annotations = &mut decode["metadata"]["annotations"];
    for (key, value) in [
        ("autoscaling.knative.dev/initial-scale", "0"),
        ("autoscaling.knative.dev/window", "6s"),
        ("autoscaling.knative.dev/scale-to-zero-pod-retention-period", "0s"),
        ("autoscaling.knative.dev/target-burst-capacity", "0"),
        ("autoscaling.knative.dev/max-scale", "2"),
    ] {
        annotations[key] = json!(value);
    }
    let args = |delay: &str| {
        json!([
            "--model",
            "demo",
            "--startup-delay",
            delay,
            "--tokens-per-second",
            "200",
            "--concurrency",
            "8"
        ])
    };
    decode["spec"]["template"]["spec"]["containers"][0]["args"] = args("1s");
    prefill["spec"]["template"]["spec"]["containers"][0]["args"] = args("4s");
    prefill["spec"]["replicas"] = json!(0);
    (decode, prefill)
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> Result<i32, String> {
    let d = deployments.get(name).await.map_err(|e| e.to_string())?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

/// Waits until decode and prefill have `want` replicas and ready pods between them.
async fn wait_group(cluster: &Cluster, (decode, prefill): (i32, i32), what: &str) {
    let deployments = cluster.deployments();
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    wait_for(Duration::from_secs(120), what, async || {
        let now = (replicas(&deployments, "decode").await?, replicas(&deployments, "prefill").await?);
        let seen = seen(&pods).await?;
        let ready = (seen.decode as i32, seen.prefill_ready as i32);
        if now == (decode, prefill) && (decode == 0 || ready == (decode, prefill)) {
            Ok(())
        } else {
            Err(format!("replicas (decode, prefill) {now:?}, live decode / ready prefill pods {ready:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefill_decode_group_wakes_whole_scales_as_one_and_goes_to_zero_together() {
    let config =
        [("allow-zero-initial-scale", "true"), ("stable-window", "6s"), ("scale-to-zero-grace-period", "2s")];
    let Some(cluster) = Cluster::install("group", &config).await else { return };
    let (decode, prefill) = example(&cluster.apps);
    let deployments = cluster.deployments();
    for object in [prefill, decode] {
        let deployment: Deployment = serde_json::from_value(object).expect("a Deployment");
        deployments.create(&PostParams::default(), &deployment).await.expect("create a member");
    }
    wait_group(&cluster, (0, 0), "the group idle at zero").await;
    cluster.wait_path("decode", "proxy", async || cluster.activator_endpoints().await).await;
    let gateway = cluster.gateway("decode").await;

    // A burst at zero: prefill starts first, decode once both prefill pods are ready, and every request is
    // served by then.
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    let gate = GateWatch::start(pods.clone());
    let http = http_client();
    let requests = (0..20).map(|_| {
        let (http, addr) = (http.clone(), gateway.addr());
        tokio::spawn(async move { complete(&http, addr).await })
    });
    let failed = failed_completions(requests).await;
    assert!(
        failed.is_empty(),
        "every request from zero is served: {failed:?}\n{}",
        cluster.logs.tails("", 20)
    );

    // Load for more than one instance: two instances, 6 pods, the decode pods again only once whole.
    let load = gateway_load(gateway.addr(), 16);
    wait_group(&cluster, (2, 4), "two whole instances under load").await;
    let notes: Vec<String> =
        cluster.events("prefill", "Scaled").await.into_iter().filter_map(|e| e.note).collect();
    for step in
        ["replicas 0 -> 2: group \"llm\" at 1 instance(s)", "replicas 2 -> 4: group \"llm\" at 2 instance(s)"]
    {
        assert!(notes.iter().any(|n| n.contains(step)), "{step:?} in {notes:?}");
    }
    let (ok, failures) = load.finish().await;
    assert!(ok > 0 && failures.is_empty(), "{ok} served; failures: {failures:?}");
    let (broken, held) = gate.finish().await;
    assert!(
        broken.is_empty(),
        "a decode pod existed before its instance's prefill pods were ready: {broken:?}"
    );
    assert!(held, "the watch saw prefill starting while no decode pod existed");

    // Idle: the whole group goes to zero.
    wait_group(&cluster, (0, 0), "the group back at zero").await;
    assert!(cluster.logs.exits().is_empty(), "no container exited: {:?}", cluster.logs.exits());
}

/// A Deployment of `group` in the namespace: an entry (labelled `ebb.dev/service`) or not, with
/// `ebb.dev/group-pods` when given.
fn member(name: &str, group: &str, entry: bool, pods: Option<&str>) -> Deployment {
    let mut labels = json!({"ebb.dev/group": group, "app.kubernetes.io/name": name});
    if entry {
        labels["ebb.dev/service"] = json!(name);
    }
    let annotations = pods.map(|p| json!({"ebb.dev/group-pods": p})).unwrap_or(json!({}));
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            },
        },
    }))
    .unwrap()
}

/// The autoscaler in-process as ServiceAccount `ebb-autoscaler` with the base RBAC, leading, in a fresh
/// namespace: enough to see what it reports (no pods need to run). `None` without a control plane.
async fn controller(
    prefix: &str,
) -> Option<(&'static ControlPlane, Client, TestNamespace, ClusterController)> {
    let cp = require::control_plane()?;
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, prefix).await;
    grant_autoscaler_rbac(&admin, &ns, "ebb-autoscaler").await;
    let sa_config = cp.service_account_kubeconfig(&admin, &ns, "ebb-autoscaler").await;
    let client = support::k8s::client_from_kubeconfig(&sa_config).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for(WAIT, "the autoscaler's RBAC to take effect", async || {
        deployments.list(&ListParams::default()).await.map(drop)
    })
    .await;
    let options = test_options(ns.name(), "replica-0");
    let controller = start_leading(client, options, WAIT).await;
    Some((cp, admin, ns, controller))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_groups_are_reported_in_events_annotations_and_ebb_status_and_left_alone() {
    let Some((cp, admin, ns, controller)) = controller("badgroup").await else { return };
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    for deployment in [
        member("lonely-prefill", "orphans", false, Some("2")),
        member("lonely-decode", "orphans", false, None),
        member("twin-a", "twins", true, None),
        member("twin-b", "twins", true, None),
        member("ratio-prefill", "ratio", false, Some("0")),
        member("ratio-decode", "ratio", true, None),
    ] {
        deployments.create(&PostParams::default(), &deployment).await.expect("create a member");
    }
    let expect = [
        ("lonely-prefill", "group \"orphans\" is invalid, so ebb scales none of its members: no entry"),
        ("lonely-decode", "group \"orphans\" is invalid"),
        (
            "twin-a",
            "group \"twins\" is invalid, so ebb scales none of its members: 2 entries (twin-a, twin-b)",
        ),
        ("twin-b", "2 entries (twin-a, twin-b)"),
        (
            "ratio-prefill",
            "ratio-prefill: ebb.dev/group-pods: \"0\": must be a whole number between 1 and 1000",
        ),
        ("ratio-decode", "ratio-prefill: ebb.dev/group-pods: \"0\""),
    ];
    for (name, message) in expect {
        wait_for(WAIT, &format!("an InvalidGroup Event on {name} saying {message:?}"), async || {
            let notes = event_notes(&admin, &ns, name, "InvalidGroup").await?;
            if notes.iter().any(|n| n.contains(message)) { Ok(()) } else { Err(format!("{notes:?}")) }
        })
        .await;
        let annotations = wait_for(WAIT, &format!("status.ebb.dev/group on {name}"), async || {
            let d = deployments.get(name).await.map_err(|e| e.to_string())?;
            let annotations = d.metadata.annotations.unwrap_or_default();
            match annotations.get("status.ebb.dev/group") {
                Some(note) if note.contains(message) => Ok(annotations),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        // An entry created after its group's bad member was never part of a valid group, and the note is
        // written after the pass's scaling: had ebb acted on it, its desired replicas would be written.
        // (twin-a, created alone first, was a valid group until twin-b came.)
        if name == "ratio-decode" {
            assert!(
                !annotations.contains_key("status.ebb.dev/desired"),
                "{name} is left alone: {annotations:?}"
            );
        }
    }

    let kubeconfig = cp.kubeconfig_path().to_str().unwrap().to_owned();
    let output = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["status", "--kubeconfig", &kubeconfig, "-n", &ns])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    for line in [
        format!("group: {}/twin-a: group \"twins\" is invalid", ns.name()),
        format!("group: {}/ratio-decode: group \"ratio\" is invalid", ns.name()),
    ] {
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }

    // Fixed (one entry left): the group is valid, the note goes and ebb scales it.
    let fix = json!({"metadata": {"labels": {"ebb.dev/service": null}}});
    deployments
        .patch("twin-b", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&fix))
        .await
        .expect("unlabel twin-b");
    wait_for(WAIT, "twin-a valid again: no status.ebb.dev/group, desired written", async || {
        let d = deployments.get("twin-a").await.map_err(|e| e.to_string())?;
        let annotations = d.metadata.annotations.unwrap_or_default();
        if !annotations.contains_key("status.ebb.dev/group")
            && annotations.contains_key("status.ebb.dev/desired")
        {
            Ok(())
        } else {
            Err(format!("{annotations:?}"))
        }
    })
    .await;
    controller.shutdown().await;
}
