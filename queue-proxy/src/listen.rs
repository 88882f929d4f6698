//! Accepting connections and serving them with hyper: HTTP/1.1 (keep-alive, upgrades) and HTTP/2 cleartext on
//! one port, `TCP_NODELAY` on every accepted socket, and a graceful shutdown that stops accepting, lets open
//! exchanges finish and closes idle connections. Shared by the queue-proxy and the activator.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::body::BoxError;

/// Serves listeners until [`Shutdown::close`]; clone it for each listener.
#[derive(Clone)]
pub struct Acceptor {
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: watch::Receiver<bool>,
    /// Held by every connection task; the receiver sees the channel close when all are gone.
    conns: mpsc::Sender<Infallible>,
}

/// Ends what an [`Acceptor`] serves.
pub struct Shutdown {
    stop: watch::Sender<bool>,
    conns: mpsc::Receiver<Infallible>,
}

impl Shutdown {
    /// Stops accepting, finishes open exchanges (idle keep-alive connections close, HTTP/2 gets GOAWAY) and waits
    /// up to `grace` for the connections to close.
    pub async fn close(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, self.conns.recv()).await;
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

impl Acceptor {
    /// An acceptor and the handle that shuts it down.
    pub fn new() -> (Self, Shutdown) {
        let (stop, shutdown) = watch::channel(false);
        let (conns_tx, conns) = mpsc::channel::<Infallible>(1);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(60));
        builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1000);
        let acceptor = Self { builder: Arc::new(builder), shutdown, conns: conns_tx };
        (acceptor, Shutdown { stop, conns })
    }

    /// Accepts connections on `listener` and serves each with `handler` until shut down.
    pub async fn accept<H, F, B>(mut self, listener: TcpListener, handler: H)
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        loop {
            let accepted = tokio::select! {
                biased;
                () = stopped(&mut self.shutdown) => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    let ctx = self.clone();
                    let handler = handler.clone();
                    tokio::spawn(async move { ctx.serve(stream, handler).await });
                }
                Err(err) => {
                    // Out of file descriptors or similar: back off briefly instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn serve<H, F, B>(mut self, stream: TcpStream, handler: H)
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let _ = stream.set_nodelay(true);
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(stream), service_fn(handler));
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!("connection ended: {err}");
                }
            }
            () = stopped(&mut self.shutdown) => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        drop(self.conns);
    }
}
