//! A request body that can be taken back when the upstream connection failed before any of it was sent, so the
//! request can be retried on another pod (design.md: retry only when the connection failed or was reset
//! before any byte of the request was sent; never after the response started).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Holds the client's body until the first attempt to send it polls it.
#[derive(Debug, Clone)]
pub struct RetrySlot(Arc<Mutex<Option<Incoming>>>);

impl RetrySlot {
    /// Keeps `body` for the attempts to come.
    pub fn new(body: Incoming) -> Self {
        Self(Arc::new(Mutex::new(Some(body))))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Incoming>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether no attempt has read the body yet, so another attempt may still send all of it.
    pub fn unused(&self) -> bool {
        self.lock().is_some()
    }

    /// A body for one attempt: it takes the client's body from the slot when first polled.
    pub fn body(&self) -> RetryBody {
        RetryBody { slot: self.clone(), taken: None }
    }
}

/// One attempt's view of the client's body.
#[derive(Debug)]
pub struct RetryBody {
    slot: RetrySlot,
    taken: Option<Incoming>,
}

impl Body for RetryBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.taken.is_none() {
            this.taken = this.slot.lock().take();
        }
        match &mut this.taken {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(body) => body.is_end_stream(),
            None => self.slot.lock().as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(body) => body.size_hint(),
            None => self.slot.lock().as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
        }
    }
}
