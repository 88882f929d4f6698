//! A test gateway standing in for an ingress (the test cluster has no kube-proxy and no DNS): an HTTP proxy
//! on a loopback port of its own that follows the public Service's EndpointSlice (written by the
//! autoscaler: the activators in proxy mode, the ready pods in serve mode) and forwards each request to its
//! endpoints round-robin, with `Ebb-Service: NAMESPACE/NAME` set as the example HTTPRoute's
//! RequestHeaderModifier does.
//!
//! Like an ingress it retries a request on another endpoint only when the connection could not be made (the
//! request was not sent), which covers an endpoint that went away before the slice said so; any answer,
//! including an error status, is passed on as it is. With no endpoint at all it answers 503.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ebb_autoscaler::cluster::slices::discover_endpoint_slices;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::api::{DynamicObject, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// The header an HTTPRoute sets to name the service.
const HEADER_SERVICE: &str = "ebb-service";
/// The largest request body the gateway buffers (it keeps the body to retry on another endpoint).
const MAX_BODY: usize = 16 << 20;
/// Pause before retrying on another endpoint.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Most attempts per request.
const MAX_ATTEMPTS: usize = 10;

type Body = BoxBody<Bytes, hyper::Error>;

/// See the module documentation. Stops when dropped.
pub struct Gateway {
    addr: SocketAddr,
    endpoints: Arc<Mutex<Vec<SocketAddr>>>,
    tasks: Vec<AbortHandle>,
}

struct Shared {
    service: String,
    endpoints: Arc<Mutex<Vec<SocketAddr>>>,
    next: AtomicUsize,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Gateway {
    /// Starts a gateway for the public Service `namespace/name` on `127.0.0.1:<free port>`, following its
    /// EndpointSlice (`discovery.k8s.io/v1` where served, else `v1beta1`) with `client`.
    pub async fn start(client: &Client, namespace: &str, name: &str) -> Gateway {
        let resource = discover_endpoint_slices(client).await.expect("discover the EndpointSlice API");
        let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let endpoints: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let following = endpoints.clone();
        let watch = tokio::spawn(async move {
            let mut events = watcher::watcher(slices, config).default_backoff().boxed();
            // Whether the current (re)list has listed the slice. While the API cannot be reached the last
            // endpoints are kept, as an ingress keeps its last configuration.
            let mut listed = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Apply(slice) | Event::InitApply(slice)) => {
                        listed = true;
                        *following.lock().unwrap() = slice_endpoints(&slice);
                    }
                    Ok(Event::Delete(_)) => following.lock().unwrap().clear(),
                    Ok(Event::Init) => listed = false,
                    // A relist without the slice: it was deleted while the watch was down.
                    Ok(Event::InitDone) if !listed => following.lock().unwrap().clear(),
                    Ok(Event::InitDone) => {}
                    Err(e) => eprintln!("gateway: watching the EndpointSlice (retrying): {e}"),
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the gateway");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            service: format!("{namespace}/{name}"),
            endpoints: endpoints.clone(),
            next: AtomicUsize::new(0),
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        });
        let serve = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| shared.clone().forward(request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Gateway { addr, endpoints, tasks: vec![watch.abort_handle(), serve.abort_handle()] }
    }

    /// The gateway's address (`http://ADDR/...`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoints it forwards to now, as the slice lists them.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.endpoints.lock().unwrap().clone()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.tasks.iter().for_each(AbortHandle::abort);
    }
}

/// The ready endpoints of a slice, each address with the slice's first port.
pub fn slice_endpoints(slice: &DynamicObject) -> Vec<SocketAddr> {
    let Some(port) = slice.data["ports"][0]["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
        return Vec::new();
    };
    slice.data["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["conditions"]["ready"].as_bool() != Some(false))
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str()?.parse().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Lists the addresses of the slice `namespace/name` now (sorted), for assertions.
pub async fn slice_now(client: &Client, namespace: &str, name: &str) -> Result<Vec<SocketAddr>, String> {
    let resource = discover_endpoint_slices(client).await.map_err(|e| e.to_string())?;
    let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let list = slices
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .map_err(|e| e.to_string())?;
    let mut out: Vec<_> = list.items.iter().flat_map(slice_endpoints).collect();
    out.sort();
    Ok(out)
}

impl Shared {
    async fn forward(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return Ok(answer(StatusCode::BAD_REQUEST, format!("gateway: reading the body: {e}"))),
        };
        let mut last = String::from("no endpoints");
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            let endpoints = self.endpoints.lock().unwrap().clone();
            if endpoints.is_empty() {
                return Ok(answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("gateway: {} has no endpoints", self.service),
                ));
            }
            let endpoint = endpoints[self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut outgoing =
                Request::builder().method(parts.method.clone()).uri(format!("http://{endpoint}{path}"));
            for (key, value) in &parts.headers {
                if !is_hop_by_hop(key.as_str()) && key != HEADER_SERVICE {
                    outgoing = outgoing.header(key, value);
                }
            }
            let outgoing = outgoing
                .header(HEADER_SERVICE, &self.service)
                .body(Full::new(body.clone()))
                .expect("a valid request");
            match self.http.request(outgoing).await {
                Ok(response) => return Ok(response.map(|b| b.boxed())),
                // Not sent: another endpoint may take it.
                Err(e) if e.is_connect() => last = format!("{endpoint}: {e}"),
                Err(e) => {
                    return Ok(answer(StatusCode::BAD_GATEWAY, format!("gateway: {endpoint}: {e:?}")));
                }
            }
        }
        Ok(answer(
            StatusCode::BAD_GATEWAY,
            format!("gateway: no endpoint of {} answered; last: {last}", self.service),
        ))
    }
}

fn answer(status: StatusCode, text: String) -> Response<Body> {
    let body = Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed();
    Response::builder().status(status).body(body).expect("a valid response")
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    )
}
