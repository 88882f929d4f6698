//! The data plane end to end on loopback: a real upstream, the queue-proxy in process, real clients.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

/// An upstream that holds every request until the test adds permits to `gate`.
async fn gated_upstream() -> (std::net::SocketAddr, Arc<Semaphore>, Arc<AtomicUsize>) {
    let gate = Arc::new(Semaphore::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let (g, i) = (gate.clone(), inside.clone());
    let addr = upstream(move |_req| {
        let (gate, inside) = (g.clone(), i.clone());
        async move {
            inside.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.unwrap().forget();
            inside.fetch_sub(1, Ordering::SeqCst);
            response(200, full("done"))
        }
    })
    .await;
    (addr, gate, inside)
}

#[tokio::test]
async fn concurrency_limit_queues_then_refuses_with_503_and_retry_after() {
    let (addr, gate, inside) = gated_upstream().await;
    let proxy = proxy(addr, &["--container-concurrency", "2", "--queue-depth", "2"]).await;
    let client = client();
    let mut held = Vec::new();
    for _ in 0..4 {
        let (client, url) = (client.clone(), proxy.url("/work"));
        held.push(tokio::spawn(async move { text(send(&client, get(&url)).await).await }));
    }
    let breaker = proxy.data.breaker.clone().expect("a breaker with CC > 0");
    eventually("2 requests reach the upstream and 2 queue", || {
        let (inside, breaker) = (inside.clone(), breaker.clone());
        async move { inside.load(Ordering::SeqCst) == 2 && breaker.queued() == 2 }
    })
    .await;

    let refused = send(&client, get(&proxy.url("/work"))).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_str(&text(refused).await).unwrap();
    assert!(body["error"].as_str().unwrap().contains("queue is full"), "{body}");
    assert_eq!(body["service"], "default/demo");
    assert_eq!(inside.load(Ordering::SeqCst), 2, "the refused request never reached the upstream");

    gate.add_permits(4);
    for request in held {
        assert_eq!(request.await.unwrap(), "done");
    }
    let metrics = metrics(&proxy).await;
    assert_eq!(series(&metrics, "ebb_queue_proxy_breaker_rejections_total"), Some(1.0));
    assert_eq!(series(&metrics, "ebb_queue_proxy_requests_total{status_class=\"2xx\"}"), Some(4.0));
    assert_eq!(series(&metrics, "ebb_queue_proxy_requests_total{status_class=\"5xx\"}"), Some(1.0));
    proxy.stop().await;
}

/// An upstream whose every response body is fed by the test through the senders it hands out.
async fn streaming_upstream(
    content_type: &'static str,
) -> (std::net::SocketAddr, mpsc::Receiver<mpsc::Sender<Frame<Bytes>>>) {
    let (senders_tx, senders) = mpsc::channel(16);
    let addr = upstream(move |_req| {
        let senders_tx = senders_tx.clone();
        async move {
            let (tx, body) = channel_body();
            senders_tx.send(tx).await.unwrap();
            let mut response = response(200, body);
            response.headers_mut().insert("content-type", HeaderValue::from_static(content_type));
            response
        }
    })
    .await;
    (addr, senders)
}

#[tokio::test]
async fn slot_is_held_until_the_streamed_body_ends_or_the_client_leaves() {
    let (addr, mut senders) = streaming_upstream("text/plain").await;
    let proxy = proxy(addr, &["--container-concurrency", "1", "--queue-depth", "0"]).await;
    let breaker = proxy.data.breaker.clone().unwrap();
    let client = client();

    let mut first = send(&client, get(&proxy.url("/stream"))).await;
    let upstream_body = senders.recv().await.unwrap();
    upstream_body.send(Frame::data(Bytes::from_static(b"part 1"))).await.unwrap();
    let frame = first.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "part 1");
    // Headers and a chunk have been delivered, but the body has not ended: the slot is still taken.
    assert_eq!(breaker.in_flight(), 1);
    assert_eq!(send(&client, get(&proxy.url("/other"))).await.status(), 503);

    upstream_body.send(Frame::data(Bytes::from_static(b"part 2"))).await.unwrap();
    drop(upstream_body);
    assert_eq!(text(first).await, "part 2");
    eventually("the slot is free once the body ended", || {
        let breaker = breaker.clone();
        async move { breaker.in_flight() == 0 }
    })
    .await;

    // A client that goes away mid-stream frees the slot too.
    let second = send(&client, get(&proxy.url("/stream"))).await;
    let upstream_body = senders.recv().await.unwrap();
    assert_eq!(breaker.in_flight(), 1);
    drop(second);
    drop(client);
    eventually("the slot is free once the client left", || {
        let breaker = breaker.clone();
        async move { breaker.in_flight() == 0 }
    })
    .await;
    drop(upstream_body);
    proxy.stop().await;
}

