//! Request stats under a known load, read back from `GET /stats` in the wire format the autoscaler scrapes.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use ebb_config::wire::{PodStat, STAT_CONTENT_TYPE};
use http::Request;
use http_body_util::Full;
use tokio::time::Instant;

/// One request every 100 ms, each held 1 s by the upstream, every other one marked as coming through the
/// activator: from 1 s after the start until the last request leaves, exactly 10 are inside (5 proxied).
///
/// Tolerances: a stat whose second (ending up to 100 ms before its timestamp) lies wholly in that steady
/// stretch must show average concurrency 10 +- 1.5, proxied 5 +- 1, and 10 +- 2 arrivals a second (5
/// +- 2 proxied). The slack covers timer and scheduling jitter of a few tens of milliseconds per request on a
/// loaded 2-core machine; the exact arithmetic is unit-tested with injected instants in `stats.rs`.
#[tokio::test]
async fn a_steady_load_of_ten_concurrent_requests_reports_about_ten() {
    let addr = one_second_upstream().await;
    let proxy = proxy(addr, &[]).await;
    let client = client();
    const REQUESTS: u32 = 45;
    let period = Duration::from_millis(100);

    let start_wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let start = Instant::now();
    let load = tokio::spawn({
        let (client, url) = (client.clone(), proxy.url("/work"));
        async move {
            let mut requests = Vec::new();
            for i in 0..REQUESTS {
                tokio::time::sleep_until(start + period * i).await;
                let mut request = Request::get(&url);
                if i % 2 == 0 {
                    request = request.header("ebb-proxied", "activator");
                }
                let request = request.body(Full::new(Bytes::new())).unwrap();
                let client = client.clone();
                requests.push(tokio::spawn(async move { send(&client, request).await.status() }));
            }
            for request in requests {
                assert_eq!(request.await.unwrap(), 200);
            }
        }
    });
    let stats =
        collect_stats(&client, &proxy, start + period * REQUESTS + Duration::from_millis(1_100)).await;
    load.await.unwrap();
    // The steady stretch (from the first departure to the last arrival) in wall-clock milliseconds, shrunk
    // by 50 ms on both sides.
    let (from, to) = (start_wall + 1_000 + 50, start_wall + (REQUESTS as u64) * 100 - 50);
    let steady: Vec<_> =
        stats.iter().filter(|s| s.timestamp_ms - 1_100 >= from && s.timestamp_ms <= to).collect();
    assert!(!steady.is_empty(), "no 1-second stat fell in the steady stretch {from}..{to}: {stats:#?}");
    for stat in steady {
        assert_eq!(stat.pod, "test-pod");
        assert!((stat.average_concurrency - 10.0).abs() <= 1.5, "{stat:?}");
        assert!((stat.average_proxied_concurrency - 5.0).abs() <= 1.0, "{stat:?}");
        assert!((stat.request_count - 10.0).abs() <= 2.0, "{stat:?}");
        assert!((stat.proxied_request_count - 5.0).abs() <= 2.0, "{stat:?}");
        assert_eq!(stat.average_queued, Some(0.0), "no concurrency limit, nothing queued: {stat:?}");
    }
    let text = metrics(&proxy).await;
    assert_eq!(series(&text, "ebb_queue_proxy_requests_total{status_class=\"2xx\"}"), Some(REQUESTS as f64));
    assert_eq!(series(&text, "ebb_queue_proxy_request_duration_seconds_count"), Some(REQUESTS as f64));
    proxy.stop().await;
}

