//! Port 9090: `/metrics` (the engine's `ebb_autoscaler_*` families and the controller's), `/healthz`
//! (the process answers) and `/readyz` (the API server answered a request, a watch event or a Lease renewal
//! recently and has not failed since).

use std::sync::Arc;

use ebb_http::admin::{self, Reply};
use ebb_process::exposition;
use http::header::ACCEPT;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::state::Context;
use crate::engine::{Autoscaler, debug};

/// Serves until `stop` turns true, through ebb-http's acceptor: a silent or slow client is dropped and an
/// accept error backs off, as on every other port.
pub(crate) async fn serve(
    listener: TcpListener,
    context: Arc<Context>,
    autoscaler: Arc<Autoscaler>,
    mut stop: watch::Receiver<bool>,
) {
    let handler = move |req: Request<Incoming>| {
        let response = answer(&context, &autoscaler, &req);
        async move { response }
    };
    tokio::select! {
        () = admin::serve(listener, handler) => {}
        _ = stop.wait_for(|stop| *stop) => {}
    }
}

fn answer(context: &Context, autoscaler: &Autoscaler, req: &Request<Incoming>) -> Reply {
    match req.uri().path() {
        "/metrics" => {
            let page = context.metrics.page(|out| autoscaler.encode_metrics_into(out));
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let (content_type, page) = exposition::negotiate(accept, page);
            admin::reply(StatusCode::OK, content_type, page)
        }
        "/healthz" => admin::text(StatusCode::OK, "ok"),
        "/readyz" if context.health.reachable() => admin::text(StatusCode::OK, "ok"),
        "/readyz" => admin::text(StatusCode::SERVICE_UNAVAILABLE, "the API server has not answered recently"),
        "/status" => match serde_json::to_value(autoscaler.status()) {
            Ok(status) => admin::json(StatusCode::OK, &status),
            Err(_) => admin::text(StatusCode::INTERNAL_SERVER_ERROR, "the status could not be written"),
        },
        "/debug/decisions" => {
            let (status, body) = debug::decisions(autoscaler, req.uri().query(), "default");
            admin::json(status, &body)
        }
        _ => admin::text(StatusCode::NOT_FOUND, "not found"),
    }
}
