//! The end-to-end harness itself, against the real v1.20.2 control plane: it starts, the real controller
//! manager turns a Deployment into Pending pods, the node emulator binds, addresses, readies and finalizes
//! them, a ServiceAccount without RBAC is refused, each test has its own namespace, and supervised
//! processes die with the test process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ebb_test_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::supervisor::Supervisor;
use support::{NodeEmulator, Readiness, TestNamespace, require, wait_for};

/// Generous: the machine has 2 cores, and other test binaries may be running beside this one.
const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn control_plane_serves_v1_20_and_each_test_gets_its_own_namespace() {
    let Some(cp) = require::control_plane() else { return };
    let client = cp.client().await;
    let version = client.apiserver_version().await.expect("GET /version");
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "20"), "{version:?}");
    assert!(cp.kubeconfig_path().is_file());

    let first = TestNamespace::create(&client, "harness").await;
    let second = TestNamespace::create(&client, "harness").await;
    assert!(first.starts_with("harness-") && second.starts_with("harness-"), "{first} {second}");
    assert_ne!(first.name(), second.name());

    // Dropping deletes it: gone, or terminating while the namespace controller empties it.
    let name = first.name().to_string();
    drop(first);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_for(TIMEOUT, &format!("namespace {name} to be deleted"), async || {
        match namespaces.get_opt(&name).await.map_err(|e| e.to_string())? {
            Some(ns) if ns.metadata.deletion_timestamp.is_none() => Err("not deleted".to_string()),
            _ => Ok(()),
        }
    })
    .await;
}

#[tokio::test]
async fn deployment_pods_are_bound_addressed_made_ready_and_finalized() {
    let Some(cp) = require::control_plane() else { return };
    let client = cp.client().await;
    let ns = TestNamespace::create(&client, "harness-pods").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    deployments.create(&PostParams::default(), &deployment("web", 2)).await.expect("create the Deployment");

    // The real deployment and replicaset controllers make the pods; without a scheduler they stay Pending.
    wait_for(TIMEOUT, "2 Pending, unbound pods", async || {
        let list = web_pods(&pods).await?;
        let pending = list.iter().filter(|p| phase(p) == "Pending" && node(p).is_none()).count();
        if list.len() == 2 && pending == 2 {
            Ok(())
        } else {
            Err(format!("{} pods, {pending} pending", list.len()))
        }
    })
    .await;

    let emulator = NodeEmulator::builder().namespace(&ns).readiness(Readiness::Manual).start(&client).await;
    let running = wait_for(TIMEOUT, "2 pods bound and Running with an address", async || {
        let list = web_pods(&pods).await?;
        let running: Vec<_> = list
            .iter()
            .filter(|p| node(p) == Some(emulator.node_name()) && phase(p) == "Running" && ip(p).is_some())
            .cloned()
            .collect();
        if running.len() == 2 {
            Ok(running)
        } else {
            Err(format!("{} of {} running", running.len(), list.len()))
        }
    })
    .await;
    let mut ips: Vec<_> = running.iter().map(|p| ip(p).unwrap()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 2, "pods share an address: {ips:?}");
    // Loopback addresses of the pods' own, never the node's (127.0.0.1).
    assert!(
        ips.iter()
            .all(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback()) && ip != "127.0.0.1"),
        "{ips:?}"
    );
    assert!(running.iter().all(|p| !ready(p)), "Readiness::Manual pods are not Ready until told");

    // The test decides when they become Ready.
    for pod in &running {
        let name = pod.metadata.name.as_deref().unwrap();
        emulator.set_ready(&ns, name, true).await.expect("set_ready");
    }
    wait_for(TIMEOUT, "the Deployment to count 2 ready replicas", async || {
        let deployment = deployments.get("web").await.map_err(|e| e.to_string())?;
        let ready = deployment.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        if ready == 2 { Ok(()) } else { Err(format!("{ready} ready replicas")) }
    })
    .await;
    let list = web_pods(&pods).await.unwrap();
    assert!(list.iter().all(ready), "pods Ready with ready containers");
    assert_eq!(emulator.pods().iter().filter(|p| p.ready).count(), 2, "{:?}", emulator.pods());

    // Scaling to zero deletes the pods gracefully; only the emulator (the kubelet) can finish that.
    let scale = json!({"spec": {"replicas": 0}});
    deployments.patch_scale("web", &PatchParams::default(), &Patch::Merge(&scale)).await.expect("scale to 0");
    wait_for(TIMEOUT, "the pods to be finalized", async || {
        let left = web_pods(&pods).await?;
        if left.is_empty() { Ok(()) } else { Err(format!("{} pods left", left.len())) }
    })
    .await;
    wait_for(TIMEOUT, "the emulator to forget the pods", async || {
        if emulator.pods().is_empty() { Ok(()) } else { Err(format!("{:?}", emulator.pods())) }
    })
    .await;
}

