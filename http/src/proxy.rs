//! Forwarding: pooled upstream connections, the choice of upstream protocol, hop-by-hop headers (RFC 9110
//! section 7.6.1) and protocol upgrades (WebSocket). Shared by the queue-proxy and the activator; it knows
//! nothing of breakers, stats or timeouts, which the caller wraps around it.

use std::sync::Arc;
use std::time::Duration;

use ebb_config::Protocol;
use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::error::BoxError;
use crate::error::ProxyError;
use crate::h1::pool::Pool;
use crate::h2c::H2cConnections;
use crate::upstream_io::Connector;

/// Settings of the upstream connection pools.
#[derive(Debug, Clone)]
pub struct ForwarderOptions {
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Most idle HTTP/1.1 connections kept per upstream (beyond it, a connection that goes idle is closed).
    pub max_idle_per_host: usize,
}

/// Idle upstream connections kept per upstream by default. A burst of concurrent requests opens a connection
/// each; keeping them all afterwards holds a socket in the model server and about 20 KiB of buffers here for
/// load that has passed (1000 held requests left 2,000 open sockets in the queue-proxy, now 1,100). nginx
/// likewise keeps only what its `keepalive` directive says.
pub const DEFAULT_MAX_IDLE_PER_HOST: usize = 100;

impl Default for ForwarderOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            max_idle_per_host: DEFAULT_MAX_IDLE_PER_HOST,
        }
    }
}

/// Forwards requests to an upstream over pooled connections: HTTP/1.1 with keep-alive, or HTTP/2 cleartext by
/// prior knowledge. `TCP_NODELAY` is set on every upstream socket. Cloning is cheap and shares the pools. The
/// HTTP/1 fast path ([`crate::h1`]) keeps its own idle connections, with the same settings ([`Self::pool`]).
#[derive(Debug, Clone)]
pub struct Forwarder<B = Incoming> {
    http1: Client<Connector, B>,
    h2c: H2cConnections<B>,
    fast: Arc<Pool>,
}

/// A response that switched protocols: once the caller has sent it to the client, [`Self::spawn`] joins the
/// two upgraded connections.
#[derive(Debug)]
pub struct PendingUpgrade {
    client: OnUpgrade,
    upstream: OnUpgrade,
}

impl PendingUpgrade {
    /// Copies bytes both ways until either side closes; `hold` (a breaker permit, a stats guard) is dropped
    /// when the tunnel ends, so an open WebSocket keeps its slot.
    pub fn spawn<T: Send + 'static>(self, hold: T) {
        tokio::spawn(async move {
            match tokio::join!(self.client, self.upstream) {
                (Ok(client), Ok(upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        tracing::debug!("upgraded connection ended: {err}");
                    }
                }
                (Err(err), _) | (_, Err(err)) => tracing::debug!("upgrade did not complete: {err}"),
            }
            drop(hold);
        });
    }
}

impl<B> Forwarder<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Builds the two pools.
    pub fn new(options: &ForwarderOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        connector.set_connect_timeout(Some(options.connect_timeout));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .pool_max_idle_per_host(options.max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(Connector(connector));
        let fast = Pool::new(options.max_idle_per_host, options.pool_idle_timeout, options.connect_timeout);
        Self { http1, h2c: H2cConnections::new(options.connect_timeout), fast }
    }

    /// The fast path's idle upstream connections.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.fast
    }

    /// Sends `req` to `upstream` and returns the response headers (the body streams on). `protocol` overrides
    /// the client's protocol. An HTTP/1.1 upgrade answered with 101 comes back with a [`PendingUpgrade`].
    pub async fn forward(
        &self,
        mut req: Request<B>,
        upstream: &Authority,
        protocol: Option<Protocol>,
    ) -> Result<(Response<Incoming>, Option<PendingUpgrade>), ProxyError> {
        let protocol = upstream_protocol(req.version(), protocol);
        let client_upgrade = if protocol == Protocol::Http1 && is_upgrade(req.headers()) {
            Some(hyper::upgrade::on(&mut req))
        } else {
            None
        };
        prepare_request(&mut req, upstream, protocol, client_upgrade.is_some())?;
        let mut response = match protocol {
            Protocol::Http1 => self.http1.request(req).await.map_err(ProxyError::from_upstream)?,
            Protocol::H2c => self.h2c.send(upstream, req).await?,
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upgrade = match client_upgrade {
            Some(client) if switching => {
                Some(PendingUpgrade { client, upstream: hyper::upgrade::on(&mut response) })
            }
            _ => None,
        };
        strip_hop_by_hop(response.headers_mut(), upgrade.is_some());
        Ok((response, upgrade))
    }
}

