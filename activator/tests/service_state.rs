//! The activator's view of a service: pods become usable only after answering their probe on a real socket,
//! capacity follows the ready pods, blocked pods are reported, and removal wakes waiters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use ebb_activator::endpoints::PodInfo;
use ebb_activator::metrics::ServiceMetrics;
use ebb_activator::probe::Prober;
use ebb_activator::service::{Service, Status};
use ebb_config::ServiceConfig;
use ebb_config::ServiceId;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A stand-in queue-proxy that answers `Ebb-Probe: queue` with 200 `queue` once `ready` is true.
async fn fake_queue_proxy(ready: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let ready = ready.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let ok = *ready.borrow();
                    async move {
                        let (status, body) = if ok {
                            (StatusCode::OK, "queue")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                        };
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn service(cc: u32) -> Arc<Service> {
    let mut config = ServiceConfig::default().data_plane;
    config.container_concurrency = cc;
    let (key, metrics) = (ServiceId::new("default", "demo"), ServiceMetrics::unregistered());
    Arc::new(Service::new(key, config, metrics, Arc::new(AtomicUsize::new(1)), 10_000))
}

async fn wait_for(
    status: &mut watch::Receiver<Status>,
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    let found = tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| done(s))).await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}")).unwrap().clone()
}

#[tokio::test]
async fn a_pod_is_used_only_after_it_answers_its_probe() {
    let (ready, ready_rx) = watch::channel(false);
    let addr = fake_queue_proxy(ready_rx).await;
    let service = service(2);
    let mut status = service.watch();
    service.set_pods(vec![PodInfo::live("demo-1", addr)], &Prober::new());

    // Listening but answering 503: not usable, so requests keep queueing.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(service.status().ready, 0);
    assert_eq!(service.breaker.capacity(), 0);
    assert!(service.pick(&[]).is_none());

    ready.send(true).unwrap();
    wait_for(&mut status, "the pod to be ready", |s| s.ready == 1).await;
    assert_eq!(service.breaker.capacity(), 2, "CC 2 x 1 pod / 1 activator");
    assert_eq!(&*service.pick(&[]).unwrap().endpoint().name, "demo-1");
}

#[tokio::test]
async fn terminating_and_departed_pods_stop_taking_requests_at_once() {
    let (_ready, ready_rx) = watch::channel(true);
    let (a, b) = (fake_queue_proxy(ready_rx.clone()).await, fake_queue_proxy(ready_rx).await);
    let service = service(1);
    let mut status = service.watch();
    let prober = Prober::new();
    service.set_pods(vec![PodInfo::live("a", a), PodInfo::live("b", b)], &prober);
    wait_for(&mut status, "two ready pods", |s| s.ready == 2).await;
    assert_eq!(service.breaker.capacity(), 2);

    let mut leaving = PodInfo::live("a", a);
    leaving.terminating = true;
    service.set_pods(vec![leaving, PodInfo::live("b", b)], &prober);
    assert_eq!(service.status().ready, 1);
    assert_eq!(service.endpoint_names(), [Arc::<str>::from("b")]);
    service.set_pods(vec![], &prober);
    assert_eq!((service.status().ready, service.breaker.capacity()), (0, 0));
}

#[tokio::test]
async fn pods_that_cannot_start_block_the_service_with_their_reason() {
    let service = service(1);
    let mut pod = PodInfo::live("demo-1", "127.0.0.1:9".parse().unwrap());
    pod.addr = None;
    pod.blocked = Some("ImagePullBackOff: image example/model:9 not found".into());
    let mut starting = pod.clone();
    starting.name = "demo-2".into();
    starting.blocked = None;
    service.set_pods(vec![pod.clone(), starting], &Prober::new());
    assert_eq!(service.status().blocked, None, "one pod may still start");
    service.set_pods(vec![pod], &Prober::new());
    assert_eq!(
        service.status().blocked.as_deref(),
        Some("ImagePullBackOff: image example/model:9 not found")
    );
}

#[tokio::test]
async fn a_failed_pod_is_dropped_and_probed_again() {
    let (ready, ready_rx) = watch::channel(true);
    let addr = fake_queue_proxy(ready_rx).await;
    let service = service(0);
    let mut status = service.watch();
    let prober = Prober::new();
    service.set_pods(vec![PodInfo::live("demo-1", addr)], &prober);
    wait_for(&mut status, "the pod to be ready", |s| s.ready == 1).await;
    ready.send(false).unwrap();
    service.pod_failed(&"demo-1".into(), &prober);
    assert_eq!(service.status().ready, 0);
    ready.send(true).unwrap();
    wait_for(&mut status, "the pod to answer again", |s| s.ready == 1).await;
}

#[tokio::test]
async fn removal_is_visible_to_waiters() {
    let service = service(1);
    let mut status = service.watch();
    service.remove();
    assert!(wait_for(&mut status, "removal", |s| s.removed).await.removed);
}

#[tokio::test]
async fn a_pod_the_kubelet_reports_not_ready_leaves_the_rotation_until_it_answers_again() {
    let (ready, ready_rx) = watch::channel(true);
    let addr = fake_queue_proxy(ready_rx).await;
    let service = service(0);
    let mut status = service.watch();
    let prober = Prober::new();
    let kubelet = |ready: bool| PodInfo { ready: Some(ready), ..PodInfo::live("demo-1", addr) };
    // Used on the activator's own probe, before the kubelet says Ready.
    service.set_pods(vec![kubelet(false)], &prober);
    wait_for(&mut status, "the pod to be ready", |s| s.ready == 1).await;
    service.set_pods(vec![kubelet(true)], &prober);
    assert_eq!(service.status().ready, 1);

    // The queue-proxy drains (or its container fails): the kubelet's probe fails and the pod leaves at once.
    ready.send(false).unwrap();
    service.set_pods(vec![kubelet(false)], &prober);
    assert_eq!(service.status().ready, 0);
    assert!(service.pick(&[]).is_none());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(service.status().ready, 0, "the probe keeps it out while it answers 503");
    ready.send(true).unwrap();
    wait_for(&mut status, "the pod to answer again", |s| s.ready == 1).await;
}

#[tokio::test]
async fn an_entry_held_for_its_instance_takes_nothing_until_released() {
    let (_ready, ready_rx) = watch::channel(true);
    let addr = fake_queue_proxy(ready_rx).await;
    let service = service(0);
    let mut status = service.watch();
    let prober = Prober::new();
    let entry = |held: bool| PodInfo { held, ..PodInfo::live("llm-0", addr) };
    service.set_pods(vec![entry(true)], &prober);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(service.status().ready, 0, "its own probe passes, but its instance is not whole");
    assert!(service.pick(&[]).is_none());
    service.set_pods(vec![entry(false)], &prober);
    wait_for(&mut status, "the released entry", |s| s.ready == 1).await;
}
