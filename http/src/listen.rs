//! Accepting connections and serving them: HTTP/1.1 (keep-alive, upgrades) and HTTP/2 cleartext on one port,
//! `TCP_NODELAY` on every accepted socket, and a graceful shutdown that stops accepting, lets open exchanges
//! finish and closes idle connections. HTTP/1 connections start on the fast path ([`crate::h1`]) when the
//! component gives one, and move to hyper for good at the first request it does not carry. Shared by the
//! queue-proxy and the activator.

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nix::sys::socket::{MsgFlags, recv};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::error::BoxError;
use crate::h1::conn::{Policy, Served};

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

    /// Accepts connections on `listener` and serves each with `handler` (hyper) until shut down.
    pub async fn accept<H, F, B>(self, listener: TcpListener, handler: H)
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.accept_with(listener, handler, None::<Arc<NoFastPath>>).await
    }

    /// Accepts connections on `listener` and serves each on the HTTP/1 fast path with `policy`, and with
    /// `handler` (hyper) for h2c and whatever the fast path leaves to it, until shut down.
    pub async fn accept_fast<H, F, B, P>(self, listener: TcpListener, handler: H, policy: Arc<P>)
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        P: Policy,
    {
        self.accept_with(listener, handler, Some(policy)).await
    }

    async fn accept_with<H, F, B, P>(mut self, listener: TcpListener, handler: H, policy: Option<Arc<P>>)
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        P: Policy,
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
                    let policy = policy.clone();
                    tokio::spawn(async move { ctx.serve(stream, handler, policy).await });
                }
                Err(err) => {
                    // Out of file descriptors or similar: back off briefly instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn serve<H, F, B, P>(mut self, stream: TcpStream, handler: H, policy: Option<Arc<P>>)
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        P: Policy,
    {
        let _ = stream.set_nodelay(true);
        let sniffed = tokio::select! {
            sniffed = tokio::time::timeout(FIRST_BYTES_TIMEOUT, sniff(&stream)) => sniffed,
            () = stopped(&mut self.shutdown) => return,
        };
        let (h1, h2) = &*self.builders;
        match sniffed {
            Ok(Ok(Sniffed::Http1)) => {
                let io = match policy {
                    Some(policy) => {
                        match crate::h1::conn::serve(stream, &*policy, &mut self.shutdown).await {
                            Served::Closed => {
                                drop(self.conns);
                                return;
                            }
                            Served::Hyper(io) => io,
                        }
                    }
                    None => crate::h1::io::Prefixed::new(bytes::BytesMut::new(), stream),
                };
                let conn = h1.serve_connection(TokioIo::new(io), service_fn(handler)).with_upgrades();
                drive(conn, &mut self.shutdown, http1::UpgradeableConnection::graceful_shutdown).await;
            }
            Ok(Ok(Sniffed::Http2)) => {
                let conn = h2.serve_connection(TokioIo::new(stream), service_fn(handler));
                drive(conn, &mut self.shutdown, http2::Connection::graceful_shutdown).await;
            }
            Ok(Ok(Sniffed::Closed)) => tracing::debug!("connection closed before a request"),
            Ok(Err(err)) => tracing::debug!("connection failed before its first request: {err}"),
            Err(_) => tracing::debug!("nothing sent within {FIRST_BYTES_TIMEOUT:?}; closing the connection"),
        }
        drop(self.conns);
    }
}

/// How long a connection may take to send a request's head (hyper's `header_read_timeout`), the fast path's too.
const HEADER_READ_TIMEOUT: Duration = crate::h1::conn::HEADER_READ_TIMEOUT;

/// The policy of an acceptor without a fast path (never called).
struct NoFastPath;

impl Policy for NoFastPath {
    type Hold = ();

    fn admit<'s>(
        &'s self,
        _req: &crate::h1::conn::Request<'_>,
    ) -> impl Future<Output = crate::h1::conn::Admit<()>> + Send + use<'s> {
        std::future::ready(crate::h1::conn::Admit::Hyper)
    }

    fn responded(
        &self,
        _hold: &mut (),
        _status: http::StatusCode,
    ) -> Option<(&'static str, http::HeaderValue)> {
        None
    }

    fn failed(&self, _hold: (), err: &crate::error::ProxyError) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = crate::error::Classified::status(err);
        response
    }

    fn pool(&self) -> &Arc<crate::h1::pool::Pool> {
        unreachable!("an acceptor without a fast path never forwards on it")
    }
}