#[tokio::test]
async fn sse_tokens_reach_the_client_one_by_one_before_the_stream_ends() {
    let (addr, mut senders) = streaming_upstream("text/event-stream").await;
    let proxy = proxy(addr, &["--container-concurrency", "4"]).await;
    let client = client();
    let mut stream = send(&client, get(&proxy.url("/v1/completions"))).await;
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let tokens = senders.recv().await.unwrap();
    for i in 0..5 {
        let event = format!("data: token {i}\n\n");
        tokens.send(Frame::data(Bytes::from(event.clone()))).await.unwrap();
        // The upstream stream is still open (its sender is alive), and this token is already here.
        let frame =
            tokio::time::timeout(DEADLINE, stream.body_mut().frame()).await.unwrap().unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), event);
    }
    tokens.send(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))).await.unwrap();
    drop(tokens);
    assert_eq!(text(stream).await, "data: [DONE]\n\n");
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_body_reaches_the_upstream_before_the_client_has_sent_all_of_it() {
    // The upstream answers as soon as it has the first chunk of the request body.
    let addr = upstream(|req| async move {
        let mut body = req.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        response(200, full(first))
    })
    .await;
    let proxy = proxy(addr, &[]).await;
    let tcp = TcpStream::connect(proxy.addrs.data).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let (chunks, body) = channel_body();
    let request = Request::post(proxy.url("/upload")).header("host", "demo").body(body).unwrap();
    let response = tokio::spawn(sender.send_request(request));
    chunks.send(Frame::data(Bytes::from_static(b"chunk 1"))).await.unwrap();
    // The body has not ended (the test still holds its sender), so the answer can only come from the first
    // chunk having been forwarded on its own.
    let response =
        tokio::time::timeout(DEADLINE, response).await.expect("answered mid-upload").unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let answer = tokio::time::timeout(DEADLINE, response.into_body().collect()).await.unwrap().unwrap();
    assert_eq!(answer.to_bytes(), "chunk 1");
    drop(chunks);
    proxy.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through() {
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let addr = upstream(|mut req| async move {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return response(400, full("not a websocket handshake"));
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = on_upgrade.await.unwrap();
            let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() || message.is_binary() {
                    ws.send(message).await.unwrap();
                }
            }
        });
        let mut response = response(101, full(""));
        let headers = response.headers_mut();
        headers.insert("connection", HeaderValue::from_static("upgrade"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        let accept = derive_accept_key(key.as_bytes());
        headers.insert("sec-websocket-accept", HeaderValue::from_str(&accept).unwrap());
        response
    })
    .await;
    let proxy = proxy(addr, &["--container-concurrency", "1"]).await;
    let tcp = TcpStream::connect(proxy.addrs.data).await.unwrap();
    let url = format!("ws://{}/echo", proxy.addrs.data);
    let (mut ws, handshake) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(handshake.status(), 101);
    for text in ["hello", "through the queue-proxy"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    // The open WebSocket holds the pod's only slot; closing it frees the slot.
    assert_eq!(proxy.data.breaker.as_ref().unwrap().in_flight(), 1);
    ws.close(None).await.unwrap();
    drop(ws);
    let breaker = proxy.data.breaker.clone().unwrap();
    eventually("the tunnel's slot is freed", || {
        let breaker = breaker.clone();
        async move { breaker.in_flight() == 0 }
    })
    .await;
    proxy.stop().await;
}

async fn h2c_client(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn h2c_is_forwarded_as_h2c_with_trailers() {
    let addr = upstream(|req| async move {
        let version = format!("{:?}", req.version());
        let te = req.headers().get("te").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        // The host name as the user container sees it: `:authority` in HTTP/2, Host in HTTP/1.1.
        let host = match req.uri().authority() {
            Some(authority) => authority.to_string(),
            None => req.headers().get("host").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default(),
        };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-upstream-version", HeaderValue::from_str(&version).unwrap());
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from(format!("te={te}")))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = BodyExt::boxed(http_body_util::StreamBody::new(futures::stream::iter(frames)));
        let mut response = response(200, body);
        response.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        response.headers_mut().insert("x-upstream-version", HeaderValue::from_str(&version).unwrap());
        response.headers_mut().insert("x-upstream-host", HeaderValue::from_str(&host).unwrap());
        response
    })
    .await;
    let proxy = proxy(addr, &[]).await;
    let mut sender = h2c_client(proxy.addrs.data).await;
    // The client names a host other than the proxy's address, as a gateway would.
    let request = Request::post("http://grpc.example:8443/echo.Echo/Say")
        .version(Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.headers()["x-upstream-host"], "grpc.example:8443", "the client's :authority is kept");
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers kept");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-upstream-version"], "HTTP/2.0", "the upstream saw h2c");
    assert_eq!(collected.to_bytes(), "te=trailers");

    // `--protocol http1` overrides the client's protocol.
    let proxy1 = common::proxy(addr, &["--protocol", "http1"]).await;
    let mut sender = h2c_client(proxy1.addrs.data).await;
    let request =
        Request::get("http://grpc.example/x").version(Version::HTTP_2).body(Full::new(Bytes::new())).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.headers()["x-upstream-version"], "HTTP/1.1");
    assert_eq!(
        response.headers()["x-upstream-host"],
        "grpc.example",
        "an h2 client's :authority becomes Host"
    );

    // An HTTP/1.1 client's Host becomes :authority when the upstream speaks h2c.
    let proxy2 = common::proxy(addr, &["--protocol", "h2c"]).await;
    let request =
        Request::get(proxy2.url("/x")).header("host", "web.example").body(Full::new(Bytes::new())).unwrap();
    let response = send(&client(), request).await;
    assert_eq!(response.headers()["x-upstream-version"], "HTTP/2.0");
    assert_eq!(response.headers()["x-upstream-host"], "web.example");
    proxy.stop().await;
    proxy1.stop().await;
    proxy2.stop().await;
}

