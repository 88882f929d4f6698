//! The webhook's HTTPS listener: `POST /inject` takes an AdmissionReview and answers it; `/healthz` answers
//! `ok`. Every replica serves it (the Service in front of it selects them all), leader or not.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::admission::Admission;
use super::review::{Verdict, parse, response};
use crate::cluster::metrics::WebhookMetrics;

/// The path the webhook configuration names.
pub const INJECT_PATH: &str = "/inject";
/// The largest AdmissionReview read (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 6 << 20;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent a request's head by then is dropped (the API server sends a review at once).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/2 connection whose peer stops answering pings for this long is closed.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Serves until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    admission: Arc<Admission>,
    metrics: WebhookMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors or similar: back off briefly instead of spinning.
                    tracing::warn!("webhook accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let admission = admission.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, "webhook TLS handshake failed: {err}");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let admission = admission.clone();
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(handle(&admission, &metrics, request).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle(
    admission: &Admission,
    metrics: &WebhookMetrics,
    request: http::Request<Incoming>,
) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok".into()),
        (&Method::POST, INJECT_PATH) => {
            let started = Instant::now();
            let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(err) => {
                    metrics.answered("bad_request", started.elapsed());
                    return text(StatusCode::BAD_REQUEST, format!("cannot read the body: {err}"));
                }
            };
            let review = match parse(&body) {
                Ok(review) => review,
                Err(err) => {
                    metrics.answered("bad_request", started.elapsed());
                    return text(StatusCode::BAD_REQUEST, err);
                }
            };
            let verdict = admission.decide(&review).await;
            let result = match &verdict {
                Verdict::Patch { .. } => "injected",
                Verdict::Allow { .. } => "unchanged",
                Verdict::Deny { .. } => "denied",
            };
            metrics.answered(result, started.elapsed());
            match &verdict {
                Verdict::Deny { message } => {
                    tracing::info!(namespace = %review.namespace, "pod refused: {message}")
                }
                other => {
                    tracing::debug!(uid = %review.uid, namespace = %review.namespace, "admission: {other:?}")
                }
            }
            let mut answer =
                Response::new(Full::new(Bytes::from(response(&review.uid, &verdict).to_string())));
            answer.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            answer
        }
        _ => text(StatusCode::NOT_FOUND, "not found".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
