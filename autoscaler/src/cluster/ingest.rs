//! The stat ingest on port 8080: `POST /v1/stats`, a long-lived stream of length-prefixed
//! [`IngestFrame`]s from each activator (`docs/wire-formats.md`). The sender must present a bearer token of
//! an allowed identity (401 without a valid token, 403 for another identity); a frame that does not decode
//! ends the stream with 400. Every replica collects, leader or not, so windows stay warm across failover.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use ebb_config::names::INGEST_PATH;
use ebb_config::wire::IngestFrame;
use ebb_http::listen::Acceptor;
use http::header::AUTHORIZATION;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::auth::{Authenticator, Verdict};

/// Called with every accepted frame before it goes to the engine (the controller notes activator load).
pub type Observer = Arc<dyn Fn(&IngestFrame) + Send + Sync>;

/// The ingest server's shared parts.
pub struct Ingest {
    auth: Arc<Authenticator>,
    frames: mpsc::Sender<IngestFrame>,
    observer: Observer,
}

impl Ingest {
    /// An ingest that checks senders with `auth` and passes frames to `frames`.
    pub fn new(auth: Arc<Authenticator>, frames: mpsc::Sender<IngestFrame>, observer: Observer) -> Arc<Self> {
        Arc::new(Self { auth, frames, observer })
    }

    /// Serves `listener` until `shutdown` turns true, through ebb-http's acceptor: a silent or slow client is
    /// dropped and an accept error backs off, as on every other port. Open streams end with the process.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let (acceptor, _stop) = Acceptor::new();
        let handler = move |req| {
            let this = self.clone();
            async move { Ok::<_, Infallible>(this.handle(req).await) }
        };
        tokio::select! {
            () = acceptor.accept(listener, handler) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != INGEST_PATH {
            return answer(StatusCode::NOT_FOUND, "not found");
        }
        if req.method() != Method::POST {
            return answer(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        }
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        match self.auth.check(token).await {
            Ok(Verdict::Allowed(user)) => tracing::debug!(%user, "ingest stream opened"),
            Ok(Verdict::Forbidden(user)) => {
                tracing::warn!(%user, "ingest refused: identity not allowed");
                return answer(StatusCode::FORBIDDEN, "this identity may not send stats");
            }
            Ok(Verdict::Unauthenticated) => {
                return answer(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            }
            Err(err) => {
                tracing::warn!("{err}");
                return answer(StatusCode::SERVICE_UNAVAILABLE, "cannot check the token now");
            }
        }
        let mut body = req.into_body();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            loop {
                match IngestFrame::decode_prefix(&buf) {
                    Ok(Some((frame, used))) => {
                        buf.drain(..used);
                        (self.observer)(&frame);
                        if self.frames.send(frame).await.is_err() {
                            return answer(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::warn!("bad ingest frame, closing the stream: {err}");
                        return answer(StatusCode::BAD_REQUEST, &format!("bad frame: {err}"));
                    }
                }
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(err)) => {
                    tracing::debug!("ingest stream broke: {err}");
                    return answer(StatusCode::BAD_REQUEST, "stream broke");
                }
                None if buf.is_empty() => return answer(StatusCode::OK, ""),
                None => return answer(StatusCode::BAD_REQUEST, "stream ended inside a frame"),
            }
        }
    }
}

fn answer(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}
