//! Replicas started with different bucket counts (a rollout that changes `--buckets`, or one replica left
//! from before) name different Leases, and would act on the same services. On the real control plane, in
//! process, as the `ebb-autoscaler` ServiceAccount: a replica with 3 buckets takes none while a replica
//! without buckets leads, and takes all three once it is gone; a replica without buckets then does not take
//! the leader Lease while the one with buckets lives.

use std::time::{Duration, Instant};

use ebb_test_support as support;
use support::autoscaler::{grant_autoscaler_rbac, start_leading, test_options};
use support::{TestNamespace, require, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the waiting replica is watched: several lease durations (the test options' is 10 s) of beats.
const WATCHED: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_another_bucket_count_never_act_beside_each_other() {
    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "bucket-counts").await;
    grant_autoscaler_rbac(&admin, &ns, "ebb-autoscaler").await;
    let sa_config = cp.service_account_kubeconfig(&admin, &ns, "ebb-autoscaler").await;
    let client = support::k8s::client_from_kubeconfig(&sa_config).await.unwrap();

    let single = start_leading(client.clone(), test_options(ns.name(), "single"), TIMEOUT).await;
    let mut options = test_options(ns.name(), "sharded");
    options.buckets = 3;
    let sharded = ebb_autoscaler::cluster::ClusterController::start(client.clone(), options).await.unwrap();
    let watched = Instant::now();
    while watched.elapsed() < WATCHED {
        assert!(
            sharded.buckets().is_empty(),
            "took {:?} while a replica without buckets leads",
            sharded.buckets()
        );
        assert!(single.is_leader(), "the replica without buckets keeps leading");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    single.shutdown().await;
    wait_for(TIMEOUT, "the sharded replica to take every bucket", async || {
        let held = sharded.buckets();
        if held == [0, 1, 2] { Ok(()) } else { Err(format!("holds {held:?}")) }
    })
    .await;

    // And the other way: a replica without buckets waits for the sharded one.
    let late = ebb_autoscaler::cluster::ClusterController::start(client, test_options(ns.name(), "late"))
        .await
        .unwrap();
    let watched = Instant::now();
    while watched.elapsed() < WATCHED {
        assert!(!late.is_leader(), "led while a replica with buckets acts");
        assert_eq!(sharded.buckets(), [0, 1, 2]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sharded.shutdown().await;
    wait_for(TIMEOUT, "the replica without buckets to lead once the sharded one is gone", async || {
        if late.is_leader() { Ok(()) } else { Err("not leading") }
    })
    .await;
    late.shutdown().await;
}
