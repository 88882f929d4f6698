//! Response bodies that carry what must live as long as the response: the breaker permit, the stats guard,
//! the total and idle timers. Frames pass through one by one as they arrive (nothing is buffered), so an SSE
//! token reaches the client when the upstream sends it. Whatever rides along is dropped when the body ends,
//! fails, or is dropped because the client went away; that is what frees the concurrency slot.

use std::error::Error as StdError;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::{BoxError, ProxyError, RequestBodyTimedOut};
use crate::timeouts::{BodyTimer, TimeoutKind};

/// What rides along with a response body and is told how it ended. Dropping it is the end of the request.
pub trait BodyEnd: Send + 'static {
    /// A timeout cut the body.
    fn timed_out(&mut self, _kind: TimeoutKind) {}
    /// The upstream body failed.
    fn failed(&mut self, _error: &ProxyError) {}
}

impl BodyEnd for () {}

impl<A: BodyEnd, B: BodyEnd> BodyEnd for (A, B) {
    fn timed_out(&mut self, kind: TimeoutKind) {
        self.0.timed_out(kind);
        self.1.timed_out(kind);
    }
    fn failed(&mut self, error: &ProxyError) {
        self.0.failed(error);
        self.1.failed(error);
    }
}

impl BodyEnd for crate::breaker::Permit {}
impl BodyEnd for crate::stats::StatsGuard {}
impl<T: BodyEnd> BodyEnd for Option<T> {
    fn timed_out(&mut self, kind: TimeoutKind) {
        if let Some(t) = self {
            t.timed_out(kind);
        }
    }
    fn failed(&mut self, error: &ProxyError) {
        if let Some(t) = self {
            t.failed(error);
        }
    }
}

/// A streamed body with a timer and a payload that is dropped when the body is done.
#[derive(Debug)]
pub struct TrackedBody<B, T: BodyEnd> {
    inner: B,
    timer: Option<BodyTimer>,
    end: Option<T>,
}

impl<B, T: BodyEnd> TrackedBody<B, T> {
    /// Wraps `inner`; `timer` (if any) cuts it on the total or idle timeout; `end` is dropped at the end.
    pub fn new(inner: B, timer: Option<BodyTimer>, end: T) -> Self {
        Self { inner, timer, end: Some(end) }
    }
}

/// Error yielded when a timeout cuts a body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyTimeout(pub ProxyError);

impl<B, T> Body for TrackedBody<B, T>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: StdError + Send + Sync + 'static,
    T: BodyEnd + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.end.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(timer) = &mut this.timer {
                    timer.progress();
                }
                if frame.is_trailers() || this.inner.is_end_stream() {
                    // Nothing follows trailers; free the slot now rather than when hyper drops the body.
                    this.end = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.end = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                let error = ProxyError::from_hyper_chain(&err);
                if let Some(end) = &mut this.end {
                    end.failed(&error);
                }
                this.end = None;
                Poll::Ready(Some(Err(Box::new(err))))
            }
            Poll::Pending => {
                let Some(timer) = &mut this.timer else { return Poll::Pending };
                let kind = ready!(timer.poll_expired(cx));
                if let Some(end) = &mut this.end {
                    end.timed_out(kind);
                }
                this.end = None;
                Poll::Ready(Some(Err(Box::new(BodyTimeout(ProxyError::Timeout(kind))))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.end.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client's request body on its way upstream, failed with [`RequestBodyTimedOut`] when the client sends
/// nothing for `limit` while the body is still coming (nginx's `client_body_timeout`), so that a client trickling
/// a byte at a time cannot hold a concurrency slot for the whole request timeout. The timer is armed only when
/// the body has to wait: a body that came with its headers costs none.
///
/// Dropped before its end (the request was answered early: an error, or an upstream that answered before
/// reading it all), the rest of the body is read and discarded in the background for a while ([`LINGER`],
/// [`LINGER_BYTES`]), as nginx's lingering close does: a connection closed with unread bytes is reset, and the
/// reset can destroy the answer before the client has read it.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    limit: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
}

/// Longest time the rest of an unread request body is drained after its answer.
pub const LINGER: Duration = Duration::from_secs(5);
/// Most bytes of an unread request body drained after its answer.
pub const LINGER_BYTES: usize = 16 << 20;

impl RequestBody {
    /// Wraps `inner`; `None` never times out.
    pub fn new(inner: Incoming, limit: Option<Duration>) -> Self {
        Self { inner: Some(inner), limit, sleep: None }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take().filter(|body| !body.is_end_stream()) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let drain = async {
                let mut drained = 0;
                while drained <= LINGER_BYTES {
                    match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                        Some(Ok(frame)) => drained += frame.data_ref().map_or(0, Bytes::len),
                        Some(Err(_)) | None => return,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else { return Poll::Ready(None) };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                // Progress: the next wait starts a new period.
                if let (Some(sleep), Some(limit)) = (&mut this.sleep, this.limit) {
                    sleep.as_mut().reset(Instant::now() + limit);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some(limit) = this.limit else { return Poll::Pending };
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(sleep.as_mut().poll(cx));
                // A client this silent gets no lingering either.
                this.limit = None;
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(RequestBodyTimedOut(limit)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// The data plane's response body: a local answer (probe, error) or a tracked upstream stream.
#[derive(Debug)]
pub enum ProxyBody<T: BodyEnd = ()> {
    /// A complete body made here; `None` once sent (or when empty).
    Full(Option<Bytes>),
    /// The upstream's body, streamed.
    Upstream(TrackedBody<Incoming, T>),
}

impl<T: BodyEnd> From<Bytes> for ProxyBody<T> {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl<T: BodyEnd> ProxyBody<T> {
    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl<T: BodyEnd + Unpin> Body for ProxyBody<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, StreamBody};

    struct Ends(Arc<AtomicUsize>);
    impl BodyEnd for Ends {}
    impl Drop for Ends {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn payload_is_dropped_at_the_end_of_the_stream_not_before() {
        let ended = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let stream = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let mut body = TrackedBody::new(Box::pin(stream), None, Ends(ended.clone()));
        tx.send(Ok(Frame::data(Bytes::from_static(b"token")))).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "token");
        assert_eq!(ended.load(Ordering::SeqCst), 0, "still streaming");
        drop(tx);
        assert!(body.frame().await.is_none());
        assert_eq!(ended.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn dropping_the_body_ends_it() {
        let ended = Arc::new(AtomicUsize::new(0));
        let body = TrackedBody::new(http_body_util::Empty::<Bytes>::new(), None, Ends(ended.clone()));
        drop(body);
        assert_eq!(ended.load(Ordering::SeqCst), 1);
    }
}
