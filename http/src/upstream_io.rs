//! The upstream side of HTTP/1 forwarding: connections that keep reading after the upstream stopped reading.
//!
//! An upstream may answer before it has read the whole request body (a model refusing a prompt that is too long
//! with a 400) and close. Writing the rest of the body then fails (EPIPE, or a reset), and hyper's client would
//! end the exchange with that error, even when the answer is already waiting to be read: the client got a 502 in
//! place of the upstream's 400. [`KeepReading`] takes such a write failure as the end of the upstream's
//! interest in the body: later writes are discarded and reading goes on, so the early answer is relayed, or, if
//! none comes, reading fails on its own and the exchange ends as a reset.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// [`HttpConnector`], with each connection wrapped in [`KeepReading`]. A tower `Service`, as hyper-util's
/// client takes its connectors.
#[derive(Debug, Clone)]
pub struct Connector(pub HttpConnector);

impl tower::Service<Uri> for Connector {
    type Response = KeepReading<TokioIo<TcpStream>>;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map(KeepReading::new) })
    }
}

/// A connection whose writes, once one failed because the peer stopped reading, are discarded instead of
/// failing, while its reads go on.
#[derive(Debug)]
pub struct KeepReading<T> {
    inner: T,
    peer_stopped_reading: bool,
}

impl<T> KeepReading<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self { inner, peer_stopped_reading: false }
    }

    /// Turns a write failure that means "the peer reads no more" into success, from now on.
    fn absorb<R>(&mut self, result: io::Result<R>, written: R) -> io::Result<R> {
        match result {
            Err(err) if matches!(err.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => {
                self.peer_stopped_reading = true;
                Ok(written)
            }
            other => other,
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for KeepReading<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for KeepReading<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.peer_stopped_reading {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = ready!(Pin::new(&mut this.inner).poll_write(cx, buf));
        Poll::Ready(this.absorb(result, buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let all = bufs.iter().map(|b| b.len()).sum();
        if this.peer_stopped_reading {
            return Poll::Ready(Ok(all));
        }
        let result = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs));
        Poll::Ready(this.absorb(result, all))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.peer_stopped_reading {
            return Poll::Ready(Ok(()));
        }
        let result = ready!(Pin::new(&mut this.inner).poll_flush(cx));
        Poll::Ready(this.absorb(result, ()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.peer_stopped_reading {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for KeepReading<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}