/// How long a new connection may stay silent before it is closed: a client that connects sends its request at
/// once, and one that does not only holds a file descriptor.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2's connection preface (RFC 9113, section 3.4): a prior-knowledge h2c client starts with it.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    /// Anything but the HTTP/2 preface: HTTP/1 (hyper answers what is not HTTP at all with 400).
    Http1,
    /// The whole HTTP/2 preface.
    Http2,
    /// The client closed before saying which (nothing, or only a part of the preface, then its FIN).
    Closed,
}

/// Tells HTTP/1 from prior-knowledge HTTP/2 by peeking at the first bytes without reading them, so that hyper
/// reads a whole HTTP/1 request head into its 8 KiB buffer at once. (hyper-util's auto builder reads those
/// bytes and hands them back through a rewind buffer: hyper's first read then holds only them, and its next
/// one doubles the buffer to 16 KiB, for every connection.)
///
/// No polling: when only a part of the preface has arrived, the socket's readiness is cleared inside the same
/// `try_io` that peeked, so the next wait ends only when more bytes or the client's FIN arrive. A FIN after a
/// partial preface means there is nothing to serve.
async fn sniff(stream: &TcpStream) -> std::io::Result<Sniffed> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let peeked = stream.try_io(Interest::READABLE, || {
            let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
            let n = recv(stream.as_raw_fd(), &mut first, flags).map_err(std::io::Error::from)?;
            let partial = n > 0 && n < H2_PREFACE.len() && first[..n] == H2_PREFACE[..n];
            if partial && !ready.is_read_closed() {
                // Clears the readiness this wait saw: the next `ready()` waits for news.
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match peeked {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        };
        return Ok(match n {
            0 => Sniffed::Closed,
            n if first[..n] != H2_PREFACE[..n] => Sniffed::Http1,
            n if n == H2_PREFACE.len() => Sniffed::Http2,
            _ => Sniffed::Closed,
        });
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

    /// What `sniff` says of a client that sends `chunks`, a millisecond apart, then `close`s or not.
    async fn sniffed(chunks: &[&[u8]], close: bool) -> Sniffed {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if close {
            drop(client);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(client);
            });
        }
        let sniffed = tokio::time::timeout(Duration::from_secs(5), sniff(&server)).await.expect("decided");
        let sniffed = sniffed.unwrap();
        if let (Some(chunk), false) = (chunks.first(), sniffed == Sniffed::Closed) {
            // Nothing was consumed: the server still reads the client's first byte.
            let mut byte = [0u8; 1];
            assert_eq!(server.peek(&mut byte).await.unwrap(), 1);
            assert_eq!(byte[0], chunk[0]);
        }
        sniffed
    }

    #[tokio::test]
    async fn the_preface_means_http2_and_anything_else_http1() {
        assert_eq!(sniffed(&[H2_PREFACE], false).await, Sniffed::Http2);
        assert_eq!(
            sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"], false).await,
            Sniffed::Http2,
            "in pieces"
        );
        assert_eq!(sniffed(&[b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"], false).await, Sniffed::Http1);
        assert_eq!(
            sniffed(&[b"P", b"OST /v1/chat HTTP/1.1\r\n"], false).await,
            Sniffed::Http1,
            "as soon as it differs"
        );
        assert_eq!(sniffed(&[b"PRI / HTTP/1.1\r\n\r\n"], false).await, Sniffed::Http1);
        assert_eq!(sniffed(&[b"GET / HTTP/1.1\r\n\r\n"], true).await, Sniffed::Http1, "a request, then FIN");
    }

    #[tokio::test]
    async fn a_client_that_closes_after_a_part_of_the_preface_is_seen_closed_at_once() {
        // Before, the sniff peeked the same byte every millisecond until its deadline and never saw the FIN.
        assert_eq!(sniffed(&[b"P"], true).await, Sniffed::Closed);
        assert_eq!(sniffed(&[b"PRI * HTTP/2.0"], true).await, Sniffed::Closed);
        assert_eq!(sniffed(&[], true).await, Sniffed::Closed);
    }

    #[tokio::test]
    async fn a_partial_preface_parks_the_sniff_until_more_bytes_arrive() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Poll, Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"PR").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut sniffing = std::pin::pin!(sniff(&server));
        assert!(sniffing.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        // A sniff that polled (peek, sleep, peek) would be woken by its own timer; this one waits for news.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "woken with nothing new on the socket");
        client.write_all(&H2_PREFACE[2..]).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while wakes.0.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "not woken by the rest of the preface");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let outcome = sniffing.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(matches!(outcome, Poll::Ready(Ok(Sniffed::Http2))), "{outcome:?}");
    }
}
