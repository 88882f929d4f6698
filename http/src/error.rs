//! Data-plane errors, each classified once: where it came from (the client, the upstream, or the proxy itself),
//! the HTTP status, the bounded reason (the metric label, the OpenAI-style `code` and `Ebb-Proxy-Error`) and how
//! loudly it is logged, in one table per error type ([`ProxyError::kind`]). A component adds its own errors on
//! top by implementing [`Classified`] (the activator's wrap these); [`crate::answer`] turns any of them into the
//! response the client understands.

use std::error::Error as StdError;
use std::fmt::{self, Write as _};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::breaker::BreakerError;
use crate::timeouts::TimeoutKind;

/// Boxed error type of proxied bodies (what hyper's server accepts).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The error a [`crate::body::RequestBody`] fails with when the client went silent.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client sent no part of the request body for {0:?}")]
pub struct RequestBodyTimedOut(pub Duration);

/// Where an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The client sent something wrong or went away.
    Client,
    /// The user container refused, reset, stalled or answered nonsense.
    Upstream,
    /// This proxy decided (overload) or failed.
    Internal,
}

impl Origin {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Origin::Client => "client",
            Origin::Upstream => "upstream",
            Origin::Internal => "internal",
        }
    }
}

/// How loudly an error is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Expected under load or from misbehaving clients: counted in metrics, logged at debug.
    Debug,
    /// Worth noticing: timeouts.
    Info,
    /// The user container misbehaves.
    Warn,
    /// A bug or resource exhaustion in the proxy.
    Error,
}

/// What an error decides about its answer and its accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// Where it came from.
    pub origin: Origin,
    /// The HTTP status of the answer (for gRPC clients it is carried as a gRPC status instead).
    pub status: StatusCode,
    /// The bounded reason: the metric label, the OpenAI-style `code` and `Ebb-Proxy-Error`.
    pub reason: &'static str,
    /// How loudly to log it.
    pub level: LogLevel,
}

const fn kind(origin: Origin, status: StatusCode, reason: &'static str, level: LogLevel) -> Kind {
    Kind { origin, status, reason, level }
}

/// An error a proxy answers with.
pub trait Classified: StdError {
    /// Its row of the kind table.
    fn kind(&self) -> Kind;

    /// The timeout it stands for, if it is one (counted under that kind).
    fn timeout(&self) -> Option<TimeoutKind> {
        None
    }

    /// Where it came from.
    fn origin(&self) -> Origin {
        self.kind().origin
    }

    /// The HTTP status of its answer.
    fn status(&self) -> StatusCode {
        self.kind().status
    }

    /// Its bounded reason.
    fn reason(&self) -> &'static str {
        self.kind().reason
    }

    /// Logs it at its level with the service it concerns.
    fn log(&self, service: &str) {
        let Kind { origin, reason, level, .. } = self.kind();
        let origin = origin.label();
        match level {
            LogLevel::Debug => tracing::debug!(service, origin, reason, "{self}"),
            LogLevel::Info => tracing::info!(service, origin, reason, "{self}"),
            LogLevel::Warn => tracing::warn!(service, origin, reason, "{self}"),
            LogLevel::Error => tracing::error!(service, origin, reason, "{self}"),
        }
    }
}

/// What made an error, kept for its message (and for whoever inspects the chain), cheap to clone.
#[derive(Clone)]
pub struct Cause(Arc<dyn StdError + Send + Sync>);

impl Cause {
    /// Keeps `err`.
    pub fn new(err: impl StdError + Send + Sync + 'static) -> Self {
        Self(Arc::new(err))
    }

    /// A cause known only by its message.
    pub fn message(text: impl Into<String>) -> Self {
        Self(Arc::new(io::Error::other(text.into())))
    }

