//! The one place where a data-plane error becomes an answer. Every error is classified by where it came from
//! (the client, the upstream, or this proxy itself); the class and the kind decide the HTTP status, the body
//! shape the client understands, the log level and the metric label.
//!
//! Body shapes: requests under `/v1/` get OpenAI's `{"error": {"message", "type", "code"}}`; gRPC requests
//! (`content-type: application/grpc*`) get a trailers-only gRPC status (HTTP 200 with `grpc-status` and
//! `grpc-message`); everything else gets `{"error": "...", "service": "..."}`.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use ebb_config::names::HEADER_PROXY_ERROR;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

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
    UpstreamConnect(String),
    /// The upstream closed or reset the connection before answering.
    #[error("upstream reset the connection before responding")]
    UpstreamReset,
    /// The upstream's answer could not be understood.
    #[error("upstream sent an invalid response: {0}")]
    UpstreamProtocol(String),
    /// A bug or resource failure in this proxy.
    #[error("internal error: {0}")]
    Internal(String),
    /// The activator knows no service by the name the request gave (the text says what was looked for).
    #[error("{0}")]
    UnknownService(String),
    /// The request's routing headers contradict each other (a client naming a service its route did not).
    #[error("{0}")]
    Misrouted(String),
    /// Too many requests are already waiting for the service to start.
    #[error("too many requests are waiting for this service to start; try again shortly")]
    QueueFull,
    /// The service had no ready pod within the activation timeout.
    #[error("the service did not become ready within its activation timeout ({0})")]
    ActivationTimeout(String),
    /// The service's pods cannot start; the text names why (from the pods' status).
    #[error("the service's pods cannot start: {0}")]
    ServiceBlocked(String),
    /// The service was removed while the request waited for it.
    #[error("the service was removed while the request waited for it")]
    ServiceRemoved,
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

/// Every error kind's metric label, with its origin, for initialising series at zero.
pub const ALL_REASONS: [(Origin, &str); 19] = [
    (Origin::Client, "bad_request"),
    (Origin::Client, "client_body"),
    (Origin::Internal, "overloaded"),
    (Origin::Internal, "queue_timeout"),
    (Origin::Upstream, "timeout_total"),
    (Origin::Upstream, "timeout_response_start"),
    (Origin::Upstream, "timeout_idle"),
    (Origin::Client, "timeout_request_body"),
    (Origin::Upstream, "upstream_refused"),
    (Origin::Upstream, "upstream_connect"),
    (Origin::Upstream, "upstream_reset"),
    (Origin::Upstream, "upstream_protocol"),
    (Origin::Internal, "internal"),
    (Origin::Client, "unknown_service"),
    (Origin::Client, "misrouted"),
    (Origin::Internal, "queue_full"),
    (Origin::Upstream, "activation_timeout"),
    (Origin::Upstream, "service_blocked"),
    (Origin::Internal, "service_removed"),
];

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

