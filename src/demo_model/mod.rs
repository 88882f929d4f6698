//! `ebb demo-model`: a small OpenAI-compatible inference server for demos, tests and benchmarks. It behaves like
//! a model server where it matters to an autoscaler: it takes a while to load, has a time to first token and a
//! token rate, streams token by token over SSE, and can limit how many requests it works on at once. With
//! `--role prefill|decode` it plays one role of a disaggregated model ([`roles`]), for `ebb up`'s roles.

mod api;
mod roles;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use api::{ApiError, Generation, Kind};
use ebb_http::listen::Acceptor;
use ebb_process::flags;
use roles::Role;

/// Arguments of `ebb demo-model`. Durations take `250ms`, `1.5s` or whole seconds.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on; defaults to `$HOST:$PORT`, else 127.0.0.1:8080.
    #[arg(long, env = "EBB_DEMO_LISTEN")]
    listen: Option<SocketAddr>,
    /// Name of the served model.
    #[arg(long, default_value = "demo", env = "EBB_DEMO_MODEL")]
    model: String,
    /// Time spent "loading the model" before the server listens (connections are refused meanwhile).
    #[arg(long, default_value = "0s", value_parser = flags::duration, env = "EBB_DEMO_STARTUP_DELAY")]
    startup_delay: Duration,
    /// Time from request to the first token.
    #[arg(long, default_value = "20ms", value_parser = flags::duration, env = "EBB_DEMO_TIME_TO_FIRST_TOKEN")]
    time_to_first_token: Duration,
    /// Tokens generated per second after the first (0 = as fast as possible).
    #[arg(long, default_value_t = 100.0, env = "EBB_DEMO_TOKENS_PER_SECOND")]
    tokens_per_second: f64,
    /// Tokens in a response when the request gives no `max_tokens`.
    #[arg(long, default_value_t = 16, env = "EBB_DEMO_RESPONSE_TOKENS")]
    response_tokens: u32,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 4096, env = "EBB_DEMO_MAX_TOKENS")]
    max_tokens: u32,
    /// Requests generated at once; more wait their turn, as in a model server's queue (0 = no limit).
    #[arg(long, default_value_t = 0, env = "EBB_DEMO_CONCURRENCY")]
    concurrency: u32,
    /// The part it plays: the whole model; prefill (answers `POST /v1/prefill` only); or decode (serves
    /// completions, asking every prefill peer first).
    #[arg(long, value_enum, default_value = "whole", env = "EBB_DEMO_ROLE")]
    role: Role,
    /// A decode pod's prefill peers, `HOST:PORT` comma-separated; `ebb up` gives a pod of a role named
    /// `prefill` its instance's as `EBB_PEERS_PREFILL`.
    #[arg(long, env = "EBB_PEERS_PREFILL", default_value = "")]
    prefill_peers: String,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every request handler shares.
struct Server {
    args: Args,
    listen: SocketAddr,
    /// A decode pod's prefill peers.
    peers: Vec<SocketAddr>,
    slots: Option<Arc<Semaphore>>,
    next_id: AtomicU64,
}

