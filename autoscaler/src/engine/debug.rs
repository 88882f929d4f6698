//! `GET /debug/decisions?service=NAMESPACE/NAME`: the last decisions for one service, with their inputs and
//! reasons, as JSON. Served by the autoscaler in a cluster and by `ebb up`; `ebb status --service` reads it.

use ebb_config::ServiceId;
use http::StatusCode;
use serde_json::{Value, json};

use super::autoscaler::Autoscaler;

/// The answer to a decision-trace request with this query string: the decisions, oldest first, or an
/// error status with a JSON body saying what was wrong. A `service` without a namespace is looked up in
/// `default_namespace`; `limit=N` keeps the last N.
pub fn decisions(
    autoscaler: &Autoscaler,
    query: Option<&str>,
    default_namespace: &str,
) -> (StatusCode, Value) {
    let param = |name: &str| {
        query.unwrap_or_default().split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    let Some(service) = param("service").map(|s| s.replace("%2F", "/").replace("%2f", "/")) else {
        let error = "name the service: /debug/decisions?service=NAMESPACE/NAME";
        return (StatusCode::BAD_REQUEST, json!({"error": error}));
    };
    let limit = match param("limit").map(str::parse::<usize>) {
        None => usize::MAX,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": "limit must be a whole number", "service": service}),
            );
        }
    };
    let id = match service.split_once('/') {
        Some((namespace, name)) => ServiceId::new(namespace, name),
        None => ServiceId::new(default_namespace, service.as_str()),
    };
    match autoscaler.decisions(&id) {
        Some(decisions) => {
            let skip = decisions.len().saturating_sub(limit);
            (StatusCode::OK, json!({"service": id.to_string(), "decisions": &decisions[skip..]}))
        }
        None => {
            (StatusCode::NOT_FOUND, json!({"error": format!("no service {id}"), "service": id.to_string()}))
        }
    }
}
