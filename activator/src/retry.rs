//! The client's request body, kept so that a request can go to another pod when nothing of it reached a user
//! container: the connection to the pod failed before any byte was sent, or the pod's queue-proxy answered that
//! it forwarded nothing (`Ebb-Proxy-Error: upstream_refused` or `overloaded`, see
//! [`ProxyError::unforwarded_by_pod`]). Retrying is then always safe; it is never done once the request may
//! have reached a container, nor after the response started.
//!
//! A body with a known length of at most [`BUFFER_LIMIT`] is read whole before the first attempt (nginx buffers
//! request bodies the same way), so every attempt can send all of it. Any other body streams, and only an
//! attempt that finds it untouched can send it. Either way the client's silence is bounded by the service's
//! request-body timeout.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use ebb_http::body::RequestBody;
use ebb_http::error::BoxError;
use ebb_http::error::ProxyError;
use ebb_process::sync::Locked;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

/// Largest request body read whole before forwarding: chat requests are a few KiB; a long prompt that is larger
/// streams, and is retried only when no attempt read any of it.
pub const BUFFER_LIMIT: u64 = 64 * 1024;

/// A request body that attempts can send, each whole.
#[derive(Debug)]
pub enum Replayable {
    /// Read whole: every attempt sends all of it.
    Whole {
        /// The bytes.
        data: Bytes,
        /// Trailers, if the client sent any.
        trailers: Option<HeaderMap>,
    },
    /// Streams from the client: the first attempt that polls it takes it.
    Streamed(RetrySlot),
}

impl Replayable {
    /// Reads `body` whole if its length is known and at most [`BUFFER_LIMIT`]; otherwise keeps it to stream.
    pub async fn read(body: RequestBody) -> Result<Self, ProxyError> {
        if body.size_hint().upper().is_none_or(|n| n > BUFFER_LIMIT) {
            return Ok(Self::streamed(body));
        }
        let collected = body.collect().await.map_err(|err| ProxyError::from_client_body(&*err))?;
        let trailers = collected.trailers().cloned();
        Ok(Replayable::Whole { data: collected.to_bytes(), trailers })
    }

    /// A body that streams (an upgrade's, which carries no payload worth keeping).
    pub fn streamed(body: RequestBody) -> Self {
        Replayable::Streamed(RetrySlot(Arc::new(Mutex::new(Some(body)))))
    }

    /// Whether another attempt may still send the whole body.
    pub fn replayable(&self) -> bool {
        match self {
            Replayable::Whole { .. } => true,
            Replayable::Streamed(slot) => slot.unused(),
        }
    }

    /// The body for one attempt.
    pub fn attempt(&self) -> AttemptBody {
        match self {
            Replayable::Whole { data, trailers } => AttemptBody::Whole {
                data: Some(data.clone()).filter(|d| !d.is_empty()),
                trailers: trailers.clone(),
            },
            Replayable::Streamed(slot) => AttemptBody::Streamed { slot: slot.clone(), taken: None },
        }
    }
}

/// Holds a streamed body until the first attempt to send it polls it.
#[derive(Debug, Clone)]
pub struct RetrySlot(Arc<Mutex<Option<RequestBody>>>);

impl RetrySlot {
    /// Whether no attempt has read the body yet.
    pub fn unused(&self) -> bool {
        self.0.locked().is_some()
    }
}

/// One attempt's view of the client's body.
#[derive(Debug)]
pub enum AttemptBody {
    /// A copy of a body read whole.
    Whole {
        /// The bytes not sent yet.
        data: Option<Bytes>,
        /// The trailers not sent yet.
        trailers: Option<HeaderMap>,
    },
    /// The streamed body, taken from its slot when first polled.
    Streamed {
        /// Where it waits.
        slot: RetrySlot,
        /// Once taken.
        taken: Option<RequestBody>,
    },
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            AttemptBody::Whole { data, trailers } => {
                let frame = match data.take() {
                    Some(data) => Some(Frame::data(data)),
                    None => trailers.take().map(Frame::trailers),
                };
                Poll::Ready(frame.map(Ok))
            }
            AttemptBody::Streamed { slot, taken } => {
                if taken.is_none() {
                    *taken = slot.0.locked().take();
                }
                match taken {
                    Some(body) => Pin::new(body).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AttemptBody::Whole { data, trailers } => data.is_none() && trailers.is_none(),
            AttemptBody::Streamed { taken: Some(body), .. } => body.is_end_stream(),
            AttemptBody::Streamed { slot, taken: None } => {
                slot.0.locked().as_ref().is_none_or(Body::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AttemptBody::Whole { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            AttemptBody::Streamed { taken: Some(body), .. } => body.size_hint(),
            AttemptBody::Streamed { slot, taken: None } => {
                slot.0.locked().as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
            }
        }
    }
}
