//! The one place where an error becomes an answer, in the shape its client understands: requests under `/v1/`
//! get OpenAI's `{"error": {"message", "type", "code"}}`; gRPC requests (`content-type: application/grpc*`) get a
//! trailers-only gRPC status (HTTP 200 with `grpc-status` and `grpc-message`); everything else gets
//! `{"error": "...", "service": "..."}`. Every answer says which error it is in `Ebb-Proxy-Error`, and a 503
//! says when to come back.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use ebb_config::names::HEADER_PROXY_ERROR;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::error::{Classified, Origin};

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
        Self::from_parts(path, headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes))
    }

    /// Decides from the request path and its `Content-Type` value.
    pub fn from_parts(path: &str, content_type: Option<&[u8]>) -> Self {
        let grpc = content_type.is_some_and(|ct| ct.starts_with(b"application/grpc"));
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
pub fn error_response<B: From<Bytes>, E: Classified + ?Sized>(
    err: &E,
    kind: ClientKind,
    answer: Answer<'_>,
) -> Response<B> {
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
    use crate::error::ProxyError;
    use crate::timeouts::TimeoutKind;
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
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("a 100% é"), "a 100%25 %C3%A9");
    }
}
