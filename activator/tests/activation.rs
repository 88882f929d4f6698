//! The activator end to end on loopback: real upstreams, real queue-proxies, the activator's real server, and
//! the endpoint source driven by the test.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ebb_activator::endpoints::{Change, PodInfo};
use ebb_config::Mode;
use support::*;

/// An upstream that answers `hello` after `delay`, counting the requests it served.
async fn counting_upstream(delay: Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let addr = upstream(move |_req| {
        let count = count.clone();
        async move {
            tokio::time::sleep(delay).await;
            count.fetch_add(1, Ordering::Relaxed);
            hyper::Response::new(full("hello"))
        }
    })
    .await;
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_at_zero_all_succeed_once_a_pod_is_ready() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|_| {}));
    let client = client();
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let (client, request) = (client.clone(), get(activator.addr, "demo", "/"));
            tokio::spawn(async move { client.request(request).await.map(|r| r.status().as_u16()) })
        })
        .collect();
    eventually("all 1000 requests to queue", || activator.activator.waiting() == 1000).await;

    // The pod becomes ready 500 ms later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (upstream, served) = counting_upstream(Duration::ZERO).await;
    let pod = queue_proxy(upstream, "demo-1", 0).await;
    activator.pods(&key, &[("demo-1", pod.data)]);

    for request in requests {
        let status =
            tokio::time::timeout(DEADLINE, request).await.expect("a request never finished").unwrap();
        assert_eq!(status.expect("a request failed"), 200);
    }
    assert_eq!(served.load(Ordering::Relaxed), 1000);
    assert_eq!(activator.activator.waiting(), 0);
}

#[tokio::test]
async fn the_cold_start_stat_reaches_the_autoscaler_before_any_pod_exists() {
    let mut activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|_| {}));
    let (client, request) = (client(), get(activator.addr, "demo", "/"));
    let pending = tokio::spawn(async move { client.request(request).await.unwrap().status().as_u16() });

    let frame = tokio::time::timeout(DEADLINE, activator.stats.recv()).await.expect("no stat").unwrap();
    assert_eq!((frame.namespace.as_str(), frame.name.as_str()), ("default", "demo"));
    assert_eq!((frame.stat.average_concurrency, frame.stat.request_count), (1.0, 1.0));
    assert_eq!(frame.stat.pod, "activator-test");
    assert_eq!(activator.registry.get(&key).unwrap().status().ready, 0, "no pod existed when it was sent");

    let (upstream, _) = counting_upstream(Duration::ZERO).await;
    let pod = queue_proxy(upstream, "demo-1", 0).await;
    activator.pods(&key, &[("demo-1", pod.data)]);
    assert_eq!(pending.await.unwrap(), 200);

    // The seconds' frames then count the request once as an arrival and once as forwarded, which the
    // autoscaler takes off the pod's marked arrivals even when the two fall in different seconds.
    let (mut arrived, mut forwarded) = (0.0, 0.0);
    while forwarded < 1.0 {
        let frame = tokio::time::timeout(DEADLINE, activator.stats.recv()).await.expect("no stat").unwrap();
        arrived += frame.stat.request_count;
        forwarded += frame.stat.proxied_request_count;
    }
    assert_eq!((arrived, forwarded), (1.0, 1.0));
}

