//! Restart and failover end to end on a real control plane, with ebb-system from
//! `manifests/` run as real processes and the example chat service under load through the test gateway
//! (support::cluster, as tests/e2e_k8s.rs):
//!
//! - the autoscaler leader's process is killed (SIGKILL, as a crash of the process or its node: no preStop,
//!   no SIGTERM, so it cannot release the Lease) under load: the other replica takes the Lease and scales
//!   the service up when the load rises, and no request fails;
//! - kube-apiserver is killed and started again mid-load: no ebb process exits, no request to the warm
//!   pods fails while it is down (in serve mode neither the gateway nor the queue-proxies need the API), and
//!   once it is back the autoscaler decides again (the load stops and the service goes to zero).
//!
//! Its own test binary, since restarting the API server disturbs every test sharing the control plane; the
//! tests here run one after the other ([`SERIAL`]).

use std::net::SocketAddr;
use std::time::Duration;

use ebb_test_support as support;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use support::cluster::{Cluster, WAIT, gateway_load, ready_ips};
use support::gateway::Gateway;
use support::{ControlPlane, wait_for};

/// The tests of this binary run one at a time: one restarts the API server that both use.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Lease the autoscaler replicas share (in the system namespace).
const LEASE: &str = "ebb-autoscaler";
/// The autoscaler pods.
const AUTOSCALERS: &str = "app.kubernetes.io/component=autoscaler";

/// Installs ebb-system with short windows and deploys the chat service (8 concurrent requests per pod at a
/// 70% target, at most 4 pods, no burst capacity kept so warm pods are in the path by themselves), with a
/// gateway following its slice. `None` without a control plane (the test returns).
async fn install(prefix: &str) -> Option<(Cluster, Gateway)> {
    let cluster =
        Cluster::install(prefix, &[("stable-window", "6s"), ("scale-to-zero-grace-period", "2s")]).await?;
    cluster.deploy_scaling_chat("chat").await;
    let gateway = cluster.gateway("chat").await;
    Some((cluster, gateway))
}

/// The data addresses of the Ready pods of the chat service (sorted).
async fn pod_endpoints(cluster: &Cluster) -> Vec<SocketAddr> {
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    let ips = ready_ips(&pods, "ebb.dev/service=chat").await.unwrap_or_default();
    ips.iter().map(|ip| format!("{ip}:8012").parse().unwrap()).collect()
}

/// The Lease's holder and transitions.
async fn lease(cluster: &Cluster) -> Result<(String, i32), String> {
    let leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), &cluster.system);
    let lease = leases.get_opt(LEASE).await.map_err(|e| e.to_string())?.ok_or("no Lease yet")?;
    let spec = lease.spec.unwrap_or_default();
    match spec.holder_identity.filter(|h| !h.is_empty()) {
        Some(holder) => Ok((holder, spec.lease_transitions.unwrap_or(0))),
        None => Err("the Lease has no holder".into()),
    }
}

