//! Process wiring: binds the four ports, starts the start-up prober,
//! serves connections (HTTP/1.1 and HTTP/2 cleartext on each, `TCP_NODELAY` on every accepted socket) and
//! runs the drain when told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ebb_http::breaker::Breaker;
use ebb_http::drain::{DrainOutcome, Drainer};
use ebb_http::listen::Acceptor;
use ebb_http::proxy::Forwarder;
use ebb_http::stats::RequestStats;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::config::Config;
use crate::handler::DataPlane;
use crate::metrics::Metrics;
use crate::probe::{Readiness, wait_until_ready};

/// Why the queue-proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A port could not be bound.
    #[error("cannot listen on {addr} ({what} port): {source}")]
    Bind {
        /// Which port.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The ready file could not be written.
    #[error("cannot write the ready file {0}: {1}")]
    ReadyFile(PathBuf, std::io::Error),
}

/// The bound addresses, printed as one JSON line at start-up so that tests and `ebb up` can find ports
/// picked by the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// Data port.
    pub data: SocketAddr,
    /// Admin port.
    pub admin: SocketAddr,
    /// Stats port.
    pub stats: SocketAddr,
    /// Prometheus port.
    pub metrics: SocketAddr,
}

impl Addresses {
    /// `{"data":"ip:port","admin":...,"stats":...,"metrics":...}`
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "data": self.data.to_string(),
            "admin": self.admin.to_string(),
            "stats": self.stats.to_string(),
            "metrics": self.metrics.to_string(),
        })
        .to_string()
    }
}

/// A bound, not yet running queue-proxy.
#[derive(Debug)]
pub struct QueueProxy {
    config: Config,
    listeners: [TcpListener; 4],
    addresses: Addresses,
    data: Arc<DataPlane>,
    started: Instant,
}

impl QueueProxy {
    /// Binds every port.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        let ports = config.ports;
        let mut listeners = Vec::with_capacity(4);
        let mut addresses = Vec::with_capacity(4);
        for (what, port) in
            [("data", ports.data), ("admin", ports.admin), ("stats", ports.stats), ("metrics", ports.metrics)]
        {
            let addr = SocketAddr::new(config.bind_address, port);
            let listener =
                TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { what, addr, source })?;
            let local = listener.local_addr().map_err(|source| ServeError::Bind { what, addr, source })?;
            listeners.push(listener);
            addresses.push(local);
        }
        let addresses =
            Addresses { data: addresses[0], admin: addresses[1], stats: addresses[2], metrics: addresses[3] };
        let Ok(listeners) = <[TcpListener; 4]>::try_from(listeners) else { unreachable!("four ports bound") };
        let started = Instant::now();
        let breaker = (config.container_concurrency > 0)
            .then(|| Breaker::new(config.container_concurrency, config.queue_depth));
        let data = Arc::new(DataPlane {
            forwarder: Forwarder::new(&config.forwarder),
            upstream: config.upstream.clone(),
            protocol: config.protocol,
            breaker,
            stats: RequestStats::new(started.into_std()),
            metrics: Arc::new(Metrics::new()),
            timeouts: config.timeouts,
            readiness: Arc::new(Readiness::default()),
            probe: config.probe.clone(),
            drainer: Arc::new(Drainer::new()),
            service: config.service.clone(),
            retry_after: config.retry_after,
        });
        Ok(Self { config, listeners, addresses, data, started })
    }

    /// The bound addresses.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// The drain state: `start()` on it drains the proxy as SIGTERM would.
    pub fn drainer(&self) -> Arc<Drainer> {
        self.data.drainer.clone()
    }

    /// The data plane (breaker, stats, metrics) for inspection.
    pub fn data_plane(&self) -> Arc<DataPlane> {
        self.data.clone()
    }

    /// Serves until `stop` resolves (or a drain is started otherwise), then drains and returns.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Self { config, listeners, addresses, data, started } = self;
        tracing::info!(
            data = %addresses.data, admin = %addresses.admin, stats = %addresses.stats, metrics = %addresses.metrics,
            upstream = %config.upstream, container_concurrency = config.container_concurrency,
            queue_depth = config.queue_depth, "queue-proxy listening"
        );
        let prober = {
            let (probe, readiness) = (config.probe.clone(), data.readiness.clone());
            tokio::spawn(async move { wait_until_ready(&probe, &readiness).await })
        };

        let (ctx, shutdown) = Acceptor::new();
        let admin = Arc::new(Admin::new(
            data.clone(),
            config.probe.clone(),
            config.pod_name.clone(),
            started.into_std(),
        ));
        let [data_listener, admin_listener, stats_listener, metrics_listener] = listeners;

        let d = data.clone();
        tokio::spawn(ctx.clone().accept_fast(data_listener, move |req| d.clone().handle(req), data.clone()));
        let a = admin.clone();
        tokio::spawn(ctx.clone().accept(admin_listener, move |req| a.clone().admin(req)));
        let a = admin.clone();
        tokio::spawn(ctx.clone().accept(stats_listener, move |req| a.clone().stats(req)));
        let a = admin;
        tokio::spawn(ctx.accept(metrics_listener, move |req| a.clone().metrics(req)));

        tokio::select! {
            () = stop => data.drainer.start(),
            () = data.drainer.started() => {}
        }
        let drain_start = Instant::now();
        tracing::info!(
            in_flight = data.stats.concurrency(),
            quiet_period_ms = config.drain_quiet_period.as_millis() as u64,
            "draining: readiness fails, requests are still served"
        );
        let stats = data.stats.clone();
        let outcome = data
            .drainer
            .wait_quiet(
                || stats.concurrency(),
                config.drain_quiet_period,
                ebb_http::timeouts::deadline_after(drain_start, config.drain_deadline),
            )
            .await;
        match outcome {
            DrainOutcome::Quiet => tracing::info!("drained; shutting down"),
            DrainOutcome::Deadline => {
                tracing::warn!(in_flight = data.stats.concurrency(), "drain deadline reached; shutting down")
            }
        }
        data.drainer.mark_drained();
        prober.abort();
        // Stop accepting, finish open exchanges (idle keep-alive connections close, HTTP/2 gets GOAWAY), and
        // give connections a moment to close.
        shutdown.close(Duration::from_secs(2)).await;
        Ok(())
    }
}