/// With a concurrency limit of 1, three requests arrive together and are held 1 s each: one is served while
/// two wait, then one while one waits. Every stat read during the run reports the last whole second of the wall
/// clock: its queued and inside averages match those of the known timeline over that second within 0.3 (the
/// measured second ends up to 100 ms before it, plus scheduling jitter).
#[tokio::test]
async fn requests_waiting_for_a_slot_are_reported_as_queued() {
    let addr = one_second_upstream().await;
    let proxy = proxy(addr, &["--container-concurrency", "1"]).await;
    let client = client();
    // A proxy younger than a second reports the time since its start.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let sent = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as f64 / 1000.0;
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (client.clone(), proxy.url("/work"));
            tokio::spawn(async move { send(&client, get(&url)).await.status() })
        })
        .collect();
    let stats = collect_stats(&client, &proxy, Instant::now() + Duration::from_millis(4_300)).await;
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    // Seconds since `sent` -> (queued, inside), and its average over [from, to].
    let at = |t: f64| {
        if t < 0.0 {
            (0.0, 0.0)
        } else if t < 1.0 {
            (2.0, 3.0)
        } else if t < 2.0 {
            (1.0, 2.0)
        } else if t < 3.0 {
            (0.0, 1.0)
        } else {
            (0.0, 0.0)
        }
    };
    let average = |from: f64, to: f64| {
        let steps = 1000;
        let dt = (to - from) / steps as f64;
        let sum = (0..steps)
            .map(|i| at(from + (i as f64 + 0.5) * dt))
            .fold((0.0, 0.0), |(q, c), (dq, dc)| (q + dq, c + dc));
        (sum.0 / steps as f64, sum.1 / steps as f64)
    };
    let during: Vec<&PodStat> =
        stats.iter().filter(|s| s.timestamp_ms as f64 / 1000.0 - sent > 0.5).collect();
    assert!(during.len() >= 3, "a second each: {during:#?}");
    for stat in during {
        let end = stat.timestamp_ms as f64 / 1000.0 - sent;
        let (queued, inside) = average(end - 1.05, end - 0.05);
        assert!(
            (stat.average_queued.unwrap() - queued).abs() <= 0.3,
            "queued {queued} expected at {end:.2}: {stat:?}"
        );
        assert!(
            (stat.average_concurrency - inside).abs() <= 0.3,
            "inside {inside} expected at {end:.2}: {stat:?}"
        );
    }
    proxy.stop().await;
}

/// Every second's stat, read every 100 ms until `until`.
async fn collect_stats(client: &HttpClient, proxy: &Proxy, until: Instant) -> Vec<PodStat> {
    let mut stats: Vec<PodStat> = Vec::new();
    while Instant::now() < until {
        let response = send(client, get(&format!("http://{}/stats", proxy.addrs.stats))).await;
        assert_eq!(response.headers()["content-type"], STAT_CONTENT_TYPE);
        let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        let stat = PodStat::decode(&body).unwrap();
        if stats.last().is_none_or(|last| last.timestamp_ms != stat.timestamp_ms) {
            stats.push(stat);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stats
}

/// An upstream that holds every request 1 s, then answers 200.
async fn one_second_upstream() -> std::net::SocketAddr {
    upstream(|_req| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        response(200, full("ok"))
    })
    .await
}

/// The stats port is open to the pod network: a client reading it as often as it likes changes nothing the
/// autoscaler reads (every read of one second answers the same), and anything but `GET /stats` is refused
/// with a clear answer.
#[tokio::test]
async fn reading_the_stats_port_changes_nothing_and_other_requests_are_refused() {
    let addr = one_second_upstream().await;
    let proxy = proxy(addr, &[]).await;
    let client = client();
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (client.clone(), proxy.url("/work"));
            tokio::spawn(async move { send(&client, get(&url)).await.status() })
        })
        .collect();
    let stats_url = format!("http://{}/stats", proxy.addrs.stats);
    let mut by_second: std::collections::HashMap<u64, PodStat> = std::collections::HashMap::new();
    let mut reads = 0;
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        let body = http_body_util::BodyExt::collect(send(&client, get(&stats_url)).await.into_body()).await;
        let stat = PodStat::decode(&body.unwrap().to_bytes()).unwrap();
        let first = by_second.entry(stat.timestamp_ms).or_insert_with(|| stat.clone());
        assert_eq!(
            *first,
            PodStat { process_uptime_secs: first.process_uptime_secs, ..stat },
            "read {reads}"
        );
        reads += 1;
    }
    assert!(reads > 100 && !by_second.is_empty(), "{reads} reads of {} seconds", by_second.len());
    for request in load {
        assert_eq!(request.await.unwrap(), 200);
    }

    let (status, body) = fetch(proxy.addrs.stats, "/stats/../metrics").await;
    assert_eq!((status, String::from_utf8_lossy(&body).contains("GET /stats")), (404, true));
    let post = Request::post(&stats_url).body(Full::new(Bytes::from_static(b"x"))).unwrap();
    let response = send(&client, post).await;
    assert_eq!(response.status(), 404);
    assert!(text(response).await.contains("GET /stats"));
    proxy.stop().await;
}
