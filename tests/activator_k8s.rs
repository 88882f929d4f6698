//! The activator's Kubernetes endpoint source against a real control plane: Deployments and pods become
//! services and endpoints, requests flow through the activator to a real queue-proxy on the pod's address,
//! blocked pods fail requests fast, annotation changes apply live, and a deleted Deployment stops routing. The
//! activator runs with exactly the RBAC its manifests grant (pods and Deployments: list and watch).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use ebb_activator::handler::{Activator, Options};
use ebb_activator::metrics::Metrics;
use ebb_activator::registry::Registry;
use ebb_activator::server::{DrainOptions, Server};
use ebb_activator::stats::ChannelSink;
use ebb_config::ServiceId;
use ebb_test_support as support;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::node::BoxFuture;
use support::{
    ControlPlane, NodeEmulator, PodRuntime, Readiness, RunningPod, TestNamespace, require, wait_for,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct QueueProxyCli {
    #[command(flatten)]
    args: ebb_queue_proxy::cli::Args,
}

/// Pods labelled `test/broken` stand for a container that cannot start: nothing runs and they never
/// become Ready, so the emulator writes no status after the test's own.
fn is_broken(pod: &RunningPod) -> bool {
    pod.pod.metadata.labels.as_ref().is_some_and(|l| l.contains_key("test/broken"))
}

/// Runs a real queue-proxy on each pod's address (data port 8012, as in a cluster) in front of one shared
/// upstream, except for pods labelled `test/broken`, which never start.
struct QueueProxyRuntime {
    upstream: SocketAddr,
    running: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl PodRuntime for QueueProxyRuntime {
    fn start(&self, pod: RunningPod) -> BoxFuture<Result<(), String>> {
        if is_broken(&pod) {
            return Box::pin(async { Ok(()) });
        }
        let (stop, stopped) = oneshot::channel::<()>();
        self.running.lock().unwrap().insert(pod.name().to_owned(), stop);
        let (ip, upstream, name) = (pod.ip.to_string(), self.upstream.to_string(), pod.name().to_owned());
        Box::pin(async move {
            let argv = [
                "queue-proxy",
                "--upstream",
                &upstream,
                "--bind-address",
                &ip,
                "--data-port",
                "8012",
                "--admin-port",
                "0",
                "--stats-port",
                "0",
                "--metrics-port",
                "0",
                "--pod-name",
                &name,
                "--drain-quiet-period",
                "0s",
            ];
            let config = QueueProxyCli::try_parse_from(argv).map_err(|e| e.to_string())?.args.into_config();
            let proxy = ebb_queue_proxy::QueueProxy::bind(config.map_err(|e| e.to_string())?).await;
            let proxy = proxy.map_err(|e| e.to_string())?;
            tokio::spawn(proxy.run(async move { drop(stopped.await) }));
            Ok(())
        })
    }

    fn stop(&self, pod: RunningPod, _grace: Duration) -> BoxFuture<()> {
        if let Some(stop) = self.running.lock().unwrap().remove(pod.name()) {
            let _ = stop.send(());
        }
        Box::pin(async {})
    }
}

async fn hello_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                    b"hello from the pod",
                ))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// The activator's RBAC as `manifests/` grants it (rendered by [`support::manifests::grant`]), bound to
/// ServiceAccount `ebb-activator` of `ns`, whose client the source uses.
async fn activator_client(cp: &ControlPlane, admin: &kube::Client, ns: &str) -> kube::Client {
    support::manifests::grant(admin, ns, "ebb-activator").await;
    cp.service_account_client(admin, ns, "ebb-activator").await
}

fn deployment(name: &str, annotations: serde_json::Value, broken: bool) -> Deployment {
    let mut labels = json!({"ebb.dev/service": name});
    if broken {
        labels["test/broken"] = json!("yes");
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"ebb.dev/service": name}, "annotations": annotations},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"ebb.dev/service": name}},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "model", "image": "demo"}]}}
        }
    }))
    .unwrap()
}