    /// The error kept.
    pub fn error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Display for Cause {
    /// "outer: inner: innermost", skipping repeats.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain_message(self.error()))
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cause({self})")
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

impl From<&str> for Cause {
    fn from(text: &str) -> Self {
        Self::message(text)
    }
}

/// Everything that can go wrong with a proxied request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed (hyper rejects most such requests before they reach us).
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    /// The client's request body failed while it was being forwarded.
    #[error("the request body could not be read from the client")]
    ClientBody,
    /// The breaker's slots and queue are all taken.
    #[error("overloaded: the concurrency limit is reached and the queue is full")]
    Overloaded,
    /// The request waited for a slot until its deadline: the total or the response-start timeout, whichever
    /// comes first (the kind says which).
    #[error("timed out waiting in the queue for a concurrency slot ({})", timeout_name(*.0))]
    QueueTimeout(TimeoutKind),
    /// A timeout passed before the response started (or, for [`TimeoutKind::RequestBody`], before the client
    /// finished its request body).
    #[error("{}", timeout_message(*.0))]
    Timeout(TimeoutKind),
    /// Nothing listens on the upstream port (the user container is gone or restarting): nothing reached it, so
    /// the request may go elsewhere; answered 503 with `Retry-After`.
    #[error("upstream refused the connection")]
    UpstreamRefused,
    /// The upstream connection could not be made for another reason.
    #[error("could not connect to upstream: {0}")]
    UpstreamConnect(Cause),
    /// The upstream closed or reset the connection before answering.
    #[error("upstream reset the connection before responding")]
    UpstreamReset,
    /// The upstream's answer could not be understood.
    #[error("upstream sent an invalid response: {0}")]
    UpstreamProtocol(Cause),
    /// A bug or resource failure in this proxy.
    #[error("internal error: {0}")]
    Internal(Cause),
}

fn timeout_name(kind: TimeoutKind) -> &'static str {
    match kind {
        TimeoutKind::Total => "the total timeout",
        TimeoutKind::ResponseStart => "the response-start timeout",
        TimeoutKind::Idle => "the idle timeout",
        TimeoutKind::RequestBody => "the request-body timeout",
    }
}

fn timeout_message(kind: TimeoutKind) -> &'static str {
    match kind {
        TimeoutKind::Total => "the request exceeded its total timeout",
        TimeoutKind::ResponseStart => "upstream did not start responding within the response-start timeout",
        TimeoutKind::Idle => "upstream sent nothing for longer than the idle timeout",
        TimeoutKind::RequestBody => "the client sent nothing for longer than the request-body timeout",
    }
}

impl Classified for ProxyError {
    /// The one table: origin, status, reason and log level of every error.
    fn kind(&self) -> Kind {
        use LogLevel::{Debug, Error, Info, Warn};
        use Origin::{Client, Internal, Upstream};
        match self {
            ProxyError::BadRequest(_) => kind(Client, StatusCode::BAD_REQUEST, "bad_request", Debug),
            ProxyError::ClientBody => kind(Client, StatusCode::BAD_REQUEST, "client_body", Debug),
            ProxyError::Overloaded => kind(Internal, StatusCode::SERVICE_UNAVAILABLE, "overloaded", Debug),
            ProxyError::QueueTimeout(_) => {
                kind(Internal, StatusCode::GATEWAY_TIMEOUT, "queue_timeout", Debug)
            }
            ProxyError::Timeout(TimeoutKind::Total) => {
                kind(Upstream, StatusCode::GATEWAY_TIMEOUT, "timeout_total", Info)
            }
            ProxyError::Timeout(TimeoutKind::ResponseStart) => {
                kind(Upstream, StatusCode::GATEWAY_TIMEOUT, "timeout_response_start", Info)
            }
            ProxyError::Timeout(TimeoutKind::Idle) => {
                kind(Upstream, StatusCode::GATEWAY_TIMEOUT, "timeout_idle", Info)
            }
            ProxyError::Timeout(TimeoutKind::RequestBody) => {
                kind(Client, StatusCode::REQUEST_TIMEOUT, "timeout_request_body", Debug)
            }
            ProxyError::UpstreamRefused => {
                kind(Upstream, StatusCode::SERVICE_UNAVAILABLE, "upstream_refused", Warn)
            }
            ProxyError::UpstreamConnect(_) => {
                kind(Upstream, StatusCode::BAD_GATEWAY, "upstream_connect", Warn)
            }
            ProxyError::UpstreamReset => kind(Upstream, StatusCode::BAD_GATEWAY, "upstream_reset", Warn),
            ProxyError::UpstreamProtocol(_) => {
                kind(Upstream, StatusCode::BAD_GATEWAY, "upstream_protocol", Warn)
            }
            ProxyError::Internal(_) => kind(Internal, StatusCode::INTERNAL_SERVER_ERROR, "internal", Error),
        }
    }

    fn timeout(&self) -> Option<TimeoutKind> {
        match self {
            ProxyError::Timeout(kind) | ProxyError::QueueTimeout(kind) => Some(*kind),
            _ => None,
        }
    }
}

impl ProxyError {
    /// One error of every kind, in the order metric series list them.
    pub fn every_kind() -> Vec<ProxyError> {
        vec![
            ProxyError::BadRequest(""),
            ProxyError::ClientBody,
            ProxyError::Overloaded,
            ProxyError::QueueTimeout(TimeoutKind::ResponseStart),
            ProxyError::Timeout(TimeoutKind::Total),
            ProxyError::Timeout(TimeoutKind::ResponseStart),
            ProxyError::Timeout(TimeoutKind::Idle),
            ProxyError::Timeout(TimeoutKind::RequestBody),
            ProxyError::UpstreamRefused,
            ProxyError::UpstreamConnect(Cause::message("")),
            ProxyError::UpstreamReset,
            ProxyError::UpstreamProtocol(Cause::message("")),
            ProxyError::Internal(Cause::message("")),
        ]
    }

