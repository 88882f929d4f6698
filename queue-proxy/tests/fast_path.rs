//! The HTTP/1 fast path (`ebb_http::h1`) end to end: what it carries itself (keep-alive, pipelining, bodies both
//! ways, every response framing, early answers, upstream connections reused and found closed) and what it must
//! never do (let a smuggled request through, relay hop-by-hop fields, treat malformed input differently from
//! hyper).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What an upstream saw: method, path and body of every request, and how many connections it accepted.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(String, String, Bytes)>>,
    connections: std::sync::atomic::AtomicUsize,
}

impl Seen {
    fn paths(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().map(|(_, path, _)| path.clone()).collect()
    }
}

/// An HTTP/1.1 upstream that records every request and answers with its path, and its request's header names
/// in `x-names`.
async fn recording_upstream() -> (std::net::SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            s.connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let names: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
                        let names = names.join(",");
                        s.requests.lock().unwrap().push((
                            parts.method.to_string(),
                            parts.uri.path().to_owned(),
                            body.clone(),
                        ));
                        let mut response =
                            http::Response::new(full(format!("{} {}", parts.uri.path(), body.len())));
                        response.headers_mut().insert("x-names", HeaderValue::from_str(&names).unwrap());
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// An upstream that runs `serve` on every connection it accepts (raw bytes, for answers hyper would not give).
async fn raw_upstream<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Reads a request head (up to the empty line) from a raw upstream's connection; `None` when it closes first.
async fn read_request_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Sends `raw` on a new connection and reads everything until the proxy closes it (at most [`DEADLINE`]).
async fn exchange_raw(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy did not close; read so far: {}", String::from_utf8_lossy(&out));
    String::from_utf8_lossy(&out).into_owned()
}

/// A hyper client on one connection (keep-alive, one request at a time).
async fn one_connection(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn request(method: &str, path: &str, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "demo")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn keep_alive_requests_share_one_upstream_connection() {
    let (addr, seen) = recording_upstream().await;
    let proxy = proxy(addr, &[]).await;
    let mut sender = one_connection(proxy.addrs.data).await;
    for i in 0..5 {
        let body = if i % 2 == 0 { "" } else { "a body" };
        let response = sender
            .send_request(request(if i % 2 == 0 { "GET" } else { "POST" }, &format!("/r{i}"), body))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("date"));
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, format!("/r{i} {}", body.len()));
    }
    // The readiness probe has its own connection; every request went over one more.
    let connections = seen.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(connections <= 2, "{connections} upstream connections for 5 requests on one client connection");
    assert_eq!(seen.paths(), ["/r0", "/r1", "/r2", "/r3", "/r4"]);
    proxy.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (addr, seen) = recording_upstream().await;
    let proxy = proxy(addr, &[]).await;
    let raw = "GET /1 HTTP/1.1\r\nhost: demo\r\n\r\nPOST /2 HTTP/1.1\r\nhost: demo\r\ncontent-length: 5\r\n\r\nhello\
               GET /3 HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n";
    let answer = exchange_raw(proxy.addrs.data, raw.as_bytes()).await;
    let bodies: Vec<&str> =
        answer.split("\r\n\r\n").skip(1).map(|part| part.split("HTTP/1.1").next().unwrap()).collect();
    assert_eq!(bodies, ["/1 0", "/2 5", "/3 0"], "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert_eq!(seen.paths(), ["/1", "/2", "/3"]);
    proxy.stop().await;
}

#[tokio::test]
async fn smuggled_requests_never_reach_the_upstream() {
    let (addr, seen) = recording_upstream().await;
    let proxy = proxy(addr, &[]).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: demo\r\n\r\n";
    let attacks = [
        // CL.TE: a proxy reading Content-Length would forward the smuggled request inside the body; one reading
        // Transfer-Encoding (chunked wins, RFC 9112 section 6.3) would see it as the next request.
        format!(
            "POST / HTTP/1.1\r\nhost: demo\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        // TE.CL.
        format!(
            "POST / HTTP/1.1\r\nhost: demo\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
        // Two lengths.
        format!(
            "POST / HTTP/1.1\r\nhost: demo\r\ncontent-length: 0\r\ncontent-length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!("POST / HTTP/1.1\r\nhost: demo\r\ncontent-length: 0, {}\r\n\r\n{smuggled}", smuggled.len()),
        // Lengths and codings that parsers read differently.
        format!("POST / HTTP/1.1\r\nhost: demo\r\ncontent-length: +{}\r\n\r\n{smuggled}", smuggled.len()),
        format!("POST / HTTP/1.1\r\nhost: demo\r\ncontent-length : {}\r\n\r\n{smuggled}", smuggled.len()),
        format!(
            "POST / HTTP/1.1\r\nhost: demo\r\ncontent-length: 0\r\n {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!(
            "POST / HTTP/1.1\r\nhost: demo\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!("POST / HTTP/1.1\r\nhost: demo\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!(
            "POST / HTTP/1.1\r\nhost: demo\r\ntransfer-encoding:\tchunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!("POST / HTTP/1.0\r\nhost: demo\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        // A request inside a body is a body.
        format!(
            "POST / HTTP/1.1\r\nhost: demo\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        // A NUL, a bare CR, a header without a colon.
        format!(
            "POST / HTTP/1.1\r\nhost: demo\r\nx-a: a\0b\r\ncontent-length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!("POST / HTTP/1.1\r\nhost: demo\rcontent-length: {}\r\n\r\n{smuggled}", smuggled.len()),
        format!("POST / HTTP/1.1\r\nhost: demo\r\ncontent-length {}\r\n\r\n{smuggled}", smuggled.len()),
    ];
    for attack in &attacks {
        let answer = exchange_raw(proxy.addrs.data, attack.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 "), "no answer to {attack:?}: {answer:?}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{attack:?} got two answers: {answer}");
        assert!(!seen.paths().iter().any(|p| p == "/smuggled"), "smuggled through by {attack:?}");
    }
    // Whatever was forwarded was a request for `/` whose body (if any) held the smuggled text.
    for (method, path, _) in seen.requests.lock().unwrap().iter() {
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/"));
    }
    proxy.stop().await;
}

#[tokio::test]
async fn malformed_and_unusual_requests_are_answered_as_before() {
    let (addr, _seen) = recording_upstream().await;
    let proxy = proxy(addr, &[]).await;
    for (raw, status) in [
        ("GET / HTTP/1.1\r\nhost: demo\r\nbad header line\r\n\r\n".to_owned(), "400"),
        ("GET /a b HTTP/1.1\r\nhost: demo\r\n\r\n".to_owned(), "400"),
        ("GET / HTTP/1.1\r\nhost: demo\r\nhost: other\r\n\r\n".to_owned(), "400"),
        ("GET / HTTP/9.9\r\nhost: demo\r\n\r\n".to_owned(), "400"),
        // Large heads, rare forms and HTTP/1.0 are hyper's and served as before.
        (format!("GET / HTTP/1.1\r\nhost: demo\r\nx-big: {}\r\nconnection: close\r\n\r\n", "b".repeat(20_000)), "200"),
        ("GET /a{b} HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n".to_owned(), "200"),
        ("GET http://demo/abs HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n".to_owned(), "200"),
        ("GET / HTTP/1.0\r\nhost: demo\r\n\r\n".to_owned(), "200"),
        ("POST / HTTP/1.1\r\nhost: demo\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_owned(), "200"),
    ] {
        let answer = exchange_raw(proxy.addrs.data, raw.as_bytes()).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")) || answer.starts_with(&format!("HTTP/1.0 {status}")),
            "{:?} -> {answer:?}", &raw[..raw.len().min(60)]);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn an_early_answer_is_relayed_and_the_unread_body_drained() {
    // The model refuses a prompt that is too long as soon as it sees the head, and hangs up.
    let addr = raw_upstream(|mut stream| async move {
        if read_request_head(&mut stream).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo long")
                .await;
        }
    })
    .await;
    let proxy = proxy(addr, &[]).await;
    let mut client = TcpStream::connect(proxy.addrs.data).await.unwrap();
    let size = 4 << 20;
    client
        .write_all(
            format!("POST /v1/completions HTTP/1.1\r\nhost: demo\r\ncontent-length: {size}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let (mut read, mut write) = client.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, read.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.ends_with("too long"), "{answer}");
    writer.await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn bodiless_responses_keep_the_connection_and_every_framing_is_rechunked() {
    let addr = raw_upstream(|mut stream| async move {
        while let Some(head) = read_request_head(&mut stream).await {
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let answer: &[u8] = match path.as_str() {
                "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n",
                "/204" => b"HTTP/1.1 204 No Content\r\n\r\n",
                "/304" => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
                "/hints" => b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\nconnection: x-hop\r\nx-hop: 1\r\nkeep-alive: 5\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
                _ => b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
            };
            if stream.write_all(answer).await.is_err() || path == "/close-delimited" {
                return;
            }
        }
    })
    .await;
    let proxy = proxy(addr, &[]).await;
    let mut sender = one_connection(proxy.addrs.data).await;
    let head = sender.send_request(request("HEAD", "/head", "")).await.unwrap();
    assert_eq!(head.headers()["content-length"], "1234");
    assert!(head.into_body().collect().await.unwrap().to_bytes().is_empty());
    let no_content = sender.send_request(request("GET", "/204", "")).await.unwrap();
    assert_eq!(no_content.status(), 204);
    let not_modified = sender.send_request(request("GET", "/304", "")).await.unwrap();
    assert_eq!(not_modified.status(), 304);
    let hinted = sender.send_request(request("GET", "/hints", "")).await.unwrap();
    assert_eq!(hinted.status(), 200);
    assert_eq!(hinted.into_body().collect().await.unwrap().to_bytes(), "ok");
    let chunked = sender.send_request(request("GET", "/chunked", "")).await.unwrap();
    assert_eq!(chunked.headers()["transfer-encoding"], "chunked");
    for hop in ["x-hop", "keep-alive", "content-length", "connection"] {
        assert!(!chunked.headers().contains_key(hop), "{hop} relayed: {:?}", chunked.headers());
    }
    assert_eq!(chunked.into_body().collect().await.unwrap().to_bytes(), "hello world");
    let until_close = sender.send_request(request("GET", "/close-delimited", "")).await.unwrap();
    assert_eq!(until_close.headers()["transfer-encoding"], "chunked");
    assert_eq!(until_close.into_body().collect().await.unwrap().to_bytes(), "until the end");
    // All of it on one client connection.
    assert_eq!(sender.send_request(request("GET", "/hints", "")).await.unwrap().status(), 200);
    proxy.stop().await;
}

#[tokio::test]
async fn hop_by_hop_fields_are_removed_and_the_mark_is_not_passed_on() {
    let (addr, _seen) = recording_upstream().await;
    let proxy = proxy(addr, &[]).await;
    let answer = exchange_raw(
        proxy.addrs.data,
        b"GET /x HTTP/1.1\r\nhost: demo\r\nconnection: keep-alive, close\r\nkeep-alive: timeout=5\r\n\
          ebb-proxied: activator\r\nk-proxy-request: activator\r\nx-end: 1\r\n\r\n",
    )
    .await;
    let names = answer.lines().find_map(|l| l.strip_prefix("x-names: ")).unwrap_or_default().to_owned();
    assert_eq!(names, "host,x-end", "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_kept_connection_the_upstream_closed_is_not_an_error() {
    // The upstream keeps no connection: it answers one request and closes, without saying so.
    let addr = raw_upstream(|mut stream| async move {
        if read_request_head(&mut stream).await.is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        }
    })
    .await;
    let proxy = proxy(addr, &[]).await;
    let mut sender = one_connection(proxy.addrs.data).await;
    for _ in 0..20 {
        let response = sender.send_request(request("GET", "/", "")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_while_queued_frees_its_place() {
    let (senders_tx, mut senders) = tokio::sync::mpsc::channel(4);
    let addr = upstream(move |_req| {
        let senders_tx = senders_tx.clone();
        async move {
            let (tx, body) = channel_body();
            senders_tx.send(tx).await.unwrap();
            response(200, body)
        }
    })
    .await;
    let proxy = proxy(addr, &["--container-concurrency", "1", "--queue-depth", "4"]).await;
    let breaker = proxy.data.breaker.clone().unwrap();
    let mut holder = TcpStream::connect(proxy.addrs.data).await.unwrap();
    holder.write_all(b"GET /hold HTTP/1.1\r\nhost: demo\r\n\r\n").await.unwrap();
    let body = senders.recv().await.unwrap();
    let mut waiter = TcpStream::connect(proxy.addrs.data).await.unwrap();
    waiter.write_all(b"GET /wait HTTP/1.1\r\nhost: demo\r\n\r\n").await.unwrap();
    eventually("the second request queues", || {
        let breaker = breaker.clone();
        async move { breaker.queued() == 1 }
    })
    .await;
    drop(waiter);
    eventually("the queue is empty once its client left", || {
        let breaker = breaker.clone();
        async move { breaker.queued() == 0 }
    })
    .await;
    drop(body);
    drop(holder);
    eventually("the slot is free", || {
        let breaker = breaker.clone();
        async move { breaker.in_flight() == 0 }
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_that_breaks_its_framing_gets_a_502_or_a_cut() {
    let addr = raw_upstream(|mut stream| async move {
        if let Some(head) = read_request_head(&mut stream).await {
            let answer: &[u8] = match head.split(' ').nth(1).unwrap_or("/") {
                "/two-lengths" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
                "/bad-chunk" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "/short" => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
                _ => b"nonsense\r\n\r\n",
            };
            let _ = stream.write_all(answer).await;
        }
    })
    .await;
    let proxy = proxy(addr, &[]).await;
    let client = client();
    for path in ["/two-lengths", "/nonsense"] {
        let answer = send(&client, get(&proxy.url(path))).await;
        assert_eq!(answer.status(), 502, "{path}");
        assert_eq!(answer.headers()["ebb-proxy-error"], "upstream_protocol", "{path}");
    }
    for path in ["/bad-chunk", "/short"] {
        let answer = send(&client, get(&proxy.url(path))).await;
        assert_eq!(answer.status(), 200, "{path}");
        assert!(answer.into_body().collect().await.is_err(), "{path}: the body is cut, not ended");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let metrics = metrics(&proxy).await;
    assert_eq!(
        series(&metrics, "ebb_queue_proxy_errors_total{origin=\"upstream\",reason=\"upstream_protocol\"}"),
        Some(3.0),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_request_body_keeps_flowing_while_the_response_streams() {
    // An echo that answers at once and streams back each piece of the body as it reads it (full duplex).
    let addr = raw_upstream(|mut stream| async move {
        let Some(head) = read_request_head(&mut stream).await else { return };
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
        let mut read = 0;
        let mut buf = [0u8; 1024];
        while read < length {
            let Ok(n) = stream.read(&mut buf).await else { return };
            if n == 0 {
                return;
            }
            read += n;
            let _ = stream.write_all(format!("{n:x}\r\n").as_bytes()).await;
            let _ = stream.write_all(&buf[..n]).await;
            let _ = stream.write_all(b"\r\n").await;
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
    })
    .await;
    let proxy = proxy(addr, &[]).await;
    let mut client = TcpStream::connect(proxy.addrs.data).await.unwrap();
    client.write_all(b"POST /echo HTTP/1.1\r\nhost: demo\r\ncontent-length: 10\r\n\r\nhello").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("hello") {
        let n = tokio::time::timeout(DEADLINE, client.read(&mut buf))
            .await
            .expect("the first half echoed")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    client.write_all(b"world").await.unwrap();
    while !seen.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, client.read(&mut buf))
            .await
            .expect("the second half echoed")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("world"), "{seen}");
    proxy.stop().await;
}
