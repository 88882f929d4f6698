//! `ebb demo-model` end to end: the real binary on a loopback port, spoken to over real sockets.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A running demo model; killed on drop.
struct Model {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Model {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on 127.0.0.1:0 and waits for the line that names its address.
fn start(args: &[&str]) -> Model {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["demo-model", "--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines.next().expect("the demo model exited before listening").unwrap();
    let addr =
        line.rsplit("http://").next().unwrap().parse().unwrap_or_else(|_| panic!("no address in {line:?}"));
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Model { child, addr }
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "demo")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    sender.send_request(request).await.unwrap()
}

async fn json(response: Response<Incoming>) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

const CHAT: &str = r#"{"model":"demo","messages":[{"role":"user","content":"hi there"}],"max_tokens":5}"#;

#[tokio::test]
async fn chat_completion_models_and_health() {
    let model = start(&["--time-to-first-token", "0s", "--tokens-per-second", "0"]);
    let (status, body) = json(send(model.addr, "POST", "/v1/chat/completions", CHAT).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "ebb scales this model from");
    assert_eq!(
        body["usage"],
        serde_json::json!({"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7})
    );

    let (status, body) =
        json(send(model.addr, "POST", "/v1/completions", r#"{"prompt":"x","max_tokens":2}"#).await).await;
    assert_eq!((status, body["choices"][0]["text"].as_str()), (200, Some("ebb scales")));

    let (status, body) = json(send(model.addr, "GET", "/v1/models", "").await).await;
    assert_eq!((status, body["data"][0]["id"].as_str()), (200, Some("demo")));
    let (status, _) = json(send(model.addr, "GET", "/health", "").await).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn malformed_requests_get_openai_style_errors() {
    let model = start(&[]);
    let cases = [
        ("POST", "/v1/chat/completions", "{", 400, "invalid_request_error"),
        ("POST", "/v1/chat/completions", r#"{"messages":"hi"}"#, 400, "invalid_request_error"),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"other","messages":[{"role":"user","content":"x"}]}"#,
            404,
            "invalid_request_error",
        ),
        ("GET", "/v1/chat/completions", "", 405, "invalid_request_error"),
        ("GET", "/nope", "", 404, "invalid_request_error"),
    ];
    for (method, path, body, status, kind) in cases {
        let (got, error) = json(send(model.addr, method, path, body).await).await;
        assert_eq!(got, status, "{method} {path} {body}: {error}");
        assert_eq!(error["error"]["type"], kind, "{error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn streams_token_by_token_and_ends_with_done() {
    // 5 tokens, 100 ms apart: the first event must reach us while the rest are still being generated.
    let model = start(&["--time-to-first-token", "0s", "--tokens-per-second", "10"]);
    let body = CHAT.replace("\"max_tokens\":5", "\"stream\":true,\"max_tokens\":5");
    let response = send(model.addr, "POST", "/v1/chat/completions", &body).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut events = Vec::new();
    let mut first_event_while_streaming = false;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else { continue };
        let text = String::from_utf8(data.to_vec()).unwrap();
        if events.is_empty() {
            first_event_while_streaming = !text.contains("[DONE]");
        }
        events.extend(text.split("\n\n").filter(|e| !e.is_empty()).map(str::to_owned));
    }
    assert!(first_event_while_streaming, "the first token arrived only with the end of the stream");
    assert_eq!(events.len(), 7, "5 tokens, a finishing chunk and [DONE]: {events:#?}");
    assert_eq!(events.last().unwrap(), "data: [DONE]");
    let tokens: String = events[..5]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e.strip_prefix("data: ").unwrap()).unwrap())
        .map(|v| v["choices"][0]["delta"]["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens, "ebb scales this model from");
    let finish: Value = serde_json::from_str(events[5].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn the_concurrency_limit_makes_requests_wait_their_turn() {
    // One slot and 300 ms per request: two requests at once cannot both finish in less than 600 ms.
    let model = start(&["--concurrency", "1", "--time-to-first-token", "300ms", "--tokens-per-second", "0"]);
    let started = Instant::now();
    let (a, b) = tokio::join!(
        send(model.addr, "POST", "/v1/chat/completions", CHAT),
        send(model.addr, "POST", "/v1/chat/completions", CHAT)
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert!(started.elapsed() >= Duration::from_millis(600), "both ran at once: {:?}", started.elapsed());
}

#[tokio::test]
async fn sigterm_finishes_the_stream_in_flight_then_exits() {
    let mut model = start(&["--time-to-first-token", "0s", "--tokens-per-second", "20"]);
    let body = CHAT.replace("\"max_tokens\":5", "\"stream\":true,\"max_tokens\":10");
    let mut response = send(model.addr, "POST", "/v1/chat/completions", &body).await.into_body();
    let first = response.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    let status = Command::new("kill").args(["-TERM", &model.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest = response.collect().await.expect("the stream was cut by SIGTERM").to_bytes();
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = model.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the demo model did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn decode_asks_every_prefill_peer_and_fails_clearly_without_one() {
    let prefill =
        [start(&["--role", "prefill", "--time-to-first-token", "0s"]), start(&["--role", "prefill"])];
    let peers = format!("{},{}", prefill[0].addr, prefill[1].addr);
    let decode = start(&["--role", "decode", "--prefill-peers", &peers, "--time-to-first-token", "0s"]);

    // A prefill pod answers its internal endpoint only.
    let (status, body) =
        json(send(prefill[0].addr, "POST", "/v1/prefill", r#"{"prompt_tokens":3}"#).await).await;
    assert_eq!((status, body["prompt_tokens"].as_u64()), (200, Some(3)), "{body}");
    let (status, body) = json(send(prefill[0].addr, "POST", "/v1/chat/completions", CHAT).await).await;
    assert_eq!(status, 404, "{body}");

    // Decode names both prefill pods that took the prompt (outside `ebb up`, by their addresses).
    let response = send(decode.addr, "POST", "/v1/chat/completions", CHAT).await;
    let header = response.headers()["ebb-demo-prefill"].to_str().unwrap().to_owned();
    let (status, body) = json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "ebb scales this model from");
    let expected = [prefill[0].addr.to_string(), prefill[1].addr.to_string()];
    assert_eq!(body["prefill"], serde_json::json!(expected));
    assert_eq!(header, expected.join(","));

    // Without its second prefill peer, a completion is a 502 that names it.
    let gone = prefill[1].addr;
    let [_first, second] = prefill;
    drop(second);
    let (status, body) = json(send(decode.addr, "POST", "/v1/chat/completions", CHAT).await).await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("prefill peer {gone} failed")), "{message}");

    // A decode role with no peers is a bad command line.
    let output = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["demo-model", "--role", "decode"])
        .env_remove("EBB_PEERS_PREFILL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--prefill-peers"));
}