/// The `dur` of each `Server-Timing` metric, by name.
fn server_timing(response: &hyper::Response<hyper::body::Incoming>) -> Vec<(String, f64)> {
    let Some(header) = response.headers().get("server-timing") else { return Vec::new() };
    header
        .to_str()
        .unwrap()
        .split(", ")
        .map(|metric| {
            let mut fields = metric.split(';');
            let name = fields.next().unwrap().to_owned();
            let dur = fields.find_map(|f| f.strip_prefix("dur=")).expect("every phase has a duration");
            (name, dur.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn requests_that_waited_for_a_cold_start_are_told_its_phases() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|_| {}));
    let (http, request) = (client(), get(activator.addr, "demo", "/"));
    let pending = tokio::spawn(async move { http.request(request).await.unwrap() });
    eventually("the request to queue", || activator.activator.waiting() == 1).await;

    // The pod object appears 200 ms in, without an address yet; 300 ms later it is up and ready.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let starting = PodInfo { addr: None, ..PodInfo::live("demo-1", "127.0.0.1:1".parse().unwrap()) };
    activator.registry.apply(Change::Pods { key: key.clone(), pods: vec![starting] });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (upstream, _) = counting_upstream(Duration::from_millis(50)).await;
    let pod = queue_proxy(upstream, "demo-1", 0).await;
    activator.pods(&key, &[("demo-1", pod.data)]);

    let response = tokio::time::timeout(DEADLINE, pending).await.expect("no answer").unwrap();
    assert_eq!(response.status(), 200);
    let phases = server_timing(&response);
    let names: Vec<&str> = phases.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["ebb-scale", "ebb-pod-start", "ebb-forward", "ebb-cold-start"]);
    let (scale, pod_start, forward, total) = (phases[0].1, phases[1].1, phases[2].1, phases[3].1);
    assert!(scale >= 200.0, "the pod appeared after 200 ms: {phases:?}");
    assert!(pod_start >= 300.0, "it took 300 ms more to be ready: {phases:?}");
    assert!(forward >= 50.0, "the upstream takes 50 ms to answer: {phases:?}");
    assert!((scale + pod_start + forward - total).abs() < 0.01, "the phases add up to the wait: {phases:?}");

    // A warm request waited for nothing and says nothing; the histograms hold the cold start.
    let warm = client().request(get(activator.addr, "demo", "/")).await.unwrap();
    assert_eq!(warm.status(), 200);
    assert!(server_timing(&warm).is_empty(), "{:?}", warm.headers());
    let metrics =
        text(client().request(get(activator.metrics_addr, "demo", "/metrics")).await.unwrap()).await;
    for family in ["pod_created", "pod_ready", "first_byte", "wait"] {
        let series = format!(
            "ebb_activator_cold_start_{family}_seconds_count{{namespace=\"default\",service=\"demo\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn pods_seen_before_their_service_are_used_once_it_appears() {
    // The pod and Deployment watches are independent: at an activator's start the pods may come first.
    let activator = TestActivator::start(10_000).await;
    let (upstream, _) = counting_upstream(Duration::ZERO).await;
    let pod = queue_proxy(upstream, "demo-1", 0).await;
    let key = ebb_config::ServiceId::new("default", "demo");
    activator.pods(&key, &[("demo-1", pod.data)]);
    assert!(activator.registry.get(&key).is_none());
    activator.service("demo", data_plane(|_| {}));
    let service = activator.registry.get(&key).unwrap();
    eventually("the pod to be ready", || service.status().ready == 1).await;
    let response = client().request(get(activator.addr, "demo", "/")).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let activator = TestActivator::start(10_000).await;
    activator.service("demo", data_plane(|spec| spec.max_queued = 2));
    let client = client();
    let _queued: Vec<_> = (0..2)
        .map(|_| {
            let (client, request) = (client.clone(), get(activator.addr, "demo", "/"));
            tokio::spawn(async move { client.request(request).await })
        })
        .collect();
    eventually("two requests to queue", || activator.activator.waiting() == 2).await;

    let response = client.request(get(activator.addr, "demo", "/")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body = text(response).await;
    assert!(body.contains("too many requests are waiting for this service to start"), "{body}");
    assert!(body.contains("\"service\":\"default/demo\""), "{body}");
}

#[tokio::test]
async fn the_global_cap_bounds_waiting_requests_across_services() {
    let activator = TestActivator::start(1).await;
    activator.service("a", data_plane(|_| {}));
    activator.service("b", data_plane(|_| {}));
    let (client, first) = (client(), get(activator.addr, "a", "/"));
    let c = client.clone();
    let _waiting = tokio::spawn(async move { c.request(first).await });
    eventually("one request to queue", || activator.activator.waiting() == 1).await;
    let response = client.request(get(activator.addr, "b", "/")).await.unwrap();
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn the_activation_timeout_answers_503_in_the_clients_shape() {
    let activator = TestActivator::start(10_000).await;
    activator.service("demo", data_plane(|spec| spec.activation_timeout = Duration::from_millis(300)));
    let request = http::Request::post(format!("http://{}/v1/chat/completions", activator.addr))
        .header("host", "demo")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body["error"]["code"], "activation_timeout");
    assert_eq!(
        body["error"]["message"],
        "the service did not become ready within its activation timeout (300ms)"
    );
}

#[tokio::test]
async fn a_crash_looping_pod_fails_the_queue_fast() {
    let activator = TestActivator::start(10_000).await;
    let key =
        activator.service("demo", data_plane(|spec| spec.activation_timeout = Duration::from_secs(600)));
    let client = client();
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let (client, request) = (client.clone(), get(activator.addr, "demo", "/"));
            tokio::spawn(async move {
                let response = client.request(request).await.unwrap();
                (response.status().as_u16(), text(response).await)
            })
        })
        .collect();
    eventually("three requests to queue", || activator.activator.waiting() == 3).await;

    let mut pod = PodInfo::live("demo-1", "127.0.0.1:9".parse().unwrap());
    pod.addr = None;
    pod.blocked = Some("CrashLoopBackOff: back-off 40s restarting failed container model".into());
    activator.registry.apply(Change::Pods { key, pods: vec![pod] });
    for request in queued {
        // Far sooner than the 600 s activation timeout.
        let (status, body) = tokio::time::timeout(DEADLINE, request).await.unwrap().unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("the service's pods cannot start: CrashLoopBackOff: back-off 40s"), "{body}");
    }
}

