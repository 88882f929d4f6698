//! Item 7 with real processes: two `ebb autoscaler` replicas, run as the `ebb-autoscaler` ServiceAccount
//! with exactly its RBAC, share one Lease; one holds it; SIGKILL of the holder hands the Lease to the other
//! within 15 s, which keeps scaling; SIGTERM releases it at once. Its own test binary, since it kills
//! processes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ebb_test_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::autoscaler::grant_autoscaler_rbac;
use support::supervisor::Supervisor;
use support::{TestNamespace, require, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

fn replica(supervisor: &Supervisor, kubeconfig: &Path, ns: &str, identity: &str, log: &Path) -> Child {
    supervisor
        .spawn(
            Command::new(env!("CARGO_BIN_EXE_ebb"))
                .args(["autoscaler", "--namespace", ns, "--identity", identity, "--watch-namespaces", ns])
                .args(["--ingest-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0"])
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap()),
        )
        .expect("spawn ebb autoscaler")
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>, String> {
    let lease = leases.get_opt("ebb-autoscaler").await.map_err(|e| e.to_string())?.ok_or("no Lease yet")?;
    Ok(lease.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty()))
}

#[tokio::test]
async fn the_lease_moves_to_the_other_replica_within_15_s_of_the_leader_dying() {
    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "as-failover").await;
    grant_autoscaler_rbac(&admin, &ns, "ebb-autoscaler").await;
    let kubeconfig = cp.service_account_kubeconfig(&admin, &ns, "ebb-autoscaler").await;
    let sa = support::k8s::client_from_kubeconfig(&kubeconfig).await.unwrap();
    wait_for(TIMEOUT, "the autoscaler's RBAC to take effect", async || {
        Api::<Deployment>::namespaced(sa.clone(), &ns).list(&ListParams::default()).await.map(drop)
    })
    .await;
    let supervisor = Supervisor::start(None).unwrap();
    let logs = std::env::temp_dir().join(format!("ebb-failover-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let mut children = vec![
        replica(&supervisor, &kubeconfig, &ns, "replica-a", &logs.join("a.log")),
        replica(&supervisor, &kubeconfig, &ns, "replica-b", &logs.join("b.log")),
    ];
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
    let first = wait_for(TIMEOUT, "a holder of the Lease", async || {
        holder(&leases).await?.ok_or_else(|| "none".to_owned())
    })
    .await;
    let (leader, follower) = if first == "replica-a" { (0, 1) } else { (1, 0) };
    let other = if first == "replica-a" { "replica-b" } else { "replica-a" };

    // The leader scales: an autoscaled Deployment scaled by someone else is set back.
    create(&admin, &ns, "kept", 1).await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let bump = async |n: i32| {
        let scale = json!({"spec": {"replicas": n}});
        deployments.patch_scale("kept", &PatchParams::default(), &Patch::Merge(&scale)).await.unwrap();
    };
    // Wait until the controller knows the Deployment (its status annotations appear), then fight it.
    wait_annotated(&deployments).await;
    bump(3).await;
    wait_replicas(&deployments, 1).await;

    // SIGKILL the leader: the other takes over within 15 s.
    children[leader].kill().unwrap();
    let _ = children[leader].wait();
    let killed = Instant::now();
    wait_for(Duration::from_secs(15), "the other replica to take the Lease", async || {
        match holder(&leases).await? {
            Some(h) if h == other => Ok(()),
            h => Err(format!("holder {h:?}")),
        }
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(15), "failover took {took:?}");
    // ...and acts.
    bump(4).await;
    wait_replicas(&deployments, 1).await;

    // SIGTERM releases the Lease at once and exits cleanly.
    let pid = children[follower].id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    wait_for(Duration::from_secs(5), "the Lease to be released", async || match holder(&leases).await? {
        None => Ok(()),
        Some(h) => Err(format!("still held by {h}")),
    })
    .await;
    let status = children[follower].wait().unwrap();
    assert!(status.success(), "exit status {status:?}; log: {}", logs.join("b.log").display());
    supervisor.shutdown(&mut children);
    let _ = std::fs::remove_dir_all(&logs);
    println!("failover took {took:?}");
}

async fn create(client: &Client, ns: &str, name: &str, replicas: i32) {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"ebb.dev/service": name}},
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
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
}

async fn wait_annotated(deployments: &Api<Deployment>) {
    wait_for(TIMEOUT, "the status annotations on kept", async || {
        let d = deployments.get("kept").await.map_err(|e| e.to_string())?;
        let a = d.metadata.annotations.unwrap_or_default();
        a.get("status.ebb.dev/desired").map(drop).ok_or_else(|| "none yet".to_owned())
    })
    .await;
}

async fn wait_replicas(deployments: &Api<Deployment>, want: i32) {
    wait_for(TIMEOUT, &format!("kept at {want} replicas"), async || {
        let d = deployments.get("kept").await.map_err(|e| e.to_string())?;
        let n = d.spec.and_then(|s| s.replicas).unwrap_or(1);
        if n == want { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
}
