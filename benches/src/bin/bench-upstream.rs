//! The upstream for the data-plane benchmarks: an HTTP/1.1 keep-alive server on one thread that answers every
//! request with the same body of `--size` bytes, or with `--sse N` a server-sent event stream of N token
//! events one `--sse-interval-ms` apart and a final `data: [DONE]`, each event its own write (as a model
//! server streams tokens). Prints `{"addr":"IP:PORT"}` once listening.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Benchmark upstream: fixed-size answers or SSE token streams over HTTP/1.1 keep-alive")]
struct Args {
    /// Address to listen on (port 0 = any).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Response body size in bytes (ignored with --sse).
    #[arg(long, default_value_t = 13)]
    size: usize,
    /// Answer with a stream of this many token events (chunked, `text/event-stream`).
    #[arg(long)]
    sse: Option<usize>,
    /// Time between two events of a stream, in milliseconds (0: back to back).
    #[arg(long, default_value_t = 1)]
    sse_interval_ms: u64,
}

type Body = BoxBody<Bytes, Infallible>;

/// One token event of the size an OpenAI-style chunk of one short token has on the wire (about 100 bytes).
fn token_event(i: usize) -> Bytes {
    let json =
        format!(r#"{{"id":"bench","object":"text_completion","choices":[{{"index":0,"text":" t{i}"}}]}}"#);
    Bytes::from(format!("data: {json}\n\n"))
}

/// A token stream: events come from a task that writes them one interval apart.
struct Events(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|event| event.map(|bytes| Ok(Frame::data(bytes))))
    }
}

fn stream(events: usize, interval: Duration) -> Body {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for i in 0..events {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if tx.send(token_event(i)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    Events(rx).boxed()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&args.listen).await?;
        println!("{{\"addr\":\"{}\"}}", listener.local_addr()?);
        let body =
            Bytes::from(if args.size == 13 { b"hello, world\n".to_vec() } else { vec![b'x'; args.size] });
        let sse = args.sse;
        let interval = Duration::from_millis(args.sse_interval_ms);
        loop {
            let (stream_, _) = listener.accept().await?;
            stream_.set_nodelay(true)?;
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let (content_type, body) = match sse {
                        Some(events) => ("text/event-stream", stream(events, interval)),
                        None => ("text/plain", Full::new(body.clone()).boxed()),
                    };
                    let mut response = Response::new(body);
                    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream_), service)
                    .await;
            });
        }
    })
}
