//! Helpers for the autoscaler's end-to-end tests: its RBAC from `manifests/`,
//! a pod runtime that plays queue-proxies (`GET :9090/stats` with a load the test sets) and activators
//! (`Ebb-Probe: activator` on :8012), a stat-ingest client speaking the real wire format, and Event lookups.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ebb_config::names::{
    ACTIVATOR_DATA_PORT, INGEST_PATH, LABEL_COMPONENT, LABEL_SERVICE, QUEUE_PROXY_STATS_PORT,
};
use ebb_config::wire::{INGEST_CONTENT_TYPE, IngestFrame, PodStat};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::task::AbortHandle;

use super::node::{BoxFuture, PodRuntime, RunningPod};

/// Grants ServiceAccount `namespace/account` exactly the autoscaler's RBAC as `manifests/` gives it (rendered
/// by [`super::manifests::grant`]): the ClusterRole and its binding (renamed after the namespace) and the
/// Role and its binding in `namespace`. `tests/manifests_k8s.rs` checks that these equal docs/rbac.md and
/// `ebb_autoscaler::cluster::rbac::RULES`.
pub async fn grant_autoscaler_rbac(admin: &Client, namespace: &str, account: &str) {
    assert_eq!(account, "ebb-autoscaler", "manifests/ binds its RBAC to ServiceAccount ebb-autoscaler");
    super::manifests::grant(admin, namespace, account).await;
}

/// The bearer token in a kubeconfig written by `ControlPlane::service_account_kubeconfig`.
pub fn token_of(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).expect("read the kubeconfig");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token in the kubeconfig")
        .trim()
        .to_owned()
}

/// Fake pods: each service pod serves `GET :9090/stats` with its service's load; each activator pod answers
/// `Ebb-Probe: activator` on :8012.
#[derive(Clone, Default)]
pub struct FakePods {
    load: Arc<Mutex<HashMap<String, f64>>>,
    servers: Arc<Mutex<HashMap<String, AbortHandle>>>,
    stuck: Arc<Mutex<HashSet<String>>>,
}

impl FakePods {
    /// Sets the average concurrency every pod of `service` reports.
    pub fn set_load(&self, service: &str, concurrency: f64) {
        self.load.lock().unwrap().insert(service.to_owned(), concurrency);
    }

    /// Makes `service`'s pods from now on wait for their image forever (`ImagePullBackOff`, as a kubelet
    /// reports it): Pending and never Ready, so the service has no data. (Not Failed: a ReplicaSet would
    /// replace a failed pod at once, over and over.)
    pub fn stick_pulling(&self, service: &str) {
        self.stuck.lock().unwrap().insert(service.to_owned());
    }
}

impl PodRuntime for FakePods {
    fn start(&self, pod: RunningPod) -> BoxFuture<Result<(), String>> {
        let labels = pod.pod.metadata.labels.clone().unwrap_or_default();
        let key = format!("{}/{}", pod.namespace(), pod.name());
        let this = self.clone();
        Box::pin(async move {
            let (port, role) = if labels.get(LABEL_COMPONENT).map(String::as_str) == Some("activator") {
                (ACTIVATOR_DATA_PORT, FakeRole::Activator)
            } else if let Some(service) = labels.get(LABEL_SERVICE) {
                if this.stuck.lock().unwrap().contains(service) {
                    let container =
                        pod.pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone());
                    let message = "Back-off pulling image \"example.invalid/app:1\"";
                    return pod
                        .set_waiting(&container.unwrap_or_default(), "ImagePullBackOff", message)
                        .await;
                }
                (QUEUE_PROXY_STATS_PORT, FakeRole::Pod(service.clone(), pod.name().to_owned()))
            } else {
                return Ok(());
            };
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(pod.ip.into(), port))
                .await
                .map_err(|e| format!("bind {}:{port}: {e}", pod.ip))?;
            let load = this.load.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let role = role.clone();
                    let load = load.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |_req| {
                            let body = match &role {
                                FakeRole::Activator => Bytes::from_static(b"activator"),
                                FakeRole::Pod(service, name) => {
                                    let c = load.lock().unwrap().get(service).copied().unwrap_or(0.0);
                                    let stat = PodStat {
                                        pod: name.clone(),
                                        average_concurrency: c,
                                        average_proxied_concurrency: 0.0,
                                        request_count: c,
                                        proxied_request_count: 0.0,
                                        process_uptime_secs: 10.0,
                                        timestamp_ms: 0,
                                        average_queued: Some(0.0),
                                    };
                                    Bytes::from(stat.encode().unwrap())
                                }
                            };
                            async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body))) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            this.servers.lock().unwrap().insert(key, task.abort_handle());
            Ok(())
        })
    }

    fn stop(&self, pod: RunningPod, _grace: std::time::Duration) -> BoxFuture<()> {
        if let Some(task) =
            self.servers.lock().unwrap().remove(&format!("{}/{}", pod.namespace(), pod.name()))
        {
            task.abort();
        }
        Box::pin(async {})
    }
}