/// Runs `ebb demo-model` until SIGTERM or Ctrl-C, then finishes the requests in flight.
pub fn run(args: Args) -> ExitCode {
    let listen = match listen_address(&args) {
        Ok(listen) => listen,
        Err(message) => {
            eprintln!("ebb demo-model: {message}");
            return ExitCode::from(ebb_process::exit::USAGE);
        }
    };
    let peers = match roles::parse_peers(&args.prefill_peers) {
        Ok(peers) => peers,
        Err(message) => {
            eprintln!("ebb demo-model: --prefill-peers: {message}");
            return ExitCode::from(ebb_process::exit::USAGE);
        }
    };
    if args.role == Role::Decode && peers.is_empty() {
        eprintln!(
            "ebb demo-model: --role decode needs its prefill peers: --prefill-peers or EBB_PEERS_PREFILL"
        );
        return ExitCode::from(ebb_process::exit::USAGE);
    }
    if !(args.tokens_per_second >= 0.0 && args.tokens_per_second.is_finite()) {
        eprintln!("ebb demo-model: --tokens-per-second must be a number >= 0");
        return ExitCode::from(ebb_process::exit::USAGE);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let result = runtime.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(serve(args, listen, peers)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ebb demo-model: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn listen_address(args: &Args) -> Result<SocketAddr, String> {
    if let Some(listen) = args.listen {
        return Ok(listen);
    }
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    format!("{host}:{port}")
        .parse()
        .map_err(|_| format!("HOST={host:?} PORT={port:?} is not a socket address"))
}

async fn serve(args: Args, listen: SocketAddr, peers: Vec<SocketAddr>) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = tokio::time::sleep(args.startup_delay) => {}
        _ = terminate.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    }
    let listener =
        TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let listen = listener.local_addr()?;
    eprintln!("ebb demo-model: serving {:?} on http://{listen}", args.model);
    let slots = (args.concurrency > 0).then(|| Arc::new(Semaphore::new(args.concurrency as usize)));
    let server = Arc::new(Server { args, listen, peers, slots, next_id: AtomicU64::new(1) });
    // The shared acceptor: TCP_NODELAY, HTTP/1.1 or h2c, silent clients dropped, accept errors backed off, and
    // a graceful stop that lets streams in flight finish.
    let (acceptor, shutdown) = Acceptor::new();
    tokio::spawn(acceptor.accept(listener, move |request| handle(server.clone(), request)));
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.close(STOP_GRACE).await;
    Ok(())
}

/// How long streams in flight may take to finish once the demo is told to stop.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

async fn handle(server: Arc<Server>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if server.args.role == Role::Prefill {
        return Ok(prefill(&server, request).await);
    }
    let kind = match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/chat/completions") => Kind::Chat,
        (&Method::POST, "/v1/completions") => Kind::Completion,
        (&Method::GET, "/health") => return Ok(json_response(StatusCode::OK, json!({"status": "ok"}))),
        (&Method::GET, "/v1/models") => {
            let model = json!({"id": server.args.model, "object": "model", "created": 0, "owned_by": "ebb"});
            return Ok(json_response(StatusCode::OK, json!({"object": "list", "data": [model]})));
        }
        (_, "/v1/chat/completions" | "/v1/completions" | "/health" | "/v1/models") => {
            let error =
                ApiError { status: 405, message: "Method not allowed.".into(), param: None, code: None };
            return Ok(error_response(&error));
        }
        (_, path) => {
            let error =
                ApiError { status: 404, message: format!("No route for {path}."), param: None, code: None };
            return Ok(error_response(&error));
        }
    };
    let body = match Limited::new(request.into_body(), 1 << 20).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            let error = ApiError {
                status: 400,
                message: format!("Could not read the body: {err}"),
                param: None,
                code: None,
            };
            return Ok(error_response(&error));
        }
    };
    let args = &server.args;
    let generation = match api::parse(kind, &body, &args.model, args.response_tokens, args.max_tokens) {
        Ok(generation) => generation,
        Err(error) => return Ok(error_response(&error)),
    };
    // Decode: the prompt goes through every prefill peer of the instance first.
    let prefilled = match args.role {
        Role::Decode => match roles::prefill(&server.peers, generation.prompt_tokens).await {
            Ok(pods) => pods,
            Err(error) => return Ok(error_response(&error)),
        },
        Role::Whole | Role::Prefill => Vec::new(),
    };
    let mut response = generate(&server, generation, &prefilled).await;
    if !prefilled.is_empty()
        && let Ok(pods) = HeaderValue::from_str(&prefilled.join(","))
    {
        response.headers_mut().insert(PREFILL_HEADER, pods);
    }
    Ok(response)
}

/// The header a decode pod names its prefill pods in (the non-streamed body has them as `prefill` too).
const PREFILL_HEADER: &str = "ebb-demo-prefill";

