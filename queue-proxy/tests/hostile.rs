//! The queue-proxy under attack, as an outsider on the pod network would try it: every test here is a hole that
//! was found open once. A closed, silent, slow or lying client must cost nothing and gain nothing.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Polls `check` every 10 ms for at most `limit`; whether it came to hold.
async fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_one_byte_and_closes_holds_nothing() {
    let upstream = upstream(|_| async { response(200, full("served")) }).await;
    let proxy = BinaryProxy::start(upstream, &[]).await;
    let data = proxy.data;
    eventually("the proxy serves", || async move {
        let response = client().request(get(&format!("http://{data}/"))).await;
        response.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let baseline = proxy.open_fds();

    // `P` is the first byte of the HTTP/2 preface, so the connection waits to learn which protocol it speaks;
    // the client is gone before it could. Once, each such connection was re-peeked every millisecond for 60 s.
    for _ in 0..300 {
        let mut stream = TcpStream::connect(data).await.unwrap();
        stream.write_all(b"P").await.unwrap();
    }
    // The closes are seen at once (EOF), far sooner than any first-bytes deadline (10 s).
    let back = within(Duration::from_secs(3), || proxy.open_fds() <= baseline).await;
    assert!(back, "{} descriptors held, {baseline} before the attack", proxy.open_fds());
    let response = send(&client(), get(&format!("http://{data}/"))).await;
    assert_eq!(text(response).await, "served", "real traffic is served after the attack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_the_pod_network_cannot_drain_the_pod() {
    let upstream = upstream(|_| async { response(200, full("served")) }).await;
    let proxy = proxy(upstream, &[]).await;
    let admin = proxy.addrs.admin;
    // Once, `/wait-for-drain` started the drain: readiness failed and every response closed its connection,
    // while the gateway kept routing to the pod until the drain deadline cut its streams.
    let waiters: Vec<_> = (0..ebb_queue_proxy::admin::MAX_DRAIN_WAITERS)
        .map(|_| tokio::spawn(async move { fetch(admin, "/wait-for-drain").await }))
        .collect();
    // Once the bound is taken, the next caller is refused at once (a caller that still found room waits, and
    // gives its place back when it gives up).
    eventually("a caller beyond the bound is refused", || async move {
        let call = tokio::time::timeout(Duration::from_millis(200), fetch(admin, "/wait-for-drain")).await;
        matches!(call, Ok((429, _)))
    })
    .await;
    assert!(!proxy.data.drainer.is_draining(), "no drain started");
    assert_eq!(fetch(admin, "/ready").await.0, 200, "still ready");
    let response = send(&client(), get(&proxy.url("/"))).await;
    assert!(response.headers().get("connection").is_none(), "not told to close: {:?}", response.headers());
    assert!(waiters.iter().all(|w| !w.is_finished()), "the callers still wait: nothing is draining");

    // SIGTERM's drain (here: the stop) is what ends their wait.
    proxy.stop().await;
    for waiter in waiters {
        let (status, body) = tokio::time::timeout(DEADLINE, waiter).await.expect("answered").unwrap();
        assert_eq!((status, &body[..]), (200, &b"drained"[..]));
    }
}