async fn get(activator: SocketAddr, host: &str) -> (u16, String) {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = hyper::Request::get(format!("http://{activator}/"))
        .header("host", host)
        .body(Full::new(Bytes::new()));
    let response = client.request(request.unwrap()).await.unwrap();
    let status = response.status().as_u16();
    (status, String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes()).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_services_route_through_the_activator_with_least_rbac() {
    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "activator").await;
    let runtime = QueueProxyRuntime { upstream: hello_upstream().await, running: Mutex::default() };
    let _node = NodeEmulator::builder()
        .namespace(&ns)
        .readiness(Readiness::hook(|pod| async move { !is_broken(&pod) }))
        .runtime(runtime)
        .start(&admin)
        .await;

    // The activator, in process, following the cluster through a client with only its own rights.
    let client = activator_client(cp, &admin, &ns).await;
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new(false, 10_000, metrics.clone()));
    let source = ebb_activator::kube_source::Options {
        namespaces: vec![ns.to_string()],
        own_namespace: ns.to_string(),
    };
    let source = ebb_activator::kube_source::KubeSource::new(client, source, None);
    tokio::spawn(registry.clone().follow_source(Box::new(source)));
    let (stats, _stats_rx) = mpsc::channel(1000);
    let options =
        Options { name: "activator-0".into(), max_queued_total: 10_000, retry_after: Duration::from_secs(1) };
    let activator =
        Arc::new(Activator::new(registry.clone(), Arc::new(ChannelSink::new(stats)), metrics, options));
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let drain = DrainOptions { quiet_period: Duration::ZERO, deadline: Duration::from_secs(5) };
    let server = Server::bind(activator, any, any, drain).await.unwrap();
    let addr = server.addresses().0;
    tokio::spawn(server.run(std::future::pending()));

    // A Deployment becomes a service with its annotations; its pod is probed and used.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let chat = deployment(
        "chat",
        json!({"ebb.dev/container-concurrency": "2", "ebb.dev/hosts": "chat.example.com"}),
        false,
    );
    deployments.create(&PostParams::default(), &chat).await.unwrap();
    let key = ServiceId::new(&*ns, "chat");
    let service =
        wait_for(WAIT, "the service to be known", async || registry.get(&key).ok_or("not yet")).await;
    assert_eq!(service.config().container_concurrency, 2);
    wait_for(WAIT, "a ready endpoint", async || match service.status().ready {
        1 => Ok(()),
        n => Err(format!("{n} ready")),
    })
    .await;
    assert_eq!(get(addr, "chat.example.com").await, (200, "hello from the pod".into()));
    assert_eq!(get(addr, &format!("chat.{ns}.svc.cluster.local")).await.0, 200);

    // An annotation change applies live.
    let patch = json!({"metadata": {"annotations": {"ebb.dev/container-concurrency": "4"}}});
    deployments.patch("chat", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for(WAIT, "the new concurrency", async || match service.config().container_concurrency {
        4 => Ok(()),
        cc => Err(format!("cc {cc}")),
    })
    .await;

    // A pod that cannot pull its image fails queued requests fast, naming why.
    deployments.create(&PostParams::default(), &deployment("broken", json!({}), true)).await.unwrap();
    let broken = ServiceId::new(&*ns, "broken");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let pod = wait_for(WAIT, "the broken pod to be bound", async || {
        let list = pods.list(&kube::api::ListParams::default().labels("ebb.dev/service=broken")).await;
        list.map_err(|e| e.to_string())?
            .items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
            .ok_or("no pod yet".to_string())
    })
    .await;
    let status = json!({"status": {"containerStatuses": [{
        "name": "model", "ready": false, "restartCount": 0, "image": "demo", "imageID": "",
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"demo\""}}
    }]}});
    let name = pod.metadata.name.unwrap();
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    wait_for(WAIT, "the service to be blocked", async || {
        registry.get(&broken).and_then(|s| s.status().blocked).ok_or("not blocked yet")
    })
    .await;
    let (status, body) = get(addr, &format!("broken.{ns}")).await;
    assert_eq!(status, 503);
    assert!(body.contains("ImagePullBackOff: container model: Back-off pulling image"), "{body}");

    // A deleted Deployment stops routing.
    deployments.delete("chat", &DeleteParams::default()).await.unwrap();
    wait_for(WAIT, "the service to be removed", async || match registry.get(&key) {
        None => Ok(()),
        Some(_) => Err("still known"),
    })
    .await;
    assert_eq!(get(addr, "chat.example.com").await.0, 404);
}
