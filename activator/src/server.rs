//! Process wiring: the data port (requests, `Ebb-Probe: activator`), the metrics port (`/metrics`, `/healthz`,
//! `/readyz`), the once-a-second stat reporter, and the drain: on stop, readiness fails at once, requests keep
//! being served (queued ones included) until nothing has been in flight for the quiet period, or the deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ebb_http::admin::{self, Reply};
use ebb_http::drain::DrainOutcome;
use ebb_http::listen::Acceptor;
use ebb_process::exposition;
use http::header::ACCEPT;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::handler::Activator;

/// How long the drain waits.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// Quiet time with nothing in flight before exiting.
    pub quiet_period: Duration,
    /// The drain ends here whatever is in flight; keep it above the activation timeout so that requests
    /// queued for a slow cold start are not cut.
    pub deadline: Duration,
}

/// A bound activator, ready to run.
pub struct Server {
    activator: Arc<Activator>,
    data: TcpListener,
    metrics: TcpListener,
    drain: DrainOptions,
}

impl Server {
    /// Binds the data and metrics addresses (port 0 picks a free port; see [`Self::addresses`]).
    pub async fn bind(
        activator: Arc<Activator>,
        data: SocketAddr,
        metrics: SocketAddr,
        drain: DrainOptions,
    ) -> std::io::Result<Self> {
        let data = TcpListener::bind(data).await?;
        let metrics = TcpListener::bind(metrics).await?;
        Ok(Self { activator, data, metrics, drain })
    }

    /// The bound data and metrics addresses.
    pub fn addresses(&self) -> (SocketAddr, SocketAddr) {
        let addr = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        (addr(&self.data), addr(&self.metrics))
    }

    /// Serves until `stop` resolves, then drains and returns.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let (data_addr, metrics_addr) = self.addresses();
        let Self { activator, data, metrics, drain } = self;
        tracing::info!(data = %data_addr, metrics = %metrics_addr, "activator listening");
        let reporter = {
            let activator = activator.clone();
            tokio::spawn(async move { activator.report_stats().await })
        };
        let (acceptor, shutdown) = Acceptor::new();
        let a = activator.clone();
        tokio::spawn(acceptor.clone().accept_fast(data, move |req| a.clone().handle(req), activator.clone()));
        let a = activator.clone();
        let admin_server =
            tokio::spawn(admin::serve(metrics, move |req| std::future::ready(admin_answer(&a, &req))));

        tokio::select! {
            () = stop => activator.drainer.start(),
            () = activator.drainer.started() => {}
        }
        tracing::info!(
            in_flight = activator.in_flight(),
            "draining: readiness fails, requests are still served"
        );
        let outcome = activator
            .drainer
            .wait_quiet(|| activator.in_flight(), drain.quiet_period, Instant::now() + drain.deadline)
            .await;
        match outcome {
            DrainOutcome::Quiet => tracing::info!("drained; shutting down"),
            DrainOutcome::Deadline => {
                tracing::warn!(in_flight = activator.in_flight(), "drain deadline reached")
            }
        }
        activator.drainer.mark_drained();
        reporter.abort();
        admin_server.abort();
        shutdown.close(Duration::from_secs(2)).await;
    }
}

/// The metrics port: `/metrics`, `/healthz` (liveness: the process answers, whatever the autoscaler does),
/// `/readyz` (fails while draining).
fn admin_answer(activator: &Activator, req: &Request<Incoming>) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let (content_type, page) = exposition::negotiate(accept, activator.encode_metrics());
            admin::reply(StatusCode::OK, content_type, page)
        }
        (&Method::GET, "/healthz") => admin::text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") if activator.is_ready() => admin::text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => admin::text(StatusCode::SERVICE_UNAVAILABLE, "draining"),
        _ => admin::text(StatusCode::NOT_FOUND, "not found; try /metrics, /healthz or /readyz"),
    }
}
