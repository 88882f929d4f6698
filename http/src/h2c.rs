//! HTTP/2 cleartext upstream connections: one multiplexed connection per upstream, opened on demand and
//! replaced once it closes. Unlike a pool keyed by the request's URI, the connection is chosen by the
//! upstream address while the request keeps the client's `:authority`, so the user container sees the host
//! name the client asked for (HTTP/2 has no separate Host header to carry it; RFC 9113 section 8.3.1).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebb_process::sync::Locked;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::error::BoxError;
use crate::error::{Cause, ProxyError};

/// Beyond this many upstreams, connections that have closed are forgotten (pods come and go behind an
/// activator; a closed connection is worth nothing).
const PRUNE_ABOVE: usize = 64;

/// The h2c connections, one per upstream. Cloning is cheap and shares them.
#[derive(Debug)]
pub struct H2cConnections<B> {
    senders: Arc<Mutex<HashMap<Authority, SendRequest<B>>>>,
    connect_timeout: Duration,
}

impl<B> Clone for H2cConnections<B> {
    fn clone(&self) -> Self {
        Self { senders: self.senders.clone(), connect_timeout: self.connect_timeout }
    }
}

impl<B> H2cConnections<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// No connection yet; each is opened within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self { senders: Arc::new(Mutex::new(HashMap::new())), connect_timeout }
    }

    /// Sends `req` (whose URI names the client's authority) over the connection to `upstream`.
    pub async fn send(
        &self,
        upstream: &Authority,
        req: Request<B>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = match self.cached(upstream) {
            Some(sender) => sender,
            None => self.connect(upstream).await?,
        };
        match sender.try_send_request(req).await {
            Ok(response) => Ok(response),
            Err(mut err) => match err.take_message() {
                // The cached connection closed before the request went out: nothing was sent, so one more
                // try on a fresh connection is safe.
                Some(req) => {
                    let mut sender = self.connect(upstream).await?;
                    sender.send_request(req).await.map_err(|err| ProxyError::from_hyper_chain(&err))
                }
                None => Err(ProxyError::from_hyper_chain(&err.into_error())),
            },
        }
    }

    fn cached(&self, upstream: &Authority) -> Option<SendRequest<B>> {
        let mut senders = self.senders.locked();
        match senders.get(upstream) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                senders.remove(upstream);
                None
            }
            None => None,
        }
    }

    async fn connect(&self, upstream: &Authority) -> Result<SendRequest<B>, ProxyError> {
        let connect = TcpStream::connect(upstream.as_str());
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(ProxyError::UpstreamRefused);
            }
            Ok(Err(err)) => return Err(ProxyError::UpstreamConnect(Cause::new(err))),
            Err(_elapsed) => {
                let message = format!("connect timed out after {:?}", self.connect_timeout);
                return Err(ProxyError::UpstreamConnect(Cause::message(message)));
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on the upstream socket: {err}");
        }
        let (sender, connection) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| ProxyError::from_hyper_chain(&err))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("h2c upstream connection ended: {err}");
            }
        });
        let mut senders = self.senders.locked();
        if senders.len() >= PRUNE_ABOVE {
            senders.retain(|_, sender| !sender.is_closed());
        }
        // Two requests that found no connection at once each open one; the later replaces the earlier in
        // the map, and the earlier closes when its requests are done.
        senders.insert(upstream.clone(), sender.clone());
        Ok(sender)
    }
}