/// A prefill pod: `POST /v1/prefill` after the time to first token (its work on the prompt), and `/health`.
async fn prefill(server: &Server, request: Request<Incoming>) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/health") => return json_response(StatusCode::OK, json!({"status": "ok"})),
        (&Method::POST, roles::PREFILL_PATH) => {}
        (_, path) => {
            let message =
                format!("No route for {path}: this pod plays prefill (POST {}).", roles::PREFILL_PATH);
            return error_response(&ApiError { status: 404, message, param: None, code: None });
        }
    }
    let body = match Limited::new(request.into_body(), 64 << 10).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            let message = format!("Could not read the body: {err}");
            return error_response(&ApiError { status: 400, message, param: None, code: None });
        }
    };
    let prompt_tokens = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["prompt_tokens"].as_u64());
    let Some(prompt_tokens) = prompt_tokens else {
        return error_response(&ApiError::invalid(
            "prompt_tokens",
            "A whole number `prompt_tokens` is needed.",
        ));
    };
    tokio::time::sleep(server.args.time_to_first_token).await;
    json_response(StatusCode::OK, roles::prefill_answer(server.listen, prompt_tokens))
}

/// The demo's vocabulary: a sentence, repeated, one word per token.
const WORDS: [&str; 14] = [
    "ebb", " scales", " this", " model", " from", " zero", " and", " back", " again,", " one", " token",
    " at", " a", " time.",
];

/// Generates the completion; `prefilled` names the prefill pods that took its prompt (decode only).
async fn generate(server: &Server, generation: Generation, prefilled: &[String]) -> Response<Body> {
    // The slot is held for the whole generation, stream included, as a model server's batch slot would be.
    let permit = match &server.slots {
        Some(slots) => Some(slots.clone().acquire_owned().await.expect("the semaphore is never closed")),
        None => None,
    };
    let id = server.next_id.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let model = server.args.model.clone();
    let gap = match server.args.tokens_per_second {
        rate if rate > 0.0 => Duration::from_secs_f64(1.0 / rate),
        _ => Duration::ZERO,
    };
    let first = server.args.time_to_first_token;
    let Generation { kind, max_tokens, stream, prompt_tokens } = generation;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                       "total_tokens": prompt_tokens + max_tokens});
    let (object, prefix) = match kind {
        Kind::Chat => ("chat.completion", "chatcmpl"),
        Kind::Completion => ("text_completion", "cmpl"),
    };
    let id = format!("{prefix}-{id}");

    if !stream {
        tokio::time::sleep(first + gap * max_tokens.saturating_sub(1)).await;
        drop(permit);
        let text: String = (0..max_tokens as usize).map(|i| WORDS[i % WORDS.len()]).collect();
        let choice = match kind {
            Kind::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
            }
            Kind::Completion => json!({"index": 0, "text": text, "finish_reason": "length"}),
        };
        let mut body = json!({"id": id, "object": object, "created": created, "model": model,
                          "choices": [choice], "usage": usage});
        if !prefilled.is_empty() {
            body["prefill"] = json!(prefilled);
        }
        return json_response(StatusCode::OK, body);
    }

    let chunk = move |token: Option<&str>| -> Bytes {
        let finish = if token.is_none() { Value::from("length") } else { Value::Null };
        let choice = match kind {
            Kind::Chat => {
                json!({"index": 0, "delta": token.map_or(json!({}), |t| json!({"content": t})), "finish_reason": finish})
            }
            Kind::Completion => json!({"index": 0, "text": token.unwrap_or(""), "finish_reason": finish}),
        };
        let object = if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        let event =
            json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
        Bytes::from(format!("data: {event}\n\n"))
    };
    // Token i is sent after the time to first token plus i gaps; then a finishing chunk and `[DONE]`.
    let events = futures::stream::unfold((0u32, permit), move |(i, permit)| {
        let chunk = chunk.clone();
        async move {
            match i {
                i if i < max_tokens => {
                    tokio::time::sleep(if i == 0 { first } else { gap }).await;
                    Some((chunk(Some(WORDS[i as usize % WORDS.len()])), (i + 1, permit)))
                }
                i if i == max_tokens => Some((chunk(None), (i + 1, permit))),
                i if i == max_tokens + 1 => Some((Bytes::from_static(b"data: [DONE]\n\n"), (i + 1, permit))),
                _ => None,
            }
        }
    });
    let body = StreamBody::new(events.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))));
    let mut response = Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn json_response(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, error.body())
}