#[tokio::test]
async fn errors_are_answered_in_the_shape_each_client_understands() {
    // Nothing listens upstream: connection refused.
    let proxy = proxy_unready(closed_port(), &[]).await;
    let client = client();
    let plain = send(&client, get(&proxy.url("/api"))).await;
    // Nothing reached a container: 503 with Retry-After, marked as this proxy's own answer.
    assert_eq!(plain.status(), 503);
    assert_eq!(plain.headers()["retry-after"], "1");
    assert_eq!(plain.headers()["ebb-proxy-error"], "upstream_refused");
    let body: serde_json::Value = serde_json::from_str(&text(plain).await).unwrap();
    assert_eq!(body["error"], "upstream refused the connection");
    assert_eq!(body["service"], "default/demo");

    let openai = send(&client, get(&proxy.url("/v1/chat/completions"))).await;
    assert_eq!(openai.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&text(openai).await).unwrap();
    assert_eq!(body["error"]["code"], "upstream_refused");
    assert_eq!(body["error"]["type"], "upstream_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("refused"));

    let mut sender = h2c_client(proxy.addrs.data).await;
    let request = Request::post(proxy.url("/echo.Echo/Say"))
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let grpc = sender.send_request(request).await.unwrap();
    assert_eq!(grpc.status(), 200, "gRPC errors travel as a gRPC status");
    assert_eq!(grpc.headers()["grpc-status"], "14", "UNAVAILABLE");
    assert!(grpc.headers()["grpc-message"].to_str().unwrap().contains("refused"));

    // Header-gated probe: 503 until the user container is ready; no user path is shadowed.
    let probe =
        Request::get(proxy.url("/")).header("ebb-probe", "queue").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send(&client, probe).await.status(), 503);

    let metrics = metrics(&proxy).await;
    assert_eq!(
        series(&metrics, "ebb_queue_proxy_errors_total{origin=\"upstream\",reason=\"upstream_refused\"}"),
        Some(3.0)
    );
    proxy.stop().await;

    // An upstream that accepts and hangs up without answering: reset.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resets = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1];
            // Probes connect without sending; requests send bytes, then get hung up on.
            if stream.read(&mut buf).await.unwrap_or(0) > 0 {
                drop(stream);
            }
        }
    });
    let proxy = common::proxy(addr, &[]).await;
    let reset = send(&client, get(&proxy.url("/api"))).await;
    assert_eq!(reset.status(), 502);
    assert_eq!(reset.headers()["ebb-proxy-error"], "upstream_reset");
    let body: serde_json::Value = serde_json::from_str(&text(reset).await).unwrap();
    assert_eq!(body["error"], "upstream reset the connection before responding");
    resets.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_400_and_probes_answer_queue() {
    let addr =
        upstream(|req| async move { response(200, full(format!("user path {}", req.uri().path()))) }).await;
    let proxy = proxy(addr, &[]).await;
    let mut raw = TcpStream::connect(proxy.addrs.data).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(DEADLINE, raw.read(&mut answer)).await.unwrap().unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&answer[..n]));

    let client = client();
    let probe =
        Request::get(proxy.url("/")).header("ebb-probe", "queue").body(Full::new(Bytes::new())).unwrap();
    let probed = send(&client, probe).await;
    assert_eq!(probed.status(), 200);
    assert_eq!(text(probed).await, "queue");
    // The same path without the header reaches the user container.
    assert_eq!(text(send(&client, get(&proxy.url("/"))).await).await, "user path /");
    proxy.stop().await;
}