impl ProxyError {
    /// Where the error came from.
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::ClientBody
            | ProxyError::Timeout(TimeoutKind::RequestBody)
            | ProxyError::UnknownService(_)
            | ProxyError::Misrouted(_) => Origin::Client,
            ProxyError::Overloaded
            | ProxyError::QueueTimeout(_)
            | ProxyError::Internal(_)
            | ProxyError::QueueFull
            | ProxyError::ServiceRemoved => Origin::Internal,
            ProxyError::Timeout(_)
            | ProxyError::UpstreamRefused
            | ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamReset
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::ActivationTimeout(_)
            | ProxyError::ServiceBlocked(_) => Origin::Upstream,
        }
    }

    /// The HTTP status of the answer (for gRPC clients it is carried as a gRPC status instead).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody | ProxyError::Misrouted(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::UnknownService(_) => StatusCode::NOT_FOUND,
            ProxyError::Timeout(TimeoutKind::RequestBody) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Overloaded
            | ProxyError::UpstreamRefused
            | ProxyError::QueueFull
            | ProxyError::ActivationTimeout(_)
            | ProxyError::ServiceBlocked(_)
            | ProxyError::ServiceRemoved => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::QueueTimeout(_) | ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamReset | ProxyError::UpstreamProtocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The bounded metric label (also the OpenAI-style `code`).
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ClientBody => "client_body",
            ProxyError::Overloaded => "overloaded",
            ProxyError::QueueTimeout(_) => "queue_timeout",
            ProxyError::Timeout(TimeoutKind::Total) => "timeout_total",
            ProxyError::Timeout(TimeoutKind::ResponseStart) => "timeout_response_start",
            ProxyError::Timeout(TimeoutKind::Idle) => "timeout_idle",
            ProxyError::Timeout(TimeoutKind::RequestBody) => "timeout_request_body",
            ProxyError::UpstreamRefused => "upstream_refused",
            ProxyError::UpstreamConnect(_) => "upstream_connect",
            ProxyError::UpstreamReset => "upstream_reset",
            ProxyError::UpstreamProtocol(_) => "upstream_protocol",
            ProxyError::Internal(_) => "internal",
            ProxyError::UnknownService(_) => "unknown_service",
            ProxyError::Misrouted(_) => "misrouted",
            ProxyError::QueueFull => "queue_full",
            ProxyError::ActivationTimeout(_) => "activation_timeout",
            ProxyError::ServiceBlocked(_) => "service_blocked",
            ProxyError::ServiceRemoved => "service_removed",
        }
    }

    /// Whether nothing of the request reached the user container, so that it may be sent to another pod
    /// whatever it is (the container refused the connection, or the pod's queue was full).
    pub fn nothing_forwarded(&self) -> bool {
        matches!(self, ProxyError::UpstreamRefused | ProxyError::Overloaded)
    }

    /// The error a pod's answer names in [`HEADER_PROXY_ERROR`], when nothing of the request reached its user
    /// container ([`Self::nothing_forwarded`]).
    pub fn unforwarded_by_pod(headers: &HeaderMap) -> Option<Self> {
        match headers.get(HEADER_PROXY_ERROR)?.as_bytes() {
            b"upstream_refused" => Some(ProxyError::UpstreamRefused),
            b"overloaded" => Some(ProxyError::Overloaded),
            _ => None,
        }
    }

    /// Which timeout this is, if any (a queue timeout is the total timeout running out while queued).
    pub fn timeout_kind(&self) -> Option<TimeoutKind> {
        match self {
            ProxyError::Timeout(kind) => Some(*kind),
            ProxyError::QueueTimeout(kind) => Some(*kind),
            _ => None,
        }
    }

    /// How loudly to log it.
    pub fn log_level(&self) -> LogLevel {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::ClientBody
            | ProxyError::Timeout(TimeoutKind::RequestBody)
            | ProxyError::Overloaded
            | ProxyError::QueueTimeout(_)
            | ProxyError::UnknownService(_)
            | ProxyError::Misrouted(_)
            | ProxyError::QueueFull => LogLevel::Debug,
            ProxyError::Timeout(_) | ProxyError::ActivationTimeout(_) | ProxyError::ServiceRemoved => {
                LogLevel::Info
            }
            ProxyError::UpstreamRefused
            | ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamReset
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::ServiceBlocked(_) => LogLevel::Warn,
            ProxyError::Internal(_) => LogLevel::Error,
        }
    }

    /// Logs the error at its level with the service it concerns.
    pub fn log(&self, service: &str) {
        let (origin, reason) = (self.origin().label(), self.reason());
        match self.log_level() {
            LogLevel::Debug => tracing::debug!(service, origin, reason, "{self}"),
            LogLevel::Info => tracing::info!(service, origin, reason, "{self}"),
            LogLevel::Warn => tracing::warn!(service, origin, reason, "{self}"),
            LogLevel::Error => tracing::error!(service, origin, reason, "{self}"),
        }
    }

    /// Classifies a failure of the pooled upstream client.
    pub fn from_upstream(err: &hyper_util::client::legacy::Error) -> Self {
        if err.is_connect() {
            return match find_io(err) {
                Some(io) if io.kind() == io::ErrorKind::ConnectionRefused => ProxyError::UpstreamRefused,
                _ => ProxyError::UpstreamConnect(chain_message(err)),
            };
        }
        Self::from_hyper_chain(err)
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
        let mut source: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = source {
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_user() {
                    return ProxyError::ClientBody;
                }
                if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                    return ProxyError::UpstreamReset;
                }
                if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                    return ProxyError::UpstreamProtocol(chain_message(err));
                }
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                return match io.kind() {
                    io::ErrorKind::ConnectionRefused => ProxyError::UpstreamRefused,
                    io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof => ProxyError::UpstreamReset,
                    _ => ProxyError::UpstreamProtocol(chain_message(err)),
                };
            }
            source = e.source();
        }
        ProxyError::UpstreamProtocol(chain_message(err))
    }
}

impl ProxyError {
    /// The breaker's refusal of a request whose queue deadline was that of `deadline`.
    pub fn from_breaker(err: crate::breaker::BreakerError, deadline: TimeoutKind) -> Self {
        match err {
            crate::breaker::BreakerError::Overloaded => ProxyError::Overloaded,
            crate::breaker::BreakerError::QueueTimeout => ProxyError::QueueTimeout(deadline),
        }
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
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        source = e.source();
    }
    out
}

/// Which error body a client understands, decided from its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// `content-type: application/grpc*`: a gRPC status.
    Grpc,
    /// A path under `/v1/`: OpenAI's error object.
    OpenAi,
    /// Anything else: `{"error", "service"}`.
    Json,
}

impl ClientKind {
    /// Decides from the request path and headers.
    pub fn of(path: &str, headers: &HeaderMap) -> Self {
        let grpc = headers.get(CONTENT_TYPE).is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            ClientKind::Grpc
        } else if path.starts_with("/v1/") {
            ClientKind::OpenAi
        } else {
            ClientKind::Json
        }
    }
}

/// gRPC status codes used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GrpcCode {
    /// 4
    DeadlineExceeded = 4,
    /// 13
    Internal = 13,
    /// 14
    Unavailable = 14,
}

