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
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::body::BoxError;

/// Serves listeners until [`Shutdown::close`]; clone it for each listener.
#[derive(Clone)]
pub struct Acceptor {
    builders: Arc<(http1::Builder, http2::Builder<TokioExecutor>)>,
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
        let mut h1 = http1::Builder::new();
        h1.keep_alive(true).timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new()).max_concurrent_streams(1000);
        let acceptor = Self { builders: Arc::new((h1, h2)), shutdown, conns: conns_tx };
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
        let sniffed = tokio::select! {
            sniffed = tokio::time::timeout(HEADER_READ_TIMEOUT, is_h2(&stream)) => sniffed,
            () = stopped(&mut self.shutdown) => return,
        };
        let (h1, h2) = &*self.builders;
        let io = TokioIo::new(stream);
        match sniffed {
            Ok(Ok(false)) => {
                let conn = h1.serve_connection(io, service_fn(handler)).with_upgrades();
                drive(conn, &mut self.shutdown, http1::UpgradeableConnection::graceful_shutdown).await;
            }
            Ok(Ok(true)) => {
                let conn = h2.serve_connection(io, service_fn(handler));
                drive(conn, &mut self.shutdown, http2::Connection::graceful_shutdown).await;
            }
            Ok(Err(err)) => tracing::debug!("connection ended before its first byte: {err}"),
            Err(_) => tracing::debug!("no request within {HEADER_READ_TIMEOUT:?}; closing the connection"),
        }
        drop(self.conns);
    }
}

/// How long a connection may take to send a request's head (hyper's `header_read_timeout`, and the wait for
/// the first bytes that tell HTTP/1 from HTTP/2).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// HTTP/2's connection preface (RFC 9113, section 3.4): a prior-knowledge h2c client starts with it.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client speaks HTTP/2 with prior knowledge, told by peeking at its first bytes without reading
/// them, so that hyper reads a whole HTTP/1 request head into its 8 KiB buffer at once. (hyper-util's auto
/// builder reads those bytes and hands them back through a rewind buffer: hyper's first read then holds only
/// them, and its next one doubles the buffer to 16 KiB, for every connection.) A client that closes at once
/// is handed to HTTP/1, which sees the end.
async fn is_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 || first[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Only a part of the preface so far; peeking again at once would see the same bytes.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Serves `conn` to its end, or until shutdown, then gracefully (open exchanges finish).
async fn drive<C>(conn: C, shutdown: &mut watch::Receiver<bool>, graceful_shutdown: fn(std::pin::Pin<&mut C>))
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!("connection ended: {err}");
            }
        }
        () = stopped(shutdown) => {
            graceful_shutdown(conn.as_mut());
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// What `is_h2` says of a client that sends `chunks`, a millisecond apart.
    async fn sniff(chunks: &[&[u8]]) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let h2 = is_h2(&server).await.unwrap();
        // Nothing was consumed: the server still reads the client's first byte.
        let mut byte = [0u8; 1];
        assert_eq!(server.peek(&mut byte).await.unwrap(), 1);
        assert_eq!(byte[0], chunks[0][0]);
        h2
    }

    #[tokio::test]
    async fn the_preface_means_http2_and_anything_else_http1() {
        assert!(sniff(&[H2_PREFACE]).await);
        assert!(sniff(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"]).await, "a preface in pieces");
        assert!(!sniff(&[b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"]).await);
        assert!(!sniff(&[b"P", b"OST /v1/chat HTTP/1.1\r\n"]).await, "decided as soon as it differs");
        assert!(!sniff(&[b"PRI / HTTP/1.1\r\n\r\n"]).await);
    }
}