#[tokio::test]
async fn a_client_that_disconnects_leaves_the_queue_at_once() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|spec| spec.container_concurrency = 1));
    let (client, request) = (client(), get(activator.addr, "demo", "/"));
    let waiting = tokio::spawn(async move { client.request(request).await });
    eventually("the request to queue", || activator.activator.waiting() == 1).await;
    waiting.abort();
    let service = activator.registry.get(&key).unwrap();
    eventually("the queue to empty", || activator.activator.waiting() == 0 && service.breaker.queued() == 0)
        .await;
    // The wait it had is recorded all the same.
    let metrics = admin(activator.metrics_addr, "/metrics").await.1;
    let count = "ebb_activator_queue_wait_seconds_count{namespace=\"default\",service=\"demo\"}";
    assert_eq!(series(&metrics, count), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn two_pods_with_cc_1_share_load_evenly() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|spec| spec.container_concurrency = 1));
    let ((a, served_a), (b, served_b)) = (
        counting_upstream(Duration::from_millis(30)).await,
        counting_upstream(Duration::from_millis(30)).await,
    );
    let (pod_a, pod_b) = (queue_proxy(a, "demo-a", 1).await, queue_proxy(b, "demo-b", 1).await);
    activator.pods(&key, &[("demo-a", pod_a.data), ("demo-b", pod_b.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("both pods to be ready", || service.status().ready == 2).await;

    let client = client();
    for _ in 0..10 {
        // Two at once: with one slot per pod, each pod takes exactly one.
        let (x, y) = tokio::join!(
            client.request(get(activator.addr, "demo", "/")),
            client.request(get(activator.addr, "demo", "/"))
        );
        assert_eq!((x.unwrap().status().as_u16(), y.unwrap().status().as_u16()), (200, 200));
    }
    assert_eq!((served_a.load(Ordering::Relaxed), served_b.load(Ordering::Relaxed)), (10, 10));
}

#[tokio::test]
async fn a_pod_that_disappears_mid_stream_does_not_take_other_requests_with_it() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|_| {}));
    // Pod A streams a token every 50 ms for a long time; pod B answers at once.
    let (streaming, kill_a) = killable_upstream(|_req| async {
        let ticks = futures::stream::unfold(0u32, |i| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            (i < 1000).then(|| {
                (
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(
                        "token\n",
                    ))),
                    i + 1,
                )
            })
        });
        hyper::Response::new(http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(ticks)))
    })
    .await;
    let pod_a = queue_proxy(streaming, "demo-a", 0).await;
    activator.pods(&key, &[("demo-a", pod_a.data)]);
    let client = client();
    let stream = client.request(get(activator.addr, "demo", "/stream")).await.unwrap();
    let mut body = stream.into_body();
    assert!(http_body_util::BodyExt::frame(&mut body).await.unwrap().is_ok(), "the stream started on pod A");

    let (b, served_b) = counting_upstream(Duration::ZERO).await;
    let pod_b = queue_proxy(b, "demo-b", 0).await;
    activator.pods(&key, &[("demo-a", pod_a.data), ("demo-b", pod_b.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("pod B to be ready", || service.status().ready == 2).await;

    // Pod A's model process dies mid-stream, and the pod leaves the service.
    kill_a.send(true).unwrap();
    activator.pods(&key, &[("demo-b", pod_b.data)]);
    let outcome = tokio::time::timeout(DEADLINE, http_body_util::BodyExt::collect(body)).await;
    assert!(matches!(outcome, Ok(Err(_))), "the cut stream ends with an error, not a clean end");

    for _ in 0..20 {
        let response = client.request(get(activator.addr, "demo", "/")).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(served_b.load(Ordering::Relaxed), 20);
}

#[tokio::test]
async fn unknown_services_and_contradictory_headers_are_refused() {
    let activator = TestActivator::start(10_000).await;
    activator.service("demo", data_plane(|_| {}));
    let client = client();
    let response = client.request(get(activator.addr, "nothing", "/")).await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(text(response).await.contains("no service for Host \\\"nothing\\\""));

    let mut request = get(activator.addr, "demo.default.svc", "/");
    request.headers_mut().insert("ebb-service", "default/other".parse().unwrap());
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        text(response)
            .await
            .contains("the Ebb-Service header names default/other but the Host routes to default/demo")
    );
}

#[tokio::test]
async fn the_activator_answers_its_own_probe_and_stops_when_draining() {
    let mut activator = TestActivator::start(10_000).await;
    let probe = |addr| {
        http::Request::get(format!("http://{addr}/"))
            .header("ebb-probe", "activator")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let client = client();
    let response = client.request(probe(activator.addr)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await, "activator");
    activator.stop();
    eventually("draining to start", || !activator.activator.is_ready()).await;
}

#[tokio::test]
async fn serve_mode_goes_straight_to_the_pods_and_proxy_mode_counts() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|_| {}));
    // The upstream holds each request until released, so the accounting can be looked at mid-request.
    let (release, released) = tokio::sync::watch::channel(0u32);
    let addr = upstream(move |_req| {
        let mut released = released.clone();
        // Wait for the next release, not one that happened before this request.
        released.mark_unchanged();
        async move {
            let _ = released.changed().await;
            hyper::Response::new(full("done"))
        }
    })
    .await;
    let pod = queue_proxy(addr, "demo-1", 0).await;
    activator.pods(&key, &[("demo-1", pod.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("the pod to be ready", || service.status().ready == 1).await;
    let client = client();

    for (mode, counted) in [(Mode::Proxy, 1), (Mode::Serve, 0)] {
        activator.registry.apply(Change::Mode { key: key.clone(), mode });
        let (c, request) = (client.clone(), get(activator.addr, "demo", "/"));
        let in_flight = tokio::spawn(async move { c.request(request).await.unwrap().status() });
        let endpoint = service.pick(&[]).unwrap();
        eventually("the request to reach the pod", || endpoint.endpoint().in_flight() == 2).await;
        drop(endpoint);
        assert_eq!(service.stats.concurrency(), counted, "{mode:?}");
        assert_eq!(service.breaker.in_flight() as u64, counted, "{mode:?}");
        release.send_modify(|n| *n += 1);
        assert_eq!(in_flight.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn an_h2c_client_is_routed_by_its_authority() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|_| {}));
    let versions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = versions.clone();
    let addr = upstream(move |req| {
        seen.lock().unwrap().push(req.version());
        async { hyper::Response::new(full("hello")) }
    })
    .await;
    let pod = queue_proxy(addr, "demo-1", 0).await;
    activator.pods(&key, &[("demo-1", pod.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("the pod to be ready", || service.status().ready == 1).await;

    // No Host header: the service comes from `:authority`, fully qualified with a trailing dot or not.
    let mut h2 = h2c_connection(activator.addr).await;
    let request = |authority: &str| {
        http::Request::get(format!("http://{authority}/v1/models"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    for authority in ["demo.default.svc.cluster.local", "demo.default.svc.cluster.local.:8012"] {
        h2.ready().await.unwrap();
        let response = h2.send_request(request(authority)).await.unwrap();
        assert_eq!(
            (response.status().as_u16(), response.version()),
            (200, http::Version::HTTP_2),
            "{authority}"
        );
        assert_eq!(text(response).await, "hello");
    }
    assert_eq!(*versions.lock().unwrap(), [http::Version::HTTP_2; 2], "h2c in, h2c out");

    h2.ready().await.unwrap();
    let response = h2.send_request(request("nothing.default")).await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(text(response).await.contains("no service for Host \\\"nothing.default\\\""));
}

/// Takes a balancer slot on `pod` (CC = 1, two pods), so that the next request goes to the other pod first.
fn occupy(service: &ebb_activator::service::Service, pod: &str) -> ebb_activator::balancer::Lease {
    // With one slot per pod, two picks take one pod each.
    let (first, second) = (service.pick(&[]).unwrap(), service.pick(&[]).unwrap());
    if &*first.endpoint().name == pod { first } else { second }
}

#[tokio::test]
async fn a_pod_that_refuses_connections_is_retried_on_another() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|spec| spec.container_concurrency = 1));
    let ((a, served_a), (b, served_b)) =
        (counting_upstream(Duration::ZERO).await, counting_upstream(Duration::ZERO).await);
    let (pod_a, pod_b) = (queue_proxy(a, "demo-a", 1).await, queue_proxy(b, "demo-b", 1).await);
    activator.pods(&key, &[("demo-a", pod_a.data), ("demo-b", pod_b.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("both pods to be ready", || service.status().ready == 2).await;

    // Pod A's queue-proxy exits after passing its probe; nothing has told the activator yet, and its port
    // now refuses connections. Pod B looks busy, so the request tries pod A first.
    pod_a.stop().await;
    let busy_b = occupy(&service, "demo-b");
    let response = client().request(get(activator.addr, "demo", "/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await, "hello");
    assert_eq!((served_a.load(Ordering::Relaxed), served_b.load(Ordering::Relaxed)), (0, 1));
    assert_eq!(service.status().ready, 1, "the refusing pod is out until it answers a probe again");
    drop(busy_b);
}

#[tokio::test]
async fn a_pod_that_resets_after_reading_the_request_is_not_retried() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|spec| spec.container_concurrency = 1));
    let (resetting, attempts) = resetting_pod().await;
    let (b, served_b) = counting_upstream(Duration::ZERO).await;
    let pod_b = queue_proxy(b, "demo-b", 1).await;
    activator.pods(&key, &[("demo-a", resetting), ("demo-b", pod_b.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("both pods to be ready", || service.status().ready == 2).await;

    // The request was sent in full before the reset: it may have had effects, so it is not sent again.
    let busy_b = occupy(&service, "demo-b");
    let response = client().request(get(activator.addr, "demo", "/")).await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(served_b.load(Ordering::Relaxed), 0, "no retry on the good pod");
    drop(busy_b);
}

/// Polls a queue-proxy's `/stats` until a stat satisfies `done`.
async fn stat_where(
    stats: std::net::SocketAddr,
    mut done: impl FnMut(&ebb_config::wire::PodStat) -> bool,
) -> ebb_config::wire::PodStat {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let response = client().request(get(stats, "queue-proxy", "/stats")).await.unwrap();
        if response.status() == 200 {
            let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
            let stat = ebb_config::wire::PodStat::decode(&bytes).unwrap();
            if done(&stat) {
                return stat;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for a stat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_reach_the_queue_proxy_marked_as_the_activators() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|_| {}));
    let (upstream, _) = counting_upstream(Duration::ZERO).await;
    let pod = queue_proxy(upstream, "demo-1", 0).await;
    activator.pods(&key, &[("demo-1", pod.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("the pod to be ready", || service.status().ready == 1).await;
    let client = client();

    // Proxy mode: the queue-proxy counts the request as the activator's (`Ebb-Proxied: activator`).
    assert_eq!(client.request(get(activator.addr, "demo", "/")).await.unwrap().status(), 200);
    let stat = stat_where(pod.stats, |s| s.request_count > 0.0).await;
    assert_eq!((stat.request_count, stat.proxied_request_count), (1.0, 1.0));

    // Serve mode: not the activator's, even when the client claims it is.
    stat_where(pod.stats, |s| s.request_count == 0.0).await;
    activator.registry.apply(Change::Mode { key: key.clone(), mode: Mode::Serve });
    let mut forged = get(activator.addr, "demo", "/");
    forged.headers_mut().insert("ebb-proxied", "activator".parse().unwrap());
    assert_eq!(client.request(forged).await.unwrap().status(), 200);
    let stat = stat_where(pod.stats, |s| s.request_count > 0.0).await;
    assert_eq!((stat.request_count, stat.proxied_request_count), (1.0, 0.0));
}

#[tokio::test]
async fn the_metrics_count_what_happened_to_each_request() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service(
        "demo",
        data_plane(|spec| {
            spec.max_queued = 1;
            spec.activation_timeout = Duration::from_millis(500);
        }),
    );
    let client = client();
    let scrape = || async { admin(activator.metrics_addr, "/metrics").await.1 };
    let labels = "{namespace=\"default\",service=\"demo\"}";
    let rejected = |reason: &str| {
        format!("ebb_activator_rejected_total{{namespace=\"default\",service=\"demo\",reason=\"{reason}\"}}")
    };

    // One request waits at zero, a second finds the queue full, the first times out.
    let (c, request) = (client.clone(), get(activator.addr, "demo", "/"));
    let first = tokio::spawn(async move { c.request(request).await.unwrap().status() });
    eventually("the request to queue", || activator.activator.waiting() == 1).await;
    let metrics = scrape().await;
    assert_eq!(series(&metrics, &format!("ebb_activator_queued{labels}")), Some(1.0), "{metrics}");
    assert_eq!(client.request(get(activator.addr, "demo", "/")).await.unwrap().status(), 503);
    assert_eq!(first.await.unwrap(), 503);

    // A pod; one request forwarded.
    let (upstream, _) = counting_upstream(Duration::ZERO).await;
    let pod = queue_proxy(upstream, "demo-1", 0).await;
    activator.pods(&key, &[("demo-1", pod.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("the pod to be ready", || service.status().ready == 1).await;
    let response = client.request(get(activator.addr, "demo", "/")).await.unwrap();
    assert_eq!((response.status().as_u16(), text(response).await), (200, "hello".into()));

    let metrics = scrape().await;
    let value = |name: &str| series(&metrics, name);
    assert_eq!(value(&format!("ebb_activator_queued{labels}")), Some(0.0), "{metrics}");
    assert_eq!(value(&format!("ebb_activator_in_flight{labels}")), Some(0.0), "{metrics}");
    assert_eq!(value(&format!("ebb_activator_forwarded_total{labels}")), Some(1.0), "{metrics}");
    assert_eq!(value(&rejected("queue_full")), Some(1.0), "{metrics}");
    assert_eq!(value(&rejected("activation_timeout")), Some(1.0), "{metrics}");
    assert_eq!(value(&rejected("upstream_refused")), Some(0.0), "{metrics}");
    // The wait that timed out and the admitted one; the request refused at once never waited.
    assert_eq!(value(&format!("ebb_activator_queue_wait_seconds_count{labels}")), Some(2.0), "{metrics}");
    let waited = value(&format!("ebb_activator_queue_wait_seconds_sum{labels}")).unwrap();
    assert!(waited >= 0.5, "the timed-out request waited its 500 ms activation timeout: {waited}");
}

/// A request for the activator's own probe.
fn activator_probe(addr: std::net::SocketAddr) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(format!("http://{addr}/"))
        .header("ebb-probe", "activator")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn while_draining_probes_fail_and_queued_requests_are_still_served() {
    let mut activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|_| {}));
    let (c, request) = (client(), get(activator.addr, "demo", "/"));
    let queued = tokio::spawn(async move {
        let response = c.request(request).await.unwrap();
        (response.status().as_u16(), text(response).await)
    });
    eventually("the request to queue", || activator.activator.waiting() == 1).await;

    activator.stop();
    eventually("draining to start", || !activator.activator.is_ready()).await;
    let response = client().request(activator_probe(activator.addr)).await.unwrap();
    assert_eq!((response.status().as_u16(), text(response).await), (503, "draining".into()));
    assert_eq!(admin(activator.metrics_addr, "/readyz").await, (503, "draining".into()));
    assert_eq!(admin(activator.metrics_addr, "/healthz").await, (200, "ok".into()), "alive while draining");

    // The drain waits for the queued request, which is served once a pod is ready.
    let (upstream, _) = counting_upstream(Duration::ZERO).await;
    let pod = queue_proxy(upstream, "demo-1", 0).await;
    activator.pods(&key, &[("demo-1", pod.data)]);
    let answer = tokio::time::timeout(DEADLINE, queued).await.expect("the queued request was dropped");
    assert_eq!(answer.unwrap(), (200, "hello".into()));
}

#[tokio::test]
async fn with_no_autoscaler_reachable_services_are_still_served() {
    use ebb_activator::push::{Pusher, Token};
    // An autoscaler address where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let pusher = Pusher::new(Token::None);
    pusher.set_replicas(&[closed]);
    let (_unused, stats) = tokio::sync::mpsc::channel(1);
    let activator = TestActivator::with_sink(10_000, pusher, stats).await;
    let key = activator.service("demo", data_plane(|_| {}));
    let client = client();

    // A cold start's stat goes nowhere; the request still waits for the pod and is served.
    let (c, request) = (client.clone(), get(activator.addr, "demo", "/"));
    let cold = tokio::spawn(async move { c.request(request).await.unwrap().status() });
    eventually("the request to queue", || activator.activator.waiting() == 1).await;
    let (upstream, served) = counting_upstream(Duration::ZERO).await;
    let pod = queue_proxy(upstream, "demo-1", 0).await;
    activator.pods(&key, &[("demo-1", pod.data)]);
    assert_eq!(tokio::time::timeout(DEADLINE, cold).await.unwrap().unwrap(), 200);

    // Warm: served, and the activator stays ready.
    for _ in 0..5 {
        assert_eq!(client.request(get(activator.addr, "demo", "/")).await.unwrap().status(), 200);
    }
    assert_eq!(served.load(Ordering::Relaxed), 6);
    assert_eq!(client.request(activator_probe(activator.addr)).await.unwrap().status(), 200);
    assert_eq!(admin(activator.metrics_addr, "/readyz").await, (200, "ok".into()));
}

/// A POST with a JSON body, as a chat client sends it.
fn post(addr: std::net::SocketAddr, service: &str) -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
    hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("host", service)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(br#"{"messages":[]}"#)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_pod_whose_model_died_goes_to_another_pod() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|spec| spec.container_concurrency = 1));
    let (a, kill_a) = killable_upstream(|_req| async { hyper::Response::new(full("from a")) }).await;
    let (b, served_b) = counting_upstream(Duration::ZERO).await;
    let (pod_a, pod_b) = (queue_proxy(a, "demo-a", 1).await, queue_proxy(b, "demo-b", 1).await);
    activator.pods(&key, &[("demo-a", pod_a.data), ("demo-b", pod_b.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("both pods to be ready", || service.status().ready == 2).await;

    // Pod A's model dies; its queue-proxy is up and answers that it forwarded nothing. Once, that answer (a
    // 502) went to the client, and the balancer kept choosing the pod that failed fastest. Pod B looks busy,
    // so the request tries pod A first; its body was read whole, so it goes to pod B intact.
    kill_a.send(true).unwrap();
    let busy_b = occupy(&service, "demo-b");
    let response = client().request(post(activator.addr, "demo")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await, "hello");
    assert_eq!(served_b.load(Ordering::Relaxed), 1);
    assert_eq!(
        service.endpoint_names(),
        [Arc::<str>::from("demo-b")],
        "pod A is out until its model is back"
    );
    drop(busy_b);
    drop(pod_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_the_only_pod_whose_model_died_waits_for_it_to_come_back() {
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|spec| spec.container_concurrency = 4));
    let (model, kill) = killable_upstream(|_req| async { hyper::Response::new(full("first life")) }).await;
    let pod = queue_proxy(model, "demo-a", 4).await;
    activator.pods(&key, &[("demo-a", pod.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("the pod to be ready", || service.status().ready == 1).await;

    kill.send(true).unwrap();
    // Dead as a crashed process is: its port refuses. (Sent while the listener was still closing, the request
    // could still be taken by it, and the pod never left the rotation: a flake of about 1 run in 6.)
    eventually("the model's port to refuse", || std::net::TcpStream::connect(model).is_err()).await;
    let request = tokio::spawn(client().request(post(activator.addr, "demo")));
    eventually("the pod to leave the rotation", || service.status().ready == 0).await;
    assert!(!request.is_finished(), "the request waits for a pod instead of failing");
    // The model restarts on its port: the queue-proxy and then the activator see it, and the request is sent.
    let (_, _restarted) =
        killable_upstream_at(model, |_req| async { hyper::Response::new(full("second life")) }).await;
    let response = tokio::time::timeout(DEADLINE, request).await.expect("answered").unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await, "second life");
    drop(pod);
}

/// A model that answers 400 as soon as it has read a request's head, and closes without reading the body.
async fn impatient_model() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n @ 1..) = stream.read(&mut buf).await else { return };
                    head.extend_from_slice(&buf[..n]);
                }
                let answer = "HTTP/1.1 400 Bad Request\r\ncontent-length: 14\r\nconnection: close\r\n\r\nbody too large";
                let _ = stream.write_all(answer.as_bytes()).await;
                // Dropped with the body unread: the kernel resets the connection.
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_early_answer_to_a_large_body_reaches_the_client() {
    let model = impatient_model().await;
    let pod = queue_proxy(model, "demo-a", 0).await;
    let activator = TestActivator::start(10_000).await;
    let key = activator.service("demo", data_plane(|_| {}));
    activator.pods(&key, &[("demo-a", pod.data)]);
    let service = activator.registry.get(&key).unwrap();
    eventually("the pod to be ready", || service.status().ready == 1).await;

    // A 4 MiB prompt, straight to the pod and through the activator. Once, the model's 400 became a 502
    // (upstream reset) or a broken pipe most of the time: the upstream's unread body ended the exchange.
    let prompt = bytes::Bytes::from(vec![b'x'; 4 << 20]);
    for addr in [pod.data, activator.addr] {
        for _ in 0..5 {
            let request = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("host", "demo")
                .body(http_body_util::Full::new(prompt.clone()))
                .unwrap();
            let response = client().request(request).await.expect("an answer, not a broken connection");
            assert_eq!(response.status(), 400, "via {addr}");
            assert_eq!(text(response).await, "body too large");
        }
    }
}