impl GrpcCode {
    /// The gRPC status for an HTTP status, following gRPC's HTTP-to-gRPC mapping.
    pub fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            502..=503 => GrpcCode::Unavailable,
            504 => GrpcCode::DeadlineExceeded,
            _ => GrpcCode::Internal,
        }
    }
}

/// Options of the answer that are not properties of the error.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The service, `NAMESPACE/NAME`, named in plain JSON bodies.
    pub service: &'a str,
    /// `Retry-After` on 503s.
    pub retry_after: Duration,
}

/// Builds the response for `err` in the shape `kind` understands.
pub fn error_response<B: From<Bytes>>(err: &ProxyError, kind: ClientKind, answer: Answer<'_>) -> Response<B> {
    let status = err.status();
    let message = err.to_string();
    let mut builder = Response::builder();
    let body = match kind {
        ClientKind::Grpc => {
            let code = GrpcCode::for_status(status) as u8 as u16;
            builder = builder
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/grpc")
                .header("grpc-status", code)
                .header("grpc-message", grpc_percent_encode(&message));
            Bytes::new()
        }
        ClientKind::OpenAi => {
            let kind = match err.origin() {
                Origin::Client => "invalid_request_error",
                Origin::Upstream => "upstream_error",
                Origin::Internal => "server_error",
            };
            let body = serde_json::json!({"error": {"message": message, "type": kind, "code": err.reason()}});
            builder = builder.status(status).header(CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        ClientKind::Json => {
            let body = serde_json::json!({"error": message, "service": answer.service});
            builder = builder.status(status).header(CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        builder = builder.header(RETRY_AFTER, HeaderValue::from(answer.retry_after.as_secs().max(1)));
    }
    builder = builder.header(HEADER_PROXY_ERROR, err.reason());
    builder.body(B::from(body)).unwrap_or_else(|_| {
        // Every header above is statically valid; this cannot happen, but never panic on the data path.
        let mut response = Response::new(B::from(Bytes::from_static(b"{\"error\":\"internal error\"}")));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%` passes, the rest is `%XX`.
pub fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn answer() -> Answer<'static> {
        Answer { service: "default/demo", retry_after: Duration::from_secs(1) }
    }

    async fn body(resp: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn shapes_per_client_kind() {
        let plain: Response<Full<Bytes>> =
            error_response(&ProxyError::Overloaded, ClientKind::Json, answer());
        assert_eq!(plain.status(), 503);
        assert_eq!(plain.headers()[RETRY_AFTER], "1");
        let v = body(plain).await;
        assert_eq!(v["service"], "default/demo");
        assert!(v["error"].as_str().unwrap().contains("overloaded"));

        let openai: Response<Full<Bytes>> =
            error_response(&ProxyError::UpstreamReset, ClientKind::OpenAi, answer());
        assert_eq!(openai.status(), 502);
        let v = body(openai).await;
        assert_eq!(v["error"]["type"], "upstream_error");
        assert_eq!(v["error"]["code"], "upstream_reset");
        assert!(v["error"]["message"].as_str().unwrap().contains("reset"));

        let grpc: Response<Full<Bytes>> =
            error_response(&ProxyError::Timeout(TimeoutKind::ResponseStart), ClientKind::Grpc, answer());
        assert_eq!(grpc.status(), 200);
        assert_eq!(grpc.headers()["grpc-status"], "4");
        assert_eq!(grpc.headers()[CONTENT_TYPE], "application/grpc");
    }

    #[test]
    fn every_error_has_a_consistent_class() {
        let all = [
            ProxyError::BadRequest("x"),
            ProxyError::ClientBody,
            ProxyError::Overloaded,
            ProxyError::QueueTimeout(TimeoutKind::ResponseStart),
            ProxyError::Timeout(TimeoutKind::Total),
            ProxyError::Timeout(TimeoutKind::ResponseStart),
            ProxyError::Timeout(TimeoutKind::Idle),
            ProxyError::Timeout(TimeoutKind::RequestBody),
            ProxyError::UpstreamRefused,
            ProxyError::UpstreamConnect("x".into()),
            ProxyError::UpstreamReset,
            ProxyError::UpstreamProtocol("x".into()),
            ProxyError::Internal("x".into()),
            ProxyError::UnknownService("x".into()),
            ProxyError::Misrouted("x".into()),
            ProxyError::QueueFull,
            ProxyError::ActivationTimeout("x".into()),
            ProxyError::ServiceBlocked("x".into()),
            ProxyError::ServiceRemoved,
        ];
        for (err, (origin, reason)) in all.iter().zip(ALL_REASONS) {
            assert_eq!((err.origin(), err.reason()), (origin, reason));
            let expected_class = match origin {
                Origin::Client => 4,
                _ => 5,
            };
            assert_eq!(err.status().as_u16() / 100, expected_class, "{err}");
        }
    }

    #[test]
    fn classifies_io_errors() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(ProxyError::from_hyper_chain(&refused), ProxyError::UpstreamRefused);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(ProxyError::from_hyper_chain(&reset), ProxyError::UpstreamReset);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("a 100% é"), "a 100%25 %C3%A9");
    }
}