/// Scenario 1: SIGKILL of the autoscaler leader under load; the other replica takes the Lease, the load
/// rises and the new leader scales up; no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_autoscaler_leader_under_load_hands_over_and_scaling_continues() {
    let _serial = SERIAL.lock().await;
    let Some((cluster, gateway)) = install("e2e-leader").await else { return };
    // 8 clients over 8 per pod at a 70% target (5.6) want 2 pods.
    let load = gateway_load(gateway.addr(), 8);
    cluster.wait_replicas("chat", "= 2", |r| r == 2).await;
    cluster.wait_ready_pods(&cluster.apps, "ebb.dev/service=chat", 2).await;

    let (leader, transitions) = wait_for(WAIT, "a Lease holder", async || lease(&cluster).await).await;
    let replicas = cluster.wait_ready_pods(&cluster.system, AUTOSCALERS, 2).await;
    assert_eq!(replicas.len(), 2);
    let pid = cluster.logs.kill(&cluster.system, &leader, "autoscaler").expect("kill the leader's process");
    eprintln!("killed the autoscaler leader {leader} (pid {pid})");

    // Three times the load: 24 clients want 5 pods, capped at 4. Only the new leader can scale now.
    let more = gateway_load(gateway.addr(), 16);
    let (holder, after) = wait_for(WAIT, "another replica to take the Lease", async || {
        let (holder, after) = lease(&cluster).await?;
        if holder != leader { Ok((holder, after)) } else { Err(format!("still held by {holder}")) }
    })
    .await;
    assert!(after > transitions, "the takeover counts as a transition: {transitions} -> {after}");
    let autoscalers: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.system);
    let pods = autoscalers.list(&ListParams::default().labels(AUTOSCALERS)).await.unwrap();
    let names: Vec<_> = pods.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert!(names.contains(&holder), "the new holder {holder} is one of the autoscaler pods {names:?}");
    cluster.wait_replicas("chat", ">= 3 (the new leader scales up)", |r| r >= 3).await;
    wait_for(WAIT, "3 or more Ready pods", async || {
        let ready = pod_endpoints(&cluster).await;
        if ready.len() >= 3 { Ok(()) } else { Err(format!("ready: {ready:?}")) }
    })
    .await;
    let served = load.ok() + more.ok();
    wait_for(WAIT, "requests served by the scaled-up service", async || {
        let now = load.ok() + more.ok();
        if now > served + 50 { Ok(()) } else { Err(format!("{now} served")) }
    })
    .await;
    let ((ok, mut failures), (more_ok, more_failures)) = (load.finish().await, more.finish().await);
    failures.extend(more_failures);
    let total = ok + more_ok;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the failover: {failures:?}",
        failures.len(),
        total as usize + failures.len()
    );
    assert!(cluster.replicas("chat").await.unwrap() <= 4, "never above max-scale");
    assert_eq!(cluster.logs.exits(), Vec::<String>::new(), "no container exited on its own");
    eprintln!("{total} requests served across the failover; the Lease went from {leader} to {holder}");
}

/// Scenario 2: kube-apiserver killed and restarted under load on warm pods: no ebb process exits, no request
/// fails, and the autoscaler decides again once the API is back (the load stops, the service goes to zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_kube_apiserver_mid_load_loses_nothing_and_decisions_resume() {
    let _serial = SERIAL.lock().await;
    let Some((cluster, gateway)) = install("e2e-apiserver").await else { return };
    let load = gateway_load(gateway.addr(), 8);
    cluster.wait_replicas("chat", "= 2", |r| r == 2).await;
    // Warm: the slice lists the two pods, and so does the gateway.
    cluster
        .wait_path("chat", "serve", async || {
            let pods = pod_endpoints(&cluster).await;
            if pods.len() == 2 { pods } else { Vec::new() }
        })
        .await;
    wait_for(WAIT, "the gateway to follow the slice to the pods", async || {
        let (mut following, pods) = (gateway.endpoints(), pod_endpoints(&cluster).await);
        following.sort();
        if following == pods { Ok(()) } else { Err(format!("gateway {following:?}, pods {pods:?}")) }
    })
    .await;

    let before = load.ok();
    ControlPlane::shared().restart_api_server(Duration::from_secs(10)).await;
    let during = load.ok() - before;
    assert!(during > 0, "requests were served while the API server was down");
    assert_eq!(load.failed(), 0, "no request failed while the API server was down");

    // Decisions resume: idle, the service goes to zero and the slice back to the activators.
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        ok as usize + failures.len()
    );
    cluster.wait_replicas("chat", "= 0 (decided after the restart)", |r| r == 0).await;
    cluster.wait_path("chat", "proxy", async || cluster.activator_endpoints().await).await;
    assert_eq!(cluster.logs.exits(), Vec::<String>::new(), "no ebb process exited");
    eprintln!("{during} requests served while kube-apiserver was down, {ok} in all");
}
