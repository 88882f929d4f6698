//! The stat stream to autoscaler replicas, against a real HTTP server that authenticates and decodes frames.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ebb_activator::push::{Pusher, Token};
use ebb_activator::stats::StatSink;
use ebb_config::wire::{IngestFrame, PodStat};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// An ingest endpoint that accepts streams bearing `token` (any stream when `None`), decodes their frames and
/// hands them over.
async fn ingest_server(token: Option<&'static str>) -> (SocketAddr, mpsc::UnboundedReceiver<IngestFrame>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let authorized = token.is_none_or(|token| {
                        req.headers().get("authorization").is_some_and(|v| v == &format!("Bearer {token}"))
                    });
                    if !authorized {
                        let mut response = Response::new(Empty::<bytes::Bytes>::new());
                        *response.status_mut() = StatusCode::UNAUTHORIZED;
                        return Ok::<_, std::convert::Infallible>(response);
                    }
                    let mut body = req.into_body();
                    let mut buffer = BytesMut::new();
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Ok(data) = frame.into_data() {
                            buffer.extend_from_slice(&data);
                        }
                        while let Some((frame, used)) = IngestFrame::decode_prefix(&buffer).unwrap() {
                            buffer.advance(used);
                            let _ = tx.send(frame);
                        }
                    }
                    Ok(Response::new(Empty::new()))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, rx)
}

fn frame(concurrency: f64) -> IngestFrame {
    let stat = PodStat {
        pod: "activator-0".into(),
        average_concurrency: concurrency,
        average_proxied_concurrency: 0.0,
        request_count: 1.0,
        proxied_request_count: 0.0,
        process_uptime_secs: 1.0,
        timestamp_ms: 1,
        average_queued: Some(0.0),
    };
    IngestFrame { namespace: "default".into(), name: "demo".into(), stat }
}

fn token_file(token: &str) -> Token {
    let path = std::env::temp_dir().join(format!("ebb-push-token-{}-{token}", std::process::id()));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    Token::File(path)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn frames_reach_every_replica_with_the_token() {
    let (a, mut got_a) = ingest_server(Some("secret")).await;
    let (b, mut got_b) = ingest_server(Some("secret")).await;
    let pusher = Pusher::new(token_file("secret"));
    pusher.set_replicas(&[a, b]);
    until("both streams to open", || pusher.connected() == 2).await;
    pusher.send(frame(3.0));
    pusher.send(frame(4.0));
    for got in [&mut got_a, &mut got_b] {
        assert_eq!(got.recv().await.unwrap(), frame(3.0));
        assert_eq!(got.recv().await.unwrap(), frame(4.0));
    }
}

#[tokio::test]
async fn a_refused_token_delivers_nothing_and_drops_are_counted() {
    let (addr, mut got) = ingest_server(Some("secret")).await;
    let pusher = Pusher::new(token_file("wrong"));
    pusher.set_replicas(&[addr]);
    // Whether or not the refused stream is momentarily open, nothing it carries is accepted.
    for i in 0..20 {
        pusher.send(frame(f64::from(i)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(got.try_recv().is_err());
    assert!(pusher.dropped() > 0);
}

#[tokio::test]
async fn a_replica_that_is_down_costs_nothing_and_is_reached_once_up() {
    // Reserve a port, close it, and point the pusher at it: nothing listens there yet.
    let spare = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = spare.local_addr().unwrap();
    drop(spare);
    let pusher = Pusher::new(Token::None);
    pusher.set_replicas(&[addr]);
    for _ in 0..1000 {
        pusher.send(frame(1.0)); // never blocks
    }
    assert_eq!(pusher.dropped(), 1000);
    assert_eq!(pusher.connected(), 0);

    // Departed replicas are forgotten.
    pusher.set_replicas(&[]);
    assert_eq!(pusher.connected(), 0);
    let (live, mut got) = ingest_server(None).await;
    pusher.set_replicas(&[live]);
    until("the stream to open", || pusher.connected() == 1).await;
    pusher.send(frame(9.0));
    assert_eq!(got.recv().await.unwrap(), frame(9.0));
}

/// Issue 5's cold path end to end over the network: a request for a service at zero makes the activator send
/// its cold-start stat (concurrency 1, queued) through the real stat stream, and it reaches the ingest server
/// while the request is still waiting and before any pod exists.
#[tokio::test]
async fn a_request_at_zero_reaches_the_ingest_server_as_a_queued_stat_before_any_pod() {
    let (addr, mut got) = ingest_server(Some("secret")).await;
    let pusher = Pusher::new(token_file("secret"));
    pusher.set_replicas(&[addr]);
    until("the stream to open", || pusher.connected() == 1).await;
    let (_unused, stats) = mpsc::channel(1);
    let activator = support::TestActivator::with_sink(100, pusher.clone(), stats).await;
    let key = activator.service("cold", support::data_plane(|_| {}));
    let request = tokio::spawn(support::client().request(support::get(activator.addr, "cold", "/")));
    let frame = tokio::time::timeout(Duration::from_secs(10), got.recv()).await.expect("a stat").unwrap();
    assert_eq!((frame.namespace.as_str(), frame.name.as_str()), ("default", "cold"));
    assert_eq!(frame.stat.average_concurrency, 1.0);
    assert_eq!(frame.stat.average_queued, Some(1.0));
    assert!(!request.is_finished(), "the request waits for a pod");
    assert_eq!(activator.registry.get(&key).map(|s| s.status().ready), Some(0));
    request.abort();
}

/// A replica that vanishes without a reset is noticed within seconds: the stream's socket carries
/// TCP_USER_TIMEOUT, so unacknowledged frames close it after `UNACKED_TIMEOUT` instead of TCP's default of
/// about 15 minutes of retransmissions (dropping packets for real would need a network namespace).
#[tokio::test]
async fn stream_sockets_give_up_on_unacknowledged_frames_within_seconds() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stream = ebb_activator::push::connect(listener.local_addr().unwrap()).await.unwrap();
    let timeout = socket2::SockRef::from(&stream).tcp_user_timeout().unwrap();
    assert_eq!(timeout, Some(ebb_activator::push::UNACKED_TIMEOUT));
    assert!(stream.nodelay().unwrap());
}