/// The upstream protocol: the override if any, else the client's (HTTP/2 stays HTTP/2).
pub fn upstream_protocol(client: Version, protocol: Option<Protocol>) -> Protocol {
    protocol.unwrap_or(if client == Version::HTTP_2 { Protocol::H2c } else { Protocol::Http1 })
}

/// Points the request at `upstream` with the chosen protocol and strips hop-by-hop headers (keeping the
/// upgrade handshake when `upgrade`). The client's host name reaches the upstream either way: in `Host` for
/// HTTP/1.1 (the URI then names the upstream, which the pool connects to), in the URI's authority, which
/// becomes `:authority`, for h2c (whose connections are chosen by upstream, see [`crate::h2c`]).
pub fn prepare_request<B>(
    req: &mut Request<B>,
    upstream: &Authority,
    protocol: Protocol,
    upgrade: bool,
) -> Result<(), ProxyError> {
    let original_authority = req.uri().authority().cloned();
    let path = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    // An HTTP/1.1 client names the host in Host; h2c wants it in the authority.
    let host = || {
        let host = req.headers().get(HOST)?.to_str().ok()?;
        host.parse::<Authority>().ok().filter(|a| !a.as_str().contains('@'))
    };
    let authority = match protocol {
        Protocol::Http1 => upstream.clone(),
        Protocol::H2c => original_authority.clone().or_else(host).unwrap_or_else(|| upstream.clone()),
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    strip_hop_by_hop(req.headers_mut(), upgrade);
    match protocol {
        Protocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            // An HTTP/2 client names the host in :authority; HTTP/1.1 wants it in Host.
            if let Some(authority) = original_authority
                && !req.headers().contains_key(HOST)
                && let Ok(host) = HeaderValue::from_str(authority.as_str())
            {
                req.headers_mut().insert(HOST, host);
            }
        }
        Protocol::H2c => {
            *req.version_mut() = Version::HTTP_2;
            // The authority now carries the host; a Host header that differed from it would make the request
            // malformed (RFC 9113 section 8.3.1).
            req.headers_mut().remove(HOST);
        }
    }
    Ok(())
}

/// Whether the request asks for an HTTP/1.1 protocol upgrade (`Connection: upgrade` plus `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Removes hop-by-hop fields (RFC 9110 section 7.6.1): those the Connection header names, Connection itself,
/// Proxy-Connection, Keep-Alive, Transfer-Encoding, Upgrade and TE, except `TE: trailers`, which HTTP/2 and gRPC
/// need end to end. With `upgrade`, the handshake (`Connection: upgrade` and `Upgrade`) is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if name == TE || (upgrade && name == UPGRADE) {
                continue;
            }
            headers.remove(&name);
        }
        headers.remove(CONNECTION);
    }
    for name in [PROXY_CONNECTION, KEEP_ALIVE, TRANSFER_ENCODING] {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(TE);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_end_to_end_headers_stay() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-keep"]);

        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn upgrade_handshake_is_kept_for_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
    }

    #[test]
    fn requests_are_pointed_at_the_upstream_with_the_chosen_protocol() {
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://public.example/v1/x?q=1")
            .body(())
            .unwrap();
        let upstream: Authority = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(upstream_protocol(req.version(), None), Protocol::H2c);
        assert_eq!(upstream_protocol(req.version(), Some(Protocol::Http1)), Protocol::Http1);
        prepare_request(&mut req, &upstream, Protocol::Http1, false).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:8080/v1/x?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()[HOST], "public.example");

        // h2c keeps the client's host in the authority (`:authority`), from an HTTP/2 client's URI or an
        // HTTP/1.1 client's Host header; the connection goes to the upstream regardless.
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://public.example/v1/x?q=1")
            .body(())
            .unwrap();
        prepare_request(&mut req, &upstream, Protocol::H2c, false).unwrap();
        assert_eq!(req.uri(), "http://public.example/v1/x?q=1");
        assert_eq!(req.version(), Version::HTTP_2);
        let mut req = Request::builder().uri("/v1/x").header(HOST, "public.example:81").body(()).unwrap();
        prepare_request(&mut req, &upstream, Protocol::H2c, false).unwrap();
        assert_eq!(req.uri(), "http://public.example:81/v1/x");
        assert!(!req.headers().contains_key(HOST));
        let mut req = Request::builder().uri("/v1/x").body(()).unwrap();
        prepare_request(&mut req, &upstream, Protocol::H2c, false).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:8080/v1/x");
    }
}