#[tokio::test]
async fn a_held_probe_is_answered_the_moment_the_user_container_is_ready() {
    // The user container starts listening 300 ms after the queue-proxy: a probe that may wait is held until
    // then and answered 200; one that may not is answered 503 at once.
    let port = ReservedPort::new();
    let proxy = common::proxy_unready(port.1, &[]).await;
    let client = client();
    let probe = |wait: &str| {
        Request::get(proxy.url("/"))
            .header("ebb-probe", "queue")
            .header("ebb-probe-wait", wait)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(&client, probe("0")).await.status(), 503);
    let held = tokio::spawn({
        let (client, probe) = (client.clone(), probe("5"));
        async move { send(&client, probe).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the probe is held while the container starts");
    let listener = port.listen();
    let answer = tokio::time::timeout(DEADLINE, held).await.expect("answered once ready").unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(text(answer).await, "queue");
    drop(listener);
    proxy.stop().await;
}

#[tokio::test]
async fn the_data_port_probe_follows_readiness_re_probes_when_the_container_goes_and_comes_back() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = |_req| async { response(200, full("ok")) };
    let serving = serve_upstream(listener, handler);
    let proxy = proxy(addr, &[]).await;
    let client = client();
    let data_probe = || async {
        let probe =
            Request::get(proxy.url("/")).header("ebb-probe", "queue").body(Full::new(Bytes::new())).unwrap();
        send(&client, probe).await.status().as_u16()
    };
    assert_eq!(data_probe().await, 200);
    assert_eq!(fetch(proxy.addrs.admin, "/ready").await.0, 200);

    // The user container goes away: the kubelet's next readiness check finds out, and so does the data port.
    serving.abort();
    let _ = serving.await;
    let (status, body) = fetch(proxy.addrs.admin, "/ready").await;
    assert_eq!((status, &body[..]), (503, &b"user container not ready"[..]));
    assert_eq!(data_probe().await, 503);
    assert!(!proxy.data.is_ready());

    // It comes back on the same port: the next readiness check turns both back to 200.
    let serving = serve_upstream(tokio::net::TcpListener::bind(addr).await.unwrap(), handler);
    assert_eq!(fetch(proxy.addrs.admin, "/ready").await.0, 200);
    assert_eq!(data_probe().await, 200);
    serving.abort();
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// Timeouts

/// An upstream that answers `/stall` never, `/headers-then-stall` with headers and one chunk, and `/drip`
/// with ten chunks 50 ms apart.
async fn slow_upstream() -> std::net::SocketAddr {
    upstream(|req| async move {
        match req.uri().path() {
            "/stall" => std::future::pending().await,
            "/headers-then-stall" => {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    tx.send(Frame::data(Bytes::from_static(b"first"))).await.unwrap();
                    std::future::pending::<()>().await;
                    drop(tx);
                });
                response(200, body)
            }
            _ => {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let _ = tx.send(Frame::data(Bytes::from_static(b"."))).await;
                    }
                });
                response(200, body)
            }
        }
    })
    .await
}

#[tokio::test]
async fn response_start_timeout_answers_504() {
    let proxy =
        proxy(slow_upstream().await, &["--response-start-timeout", "200ms", "--timeout", "60s"]).await;
    let response = send(&client(), get(&proxy.url("/stall"))).await;
    assert_eq!(response.status(), 504);
    assert!(text(response).await.contains("response-start timeout"));
    let metrics = metrics(&proxy).await;
    assert_eq!(series(&metrics, "ebb_queue_proxy_timeouts_total{kind=\"response_start\"}"), Some(1.0));
    proxy.stop().await;
}

