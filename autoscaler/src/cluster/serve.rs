//! Port 9090: `/metrics` (the engine's `ebb_autoscaler_*` families and the controller's), `/healthz`
//! (the process answers) and `/readyz` (the API server answered a request, a watch event or a Lease renewal
//! recently and has not failed since).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use ebb_process::exposition;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::state::Context;
use crate::engine::{Autoscaler, debug};

/// Serves until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    context: Arc<Context>,
    autoscaler: Arc<Autoscaler>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let context = context.clone();
        let autoscaler = autoscaler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let response = match req.uri().path() {
                    "/metrics" => {
                        let page = context.metrics.page(&autoscaler.encode_metrics());
                        let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
                        let (content_type, page) = exposition::negotiate(accept, page);
                        let mut r = Response::new(Full::new(Bytes::from(page)));
                        r.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
                        r
                    }
                    "/healthz" => text(StatusCode::OK, "ok"),
                    "/readyz" if context.health.reachable() => text(StatusCode::OK, "ok"),
                    "/readyz" => {
                        text(StatusCode::SERVICE_UNAVAILABLE, "the API server has not answered recently")
                    }
                    "/status" => {
                        let body = serde_json::to_string(&autoscaler.status()).unwrap_or_default();
                        text(StatusCode::OK, &body)
                    }
                    "/debug/decisions" => {
                        let (status, body) = debug::decisions(&autoscaler, req.uri().query(), "default");
                        let mut r = text(status, &body.to_string());
                        r.headers_mut()
                            .insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                        r
                    }
                    _ => text(StatusCode::NOT_FOUND, "not found"),
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r
}