#[tokio::test]
async fn a_service_account_without_rbac_cannot_read_secrets() {
    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "harness-rbac").await;
    let reader = cp.service_account_client(&admin, &ns, "reader").await;
    let secrets: Api<Secret> = Api::namespaced(reader.clone(), &ns);

    // 403, not 401: the token authenticates, and RBAC refuses.
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => {
            let user = format!("system:serviceaccount:{ns}:reader");
            assert!(status.message.contains(&user), "{status:?}");
        }
        other => panic!("expected 403 Forbidden for a ServiceAccount without RBAC, got {other:?}"),
    }

    // The same client may once a Role allows it: the refusal was RBAC's.
    grant_secret_reading(&admin, &ns, "reader").await;
    wait_for(TIMEOUT, "the RoleBinding to let the ServiceAccount list Secrets", async || {
        secrets.list(&ListParams::default()).await.map(drop)
    })
    .await;
}

/// The supervisor's guarantee: a supervised process dies, and its directory goes, when the test process
/// that started it is killed (SIGKILL: no destructor runs). The test process is this binary, run again for
/// [`supervised_child`].
#[test]
fn supervised_processes_die_when_the_test_process_is_killed() {
    let dir = std::env::temp_dir().join(format!("ebb-supervisor-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut test_process = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "supervised_child", "--ignored", "--nocapture"])
        .env(CHILD_DIR_ENV, &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = dir.join("pid");
    let pid =
        poll(|| std::fs::read_to_string(&pid_file).ok().filter(|s| s.ends_with('\n')), "the child's pid");
    let pid = pid.trim().to_string();
    assert!(alive(&pid), "the supervised process runs");

    test_process.kill().unwrap();
    test_process.wait().unwrap();
    poll(|| (!alive(&pid)).then_some(()), "the supervised process to die");
    poll(|| (!dir.exists()).then_some(()), "the supervisor to remove its directory");
}

const CHILD_DIR_ENV: &str = "EBB_SUPERVISOR_TEST_DIR";

/// Started by [`supervised_processes_die_when_the_test_process_is_killed`]: supervises a `sleep` and waits
/// to be killed. Does nothing when run on its own.
#[test]
#[ignore = "run by supervised_processes_die_when_the_test_process_is_killed"]
fn supervised_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV).map(PathBuf::from) else { return };
    let supervisor = Supervisor::start(Some(&dir)).unwrap();
    let mut sleep = supervisor.spawn(Command::new("sleep").arg("300")).unwrap();
    std::fs::write(dir.join("pid"), format!("{}\n", sleep.id())).unwrap();
    // Until the parent test kills this process.
    let _ = sleep.wait();
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: &str) -> bool {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")).unwrap_or_default();
    stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with(['Z', 'X']) && !rest.is_empty())
}

/// Polls `check` every 20 ms for up to 10 s (for the synchronous test above).
fn poll<T>(mut check: impl FnMut() -> Option<T>, what: &str) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            },
        },
    }))
    .unwrap()
}

async fn web_pods(pods: &Api<Pod>) -> Result<Vec<Pod>, String> {
    pods.list(&ListParams::default().labels("app=web")).await.map(|l| l.items).map_err(|e| e.to_string())
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

fn ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref().and_then(|s| s.pod_ip.clone())
}

/// Ready=True, and every container ready.
fn ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    let condition = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let containers = status.container_statuses.iter().flatten().all(|c| c.ready);
    condition && containers && !status.container_statuses.as_deref().unwrap_or_default().is_empty()
}

async fn grant_secret_reading(admin: &Client, namespace: &str, account: &str) {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "secret-reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "secret-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), namespace).create(&PostParams::default(), &role).await.unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}