    /// Whether nothing of the request reached the user container, so that it may be sent to another pod
    /// whatever it is (the container refused the connection, or the pod's queue was full).
    pub fn nothing_forwarded(&self) -> bool {
        matches!(self, ProxyError::UpstreamRefused | ProxyError::Overloaded)
    }

    /// The error a pod's answer names in `Ebb-Proxy-Error`, when nothing of the request reached its user
    /// container ([`Self::nothing_forwarded`]).
    pub fn unforwarded_by_pod(headers: &HeaderMap) -> Option<Self> {
        Self::unforwarded_by_value(headers.get(ebb_config::names::HEADER_PROXY_ERROR)?.as_bytes())
    }

    /// [`Self::unforwarded_by_pod`] from the `Ebb-Proxy-Error` value itself.
    pub fn unforwarded_by_value(value: &[u8]) -> Option<Self> {
        match value {
            b"upstream_refused" => Some(ProxyError::UpstreamRefused),
            b"overloaded" => Some(ProxyError::Overloaded),
            _ => None,
        }
    }

    /// The breaker's refusal of a request whose queue deadline was that of `deadline`.
    pub fn from_breaker(err: BreakerError, deadline: TimeoutKind) -> Self {
        match err {
            BreakerError::Overloaded => ProxyError::Overloaded,
            BreakerError::QueueTimeout => ProxyError::QueueTimeout(deadline),
        }
    }

    /// Classifies a failure of the pooled upstream client.
    pub fn from_upstream(err: hyper_util::client::legacy::Error) -> Self {
        if err.is_connect() {
            return match find_io(&err) {
                Some(io) if io.kind() == io::ErrorKind::ConnectionRefused => ProxyError::UpstreamRefused,
                _ => ProxyError::UpstreamConnect(Cause::new(err)),
            };
        }
        Self::from_hyper_chain(&err)
    }

    /// Classifies a failure to read the client's request body: the request-body timeout, or the client went
    /// away or sent a malformed body.
    pub fn from_client_body(err: &(dyn StdError + 'static)) -> Self {
        match chain(err).any(|e| e.is::<RequestBodyTimedOut>()) {
            true => ProxyError::Timeout(TimeoutKind::RequestBody),
            false => ProxyError::ClientBody,
        }
    }

    /// Classifies any error whose source chain holds hyper or I/O errors (a failed upstream request or body).
    pub fn from_hyper_chain(err: &(dyn StdError + 'static)) -> Self {
        // hyper wraps a request body's own error as a user error: ours says why the body stopped.
        if chain(err).any(|e| e.is::<RequestBodyTimedOut>()) {
            return ProxyError::Timeout(TimeoutKind::RequestBody);
        }
        let protocol = || ProxyError::UpstreamProtocol(Cause::message(chain_message(err)));
        for e in chain(err) {
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_user() {
                    return ProxyError::ClientBody;
                }
                if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                    return ProxyError::UpstreamReset;
                }
                if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                    return protocol();
                }
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                return match io.kind() {
                    io::ErrorKind::ConnectionRefused => ProxyError::UpstreamRefused,
                    io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof => ProxyError::UpstreamReset,
                    _ => protocol(),
                };
            }
        }
        protocol()
    }
}

/// `err` and its sources, outermost first.
fn chain<'a>(err: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

fn find_io<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    chain(err).find_map(|e| e.downcast_ref::<io::Error>())
}

/// "outer: inner: innermost", skipping repeats.
fn chain_message(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    for e in chain(err).skip(1) {
        let text = e.to_string();
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_consistent_class_and_its_own_reason() {
        let all = ProxyError::every_kind();
        let mut reasons: Vec<&str> = all.iter().map(Classified::reason).collect();
        for err in &all {
            let expected_class = match err.origin() {
                Origin::Client => 4,
                _ => 5,
            };
            assert_eq!(err.status().as_u16() / 100, expected_class, "{err}");
        }
        reasons.dedup();
        assert_eq!(reasons.len(), all.len(), "a reason is used twice");
    }

    #[test]
    fn classifies_io_errors() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(ProxyError::from_hyper_chain(&refused), ProxyError::UpstreamRefused);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(ProxyError::from_hyper_chain(&reset), ProxyError::UpstreamReset);
    }

    #[test]
    fn a_cause_keeps_its_error_and_says_its_whole_chain() {
        let cause = Cause::new(io::Error::new(io::ErrorKind::InvalidData, "bad header"));
        assert_eq!(
            ProxyError::UpstreamProtocol(cause.clone()).to_string(),
            "upstream sent an invalid response: bad header"
        );
        assert!(cause.error().downcast_ref::<io::Error>().is_some());
    }
}
