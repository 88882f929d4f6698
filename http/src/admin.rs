//! The small endpoints every component serves beside its real work (`/metrics` for Prometheus, health and
//! readiness, status documents): one way to reply, and one way to serve them, through [`Acceptor`], so that in
//! every component a silent or slow client is dropped, an accept error backs off instead of spinning, and
//! metrics carry the content type of the format they are written in.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::listen::Acceptor;

/// An endpoint's answer.
pub type Reply = Response<Full<Bytes>>;

/// The content type of metrics as prometheus-client writes them (OpenMetrics text, ending in `# EOF`).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `body` with `status` and `content_type`.
pub fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A short plain-text answer.
pub fn text(status: StatusCode, body: &'static str) -> Reply {
    reply(status, "text/plain", Bytes::from_static(body.as_bytes()))
}

/// A JSON document.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    reply(status, "application/json", value.to_string())
}

/// An OpenMetrics exposition.
pub fn metrics(exposition: String) -> Reply {
    reply(StatusCode::OK, OPENMETRICS, exposition)
}

/// Serves `listener` with `handler` until the returned future is dropped (its task aborted).
pub async fn serve<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    // Held for as long as this serves: dropping it would stop the acceptor.
    let (acceptor, _shutdown) = Acceptor::new();
    acceptor
        .accept(listener, move |req| {
            let answer = handler(req);
            async move { Ok::<_, Infallible>(answer.await) }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn serves_what_the_handler_answers_until_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, |req: Request<Incoming>| async move {
            match req.uri().path() {
                "/metrics" => metrics("# EOF\n".into()),
                _ => text(StatusCode::NOT_FOUND, "not found"),
            }
        }));
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let response = client.get(format!("http://{addr}/metrics").parse().unwrap()).await.unwrap();
        assert_eq!(response.headers()[CONTENT_TYPE], OPENMETRICS);
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "# EOF\n");
        let response = client.get(format!("http://{addr}/other").parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), 404);
        server.abort();
    }
}