#[tokio::test]
async fn total_timeout_answers_504_before_headers_and_cuts_the_body_after() {
    let proxy = proxy(slow_upstream().await, &["--timeout", "300ms"]).await;
    let client = client();
    let response = send(&client, get(&proxy.url("/stall"))).await;
    assert_eq!(response.status(), 504);
    assert!(text(response).await.contains("total timeout"));

    let mut response = send(&client, get(&proxy.url("/headers-then-stall"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.body_mut().frame().await.unwrap().unwrap().into_data().unwrap(), "first");
    let rest = tokio::time::timeout(DEADLINE, response.into_body().collect()).await.unwrap();
    assert!(rest.is_err(), "the stream is cut, not ended cleanly");
    let proxy_metrics = metrics(&proxy).await;
    assert_eq!(series(&proxy_metrics, "ebb_queue_proxy_timeouts_total{kind=\"total\"}"), Some(2.0));
    proxy.stop().await;
}

#[tokio::test]
async fn idle_timeout_cuts_a_stalled_stream_but_not_a_steady_one() {
    let proxy = proxy(slow_upstream().await, &["--idle-timeout", "500ms", "--timeout", "60s"]).await;
    let client = client();
    let steady = send(&client, get(&proxy.url("/drip"))).await;
    assert_eq!(text(steady).await, "..........");

    let mut stalled = send(&client, get(&proxy.url("/headers-then-stall"))).await;
    assert_eq!(stalled.body_mut().frame().await.unwrap().unwrap().into_data().unwrap(), "first");
    let rest = tokio::time::timeout(DEADLINE, stalled.into_body().collect()).await.unwrap();
    assert!(rest.is_err());
    let metrics = metrics(&proxy).await;
    assert_eq!(series(&metrics, "ebb_queue_proxy_timeouts_total{kind=\"idle\"}"), Some(1.0));
    proxy.stop().await;
}

#[tokio::test]
async fn idle_timeout_answers_504_when_the_upstream_never_starts_responding() {
    // The total and response-start timeouts are a minute; only the idle timeout can answer within `send`'s
    // deadline.
    let proxy = proxy(slow_upstream().await, &["--idle-timeout", "200ms", "--timeout", "60s"]).await;
    let response = send(&client(), get(&proxy.url("/stall"))).await;
    assert_eq!(response.status(), 504);
    let body = text(response).await;
    assert!(body.contains("idle timeout"), "{body}");
    let metrics = metrics(&proxy).await;
    assert_eq!(series(&metrics, "ebb_queue_proxy_timeouts_total{kind=\"idle\"}"), Some(1.0));
    assert_eq!(series(&metrics, "ebb_queue_proxy_timeouts_total{kind=\"response_start\"}"), Some(0.0));
    proxy.stop().await;
}

#[tokio::test]
async fn queued_requests_wait_no_longer_than_their_response_start_timeout() {
    // The first response streams on and keeps the only slot for as long as the test wants.
    let (addr, mut senders) = streaming_upstream("text/plain").await;
    let flags = ["--container-concurrency", "1", "--timeout", "60s", "--response-start-timeout", "300ms"];
    let proxy = proxy(addr, &flags).await;
    let client = client();
    let first = send(&client, get(&proxy.url("/stream"))).await;
    let first_body = senders.recv().await.unwrap();
    assert_eq!(proxy.data.breaker.as_ref().unwrap().in_flight(), 1);
    // The total timeout is a minute, far beyond `send`'s deadline: the queued request is answered because
    // its response-start deadline bounds the wait for a slot.
    let queued = send(&client, get(&proxy.url("/"))).await;
    assert_eq!(queued.status(), 504);
    let body = text(queued).await;
    assert!(body.contains("waiting in the queue") && body.contains("response-start"), "{body}");
    let metrics = metrics(&proxy).await;
    assert_eq!(series(&metrics, "ebb_queue_proxy_timeouts_total{kind=\"response_start\"}"), Some(1.0));
    assert_eq!(series(&metrics, "ebb_queue_proxy_timeouts_total{kind=\"total\"}"), Some(0.0));
    drop(first_body);
    assert_eq!(text(first).await, "");
    proxy.stop().await;
}

#[tokio::test]
async fn queued_requests_time_out_with_their_total_timeout() {
    let (addr, gate, _inside) = gated_upstream().await;
    let proxy = proxy(addr, &["--container-concurrency", "1", "--timeout", "400ms"]).await;
    let client = client();
    let first = tokio::spawn({
        let (client, url) = (client.clone(), proxy.url("/"));
        async move { send(&client, get(&url)).await.status() }
    });
    let breaker = proxy.data.breaker.clone().unwrap();
    eventually("the first request holds the slot", || {
        let breaker = breaker.clone();
        async move { breaker.in_flight() == 1 }
    })
    .await;
    // Queued behind a request that holds the slot until its own total timeout, this one gets either no slot
    // before its deadline or a slot with no time left: 504 either way, never a wait past its timeout.
    let queued = send(&client, get(&proxy.url("/"))).await;
    assert_eq!(queued.status(), 504);
    assert!(text(queued).await.contains("time"));
    assert_eq!(first.await.unwrap(), 504, "the held request hits its total timeout too");
    gate.add_permits(10);
    proxy.stop().await;
}
