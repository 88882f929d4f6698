//! Services spread over three autoscaler replicas by bucket Leases, end to end on a real control plane, with
//! ebb-system from `manifests/` run as real processes (`EBB_BUCKETS=3`, the autoscaler Deployment at three
//! replicas) and the example chat service under load through the test gateway (support::cluster):
//!
//! - the three buckets are spread evenly, one each;
//! - the holder of the chat service's bucket is killed (SIGKILL: it cannot release anything) under load; one
//!   of the other two takes the bucket over, scales chat up when the load rises, and no request fails;
//! - chat's replicas never go down while its load only rises (no flapping), and the bucket changes hands once.
//!
//! Its own test binary, since it kills processes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebb_autoscaler::cluster::buckets::{bucket_of, lease_name};
use ebb_config::ServiceId;
use ebb_test_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use support::autoscaler::metrics_text;
use support::cluster::{Cluster, WAIT, gateway_load, ready_ips};
use support::wait_for;

/// The buckets, one per replica.
const BUCKETS: u32 = 3;
/// The autoscaler pods.
const AUTOSCALERS: &str = "app.kubernetes.io/component=autoscaler";

/// Each bucket's holder and transitions, by bucket.
async fn holders(cluster: &Cluster) -> Result<Vec<(String, i32)>, String> {
    let leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), &cluster.system);
    let mut out = Vec::new();
    for b in 0..BUCKETS {
        let name = lease_name("ebb-autoscaler", b, BUCKETS);
        let lease = leases.get_opt(&name).await.map_err(|e| e.to_string())?.ok_or(format!("no {name}"))?;
        let spec = lease.spec.unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty()).ok_or(format!("{name} has no holder"))?;
        out.push((holder, spec.lease_transitions.unwrap_or(0)));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_buckets_and_a_killed_ones_bucket_is_taken_over_under_load() {
    let config = [("stable-window", "6s"), ("scale-to-zero-grace-period", "2s")];
    let buckets = BUCKETS.to_string();
    let Some(cluster) = Cluster::install_with("e2e-buckets", &config, &[("EBB_BUCKETS", &buckets)]).await
    else {
        return;
    };
    let autoscalers: Api<Deployment> = Api::namespaced(cluster.admin.clone(), &cluster.system);
    let three = json!({"spec": {"replicas": 3}});
    autoscalers
        .patch_scale("ebb-autoscaler", &PatchParams::default(), &Patch::Merge(&three))
        .await
        .expect("scale the autoscaler to three replicas");
    cluster.wait_ready_pods(&cluster.system, AUTOSCALERS, 3).await;
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.system);
    let listed = pods.list(&ListParams::default().labels(AUTOSCALERS)).await.expect("list the autoscalers");
    let replicas: Vec<String> = listed.items.iter().filter_map(|p| p.metadata.name.clone()).collect();

    // Even spread: every bucket held, each replica holding one.
    let spread = wait_for(WAIT, "one bucket held by each replica", async || {
        let holders = holders(&cluster).await?;
        let distinct: BTreeSet<&String> = holders.iter().map(|(h, _)| h).collect();
        if distinct.len() == 3 { Ok(holders) } else { Err(format!("holders {holders:?}")) }
    })
    .await;
    for (holder, _) in &spread {
        assert!(replicas.contains(holder), "{holder} is one of the autoscaler pods {replicas:?}");
    }
    // Each replica says so on its metrics: one bucket held.
    wait_for(WAIT, "ebb_autoscaler_buckets_held 1 on every replica", async || {
        let mut held = Vec::new();
        for ip in ready_ips(&pods, AUTOSCALERS).await? {
            let page = metrics_text(format!("{ip}:9090").parse().unwrap()).await;
            held.extend(
                page.lines()
                    .filter_map(|l| l.strip_prefix("ebb_autoscaler_buckets_held "))
                    .map(str::to_owned),
            );
        }
        if held == ["1", "1", "1"] { Ok(()) } else { Err(format!("buckets_held {held:?}")) }
    })
    .await;

    cluster.deploy_scaling_chat("chat").await;
    let gateway = cluster.gateway("chat").await;
    let chat_bucket = bucket_of(&ServiceId::new(cluster.apps.name(), "chat"), BUCKETS) as usize;
    // 8 clients over 8 per pod at a 70% target (5.6) want 2 pods.
    let load = gateway_load(gateway.addr(), 8);
    cluster.wait_replicas("chat", "= 2", |r| r == 2).await;
    cluster.wait_ready_pods(&cluster.apps, "ebb.dev/service=chat", 2).await;

    // Chat's replicas, every 200 ms from now to the end: they may only rise.
    let history = Arc::new(Mutex::new(Vec::<i32>::new()));
    let sampler = {
        let (history, deployments) = (history.clone(), cluster.deployments());
        tokio::spawn(async move {
            loop {
                if let Ok(d) = deployments.get("chat").await {
                    history.lock().unwrap().push(d.spec.and_then(|s| s.replicas).unwrap_or(0));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let (victim, transitions) = holders(&cluster).await.unwrap()[chat_bucket].clone();
    let pid = cluster.logs.kill(&cluster.system, &victim, "autoscaler").expect("kill the bucket's holder");
    let killed = Instant::now();
    eprintln!("killed {victim} (pid {pid}), the holder of chat's bucket {chat_bucket}");

    // Three times the load: 24 clients want 5 pods, capped at 4. Only the bucket's new holder can scale.
    let more = gateway_load(gateway.addr(), 16);
    let (heir, after) = wait_for(WAIT, "another replica to take chat's bucket", async || {
        let (holder, after) = holders(&cluster).await?[chat_bucket].clone();
        if holder != victim { Ok((holder, after)) } else { Err(format!("still held by {holder}")) }
    })
    .await;
    let took = killed.elapsed();
    assert!(replicas.contains(&heir), "the heir {heir} is one of the autoscaler pods {replicas:?}");
    assert_eq!(after, transitions + 1, "the bucket changed hands once");
    cluster.wait_replicas("chat", ">= 3 (the bucket's new holder scales up)", |r| r >= 3).await;
    // The dead replica's pod is replaced by its ReplicaSet: whatever the spread settles on, every bucket is
    // held by a live replica and chat's bucket did not bounce back and forth.
    let settled = wait_for(WAIT, "every bucket held by a live replica", async || {
        let holders = holders(&cluster).await?;
        if holders.iter().all(|(h, _)| *h != victim) { Ok(holders) } else { Err(format!("{holders:?}")) }
    })
    .await;
    assert!(settled[chat_bucket].1 <= transitions + 2, "chat's bucket flapped: {settled:?}");

    let served = load.ok() + more.ok();
    wait_for(WAIT, "requests served by the scaled-up service", async || {
        let now = load.ok() + more.ok();
        if now > served + 50 { Ok(()) } else { Err(format!("{now} served")) }
    })
    .await;
    let ((ok, mut failures), (more_ok, more_failures)) = (load.finish().await, more.finish().await);
    sampler.abort();
    failures.extend(more_failures);
    let total = ok + more_ok;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the takeover: {failures:?}",
        failures.len(),
        total as usize + failures.len()
    );
    let history = history.lock().unwrap().clone();
    assert!(
        history.windows(2).all(|w| w[0] <= w[1]),
        "chat's replicas went down under rising load: {history:?}"
    );
    assert!(history.iter().all(|r| *r <= 4), "never above max-scale: {history:?}");
    eprintln!(
        "{total} requests served; chat's bucket {chat_bucket} went from {victim} to {heir} in {took:?}; \
         replicas {history:?}"
    );
}
