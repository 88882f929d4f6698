//! `ebb up`'s metrics port: `/metrics` (the autoscaler's and the activator's metrics), `/status` (JSON for
//! `ebb status`), `/debug/decisions?service=NAME` (the last decisions, `debug::decisions`), `/service-discovery` (Prometheus
//! `http_sd_configs`: the live pods' queue-proxy metrics endpoints) and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use ebb_activator::handler::Activator;
use ebb_autoscaler::engine::{Autoscaler, debug};
use ebb_config::ServiceId;
use ebb_http::admin::{self, Reply};
use ebb_process::exposition;
use hyper::body::Incoming;
use hyper::header::ACCEPT;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::pods::{NAMESPACE, PodManager};

/// What the endpoints read.
pub struct State {
    /// The autoscaler.
    pub autoscaler: Arc<Autoscaler>,
    /// The gateway.
    pub activator: Arc<Activator>,
    /// The pods.
    pub pods: Arc<PodManager>,
    /// The gateway's address, for `/status`.
    pub gateway: SocketAddr,
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    admin::serve(listener, move |req| std::future::ready(handle(&state, &req))).await
}

fn handle(state: &State, req: &Request<Incoming>) -> Reply {
    if req.method() != Method::GET {
        return admin::text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let (content_type, page) = exposition::negotiate(accept, metrics_text(state));
            admin::reply(StatusCode::OK, content_type, page)
        }
        "/status" => admin::json(StatusCode::OK, &status(state)),
        "/service-discovery" => admin::json(StatusCode::OK, &service_discovery(state)),
        "/debug/decisions" => {
            let (status, body) = debug::decisions(&state.autoscaler, req.uri().query(), NAMESPACE);
            admin::json(status, &body)
        }
        "/healthz" => admin::text(StatusCode::OK, "ok\n"),
        _ => admin::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Both components' metrics as one OpenMetrics document (one `# EOF`).
fn metrics_text(state: &State) -> String {
    let mut out = String::new();
    for part in [state.autoscaler.encode_metrics(), state.activator.encode_metrics()] {
        out.push_str(part.trim_end().strip_suffix("# EOF").unwrap_or(&part));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Every service: the autoscaler's view, the requests in flight and queued, and its pods' restarts.
fn status(state: &State) -> Value {
    let counts = state.pods.counts();
    let services: Vec<Value> = state
        .autoscaler
        .status()
        .into_iter()
        .map(|s| {
            let service = state.activator.registry.get(&ServiceId::new(&s.namespace, &s.name));
            let (held, queued) =
                service.map_or((0, 0), |svc| (svc.breaker.in_flight(), svc.breaker.queued()));
            // Under the rps metric the autoscaler observes rates, not requests in flight.
            let concurrency = (state.pods.metric(&s.name) == Some(ebb_config::Metric::Concurrency))
                .then_some(s.observed_panic)
                .flatten();
            let in_flight = in_flight(s.mode, held, concurrency);
            let pods = counts.get(&s.name).cloned().unwrap_or_default();
            let mut value = json!(s);
            value["in_flight"] = json!(in_flight);
            value["queued"] = json!(queued);
            value["terminating"] = json!(pods.terminating);
            value["restarts"] = json!(pods.restarts);
            value["blocked"] = json!(pods.blocked);
            value["pod_addresses"] = pods
                .pods
                .iter()
                .map(|(name, data, terminating)| {
                    json!({"name": name, "address": data.to_string(), "terminating": terminating})
                })
                .collect();
            // A service of roles: every pod, so that its instances can be seen whole or not.
            if let Some(role_pods) = &pods.role_pods {
                value["role_pods"] = json!(role_pods);
            }
            value
        })
        .collect();
    json!({"gateway": state.gateway.to_string(), "services": services})
}

/// Requests in flight. In proxy mode the activator holds every request and counts them exactly; in serve mode
/// it passes them through uncounted, so the count is the load the queue-proxies report to the autoscaler (its
/// panic-window average, the most recent it has), or the activator's when more of its requests are still going.
fn in_flight(mode: &str, activator: usize, observed_concurrency: Option<f64>) -> usize {
    if mode != "serve" {
        return activator;
    }
    let measured =
        observed_concurrency.filter(|c| c.is_finite() && *c > 0.0).map_or(0, |c| c.round() as usize);
    measured.max(activator)
}

fn service_discovery(state: &State) -> Value {
    let groups: Vec<Value> = state
        .pods
        .metrics_targets()
        .into_iter()
        .map(|t| {
            json!({
                "targets": [t.addr.to_string()],
                "labels": {"namespace": NAMESPACE, "service": t.service, "pod": t.pod},
            })
        })
        .collect();
    Value::Array(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_comes_from_the_activator_in_proxy_mode_and_the_pods_in_serve_mode() {
        assert_eq!(in_flight("proxy", 3, Some(12.0)), 3);
        assert_eq!(in_flight("serve", 0, Some(11.6)), 12);
        assert_eq!(in_flight("serve", 2, None), 2);
        assert_eq!(in_flight("serve", 5, Some(1.0)), 5);
        assert_eq!(in_flight("serve", 0, Some(f64::NAN)), 0);
    }
}