impl Drop for FakePods {
    fn drop(&mut self) {
        if Arc::strong_count(&self.servers) == 1 {
            for task in self.servers.lock().unwrap().values() {
                task.abort();
            }
        }
    }
}

#[derive(Clone)]
enum FakeRole {
    Activator,
    Pod(String, String),
}

/// A concurrency stat of an activator for `namespace/name`.
pub fn activator_frame(namespace: &str, name: &str, concurrency: f64) -> IngestFrame {
    IngestFrame {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        stat: PodStat {
            pod: "activator-test".to_owned(),
            average_concurrency: concurrency,
            average_proxied_concurrency: 0.0,
            request_count: concurrency,
            proxied_request_count: 0.0,
            process_uptime_secs: 1.0,
            timestamp_ms: 0,
            average_queued: Some(0.0),
        },
    }
}

/// Sends `frames` on one `POST /v1/stats` stream and returns the status.
pub async fn send_stats(addr: SocketAddr, token: Option<&str>, frames: &[IngestFrame]) -> u16 {
    let mut body = Vec::new();
    for frame in frames {
        body.extend(frame.encode().unwrap());
    }
    let client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::post(format!("http://{addr}{INGEST_PATH}"))
        .header(http::header::CONTENT_TYPE, INGEST_CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    if let Some(token) = token {
        request.headers_mut().insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    }
    let response = client.request(request).await.expect("ingest request");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// A controller's options for a test: `identity`, watching only namespace `ns` (its own), its ports on :0 so
/// tests run side by side, and a pass every 250 ms.
pub fn test_options(ns: &str, identity: &str) -> ebb_autoscaler::cluster::Options {
    let mut options = ebb_autoscaler::cluster::Options::new(ns, identity);
    options.watch_namespaces = vec![ns.to_owned()];
    options.ingest_addr = "127.0.0.1:0".parse().unwrap();
    options.metrics_addr = "127.0.0.1:0".parse().unwrap();
    options.sync_interval = std::time::Duration::from_millis(250);
    options
}

/// Starts a controller and waits up to `timeout` until it leads.
pub async fn start_leading(
    client: Client,
    options: ebb_autoscaler::cluster::Options,
    timeout: std::time::Duration,
) -> ebb_autoscaler::cluster::ClusterController {
    let controller = ebb_autoscaler::cluster::ClusterController::start(client, options)
        .await
        .expect("start the controller");
    crate::wait_for(timeout, "the controller to lead", async || {
        if controller.is_leader() { Ok(()) } else { Err("not leading yet") }
    })
    .await;
    controller
}

/// The notes of the events.k8s.io Events about object `name` in `namespace` with `reason`.
pub async fn event_notes(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: &str,
) -> Result<Vec<String>, String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.note)
        .collect())
}

/// Waits up to `timeout` for an Event about `name` in `namespace` with `reason` whose note contains every
/// text of `contains`; its note.
pub async fn wait_event_note(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: &str,
    contains: &[&str],
    timeout: std::time::Duration,
) -> String {
    crate::wait_for(timeout, &format!("a {reason} Event on {name} mentioning {contains:?}"), async || {
        let notes = event_notes(client, namespace, name, reason).await?;
        notes
            .into_iter()
            .find(|n| contains.iter().all(|c| n.contains(c)))
            .ok_or_else(|| "none yet".to_owned())
    })
    .await
}

/// The Prometheus page served at `addr` (`GET /metrics`), body only.
pub async fn metrics_text(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics port");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n").await.expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read the metrics page");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
    body.to_owned()
}
