//! The upstream for the data-plane benchmarks: an HTTP/1.1 keep-alive server on one thread that answers
//! every request with the same body of `--size` bytes. Prints `{"addr":"IP:PORT"}` once listening.

use std::convert::Infallible;

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(about = "Benchmark upstream: fixed-size answers over HTTP/1.1 keep-alive")]
struct Args {
    /// Address to listen on (port 0 = any).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 13)]
    size: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&args.listen).await?;
        println!("{{\"addr\":\"{}\"}}", listener.local_addr()?);
        let body =
            Bytes::from(if args.size == 13 { b"hello, world\n".to_vec() } else { vec![b'x'; args.size] });
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        let mut response = Response::new(Full::new(body));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("text/plain"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
