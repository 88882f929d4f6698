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
    // while the gateway kept routing to the pod until the drain deadline cut its streams. One caller more than
    // the bound: exactly one is refused at once, the others wait.
    let mut callers: Vec<_> = (0..=ebb_queue_proxy::admin::MAX_DRAIN_WAITERS)
        .map(|_| tokio::spawn(async move { fetch(admin, "/wait-for-drain").await }))
        .collect();
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(i) = callers.iter().position(|c| c.is_finished()) {
                return callers.remove(i).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the caller beyond the bound is answered at once");
    assert_eq!(refused.0, 429, "{refused:?}");
    let waiters = callers;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_body_loses_its_slot_with_a_408() {
    // The upstream reads the whole body before it answers, as a model reading a prompt does.
    let upstream = upstream(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        match req.into_body().collect().await {
            Ok(body) => response(200, full(format!("read {} bytes", body.to_bytes().len()))),
            Err(_) => response(400, full("body failed")),
        }
    })
    .await;
    let flags = ["--container-concurrency", "1", "--request-body-timeout", "300ms", "--timeout", "60s"];
    let proxy = proxy(upstream, &flags).await;

    // Headers promise 1000 bytes; one arrives, then nothing. Once, such a client held the only slot for the
    // whole request timeout (five minutes by default), a byte a minute.
    let mut slow = TcpStream::connect(proxy.addrs.data).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: demo\r\ncontent-length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let answer = read_head(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(answer.contains("timeout_request_body"), "{answer}");

    // The slot is free again: a well-behaved request goes straight through.
    let request = http::Request::post(proxy.url("/v1/chat/completions"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{\"ok\":true}")))
        .unwrap();
    assert_eq!(text(send(&client(), request).await).await, "read 11 bytes");
    let metrics = metrics(&proxy).await;
    assert_eq!(
        series(&metrics, "ebb_queue_proxy_timeouts_total{kind=\"request_body\"}"),
        Some(1.0),
        "{metrics}"
    );
}

/// Reads from `stream` until the peer closes or 2 s pass; the text read.
async fn read_head(stream: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer in time; read so far: {}", String::from_utf8_lossy(&out)),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_dies_fails_readiness_at_its_first_refused_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = |_req| async {
        let mut answer = response(200, full("ok"));
        // A container cannot pass itself off as the proxy saying nothing reached it.
        answer.headers_mut().insert("ebb-proxy-error", http::HeaderValue::from_static("overloaded"));
        answer
    };
    let model = Killable::serve(listener, handler);
    let proxy = proxy(addr, &[]).await;
    let client = client();
    let answer = send(&client, get(&proxy.url("/"))).await;
    assert!(answer.headers().get("ebb-proxy-error").is_none(), "the container's own header is removed");

    // The model process dies. Once, the proxy answered 502 (no Retry-After) and stayed ready until the
    // kubelet's next probe, so a gateway kept choosing the pod that failed fastest.
    model.kill();
    // A request racing the pool's notice of the closed connections may still find one (and be served, or
    // reset: 502); once they are gone, a new connection is refused.
    let mut refused = send(&client, get(&proxy.url("/"))).await;
    for _ in 0..10 {
        if refused.status() == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        refused = send(&client, get(&proxy.url("/"))).await;
    }
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["ebb-proxy-error"], "upstream_refused");
    assert!(!proxy.data.is_ready(), "not ready from the first refused request on");
    let probe =
        http::Request::get(proxy.url("/")).header("ebb-probe", "queue").body(Default::default()).unwrap();
    assert_eq!(send(&client, probe).await.status(), 503, "the activator's probe sees it");

    // The container comes back on its port: the proxy's own probing finds it without a kubelet probe.
    let model = Killable::serve(tokio::net::TcpListener::bind(addr).await.unwrap(), handler);
    eventually("the proxy sees the container back", || {
        let data = proxy.data.clone();
        async move { data.is_ready() }
    })
    .await;
    assert_eq!(text(send(&client, get(&proxy.url("/"))).await).await, "ok");
    model.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_two_hosts_is_refused() {
    let upstream = upstream(|_| async { response(200, full("served")) }).await;
    let proxy = proxy(upstream, &[]).await;
    let mut stream = TcpStream::connect(proxy.addrs.data).await.unwrap();
    let request = "GET / HTTP/1.1\r\nhost: demo\r\nhost: other\r\nconnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("more than one Host header"), "{answer}");
}
