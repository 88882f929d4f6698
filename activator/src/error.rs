//! The activator's errors: every data-plane error of a forwarded request ([`ProxyError`]), and the ones only an
//! activator meets: no such service, contradicting routing headers, too many waiting, a service that does not
//! start in time, cannot start, or was removed. One table classifies them ([`Classified::kind`]).

use ebb_http::error::{Classified, Kind, LogLevel, Origin, ProxyError};
use http::StatusCode;

/// Everything that can go wrong with a request at the activator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivatorError {
    /// Forwarding to a pod failed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
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

impl Classified for ActivatorError {
    fn kind(&self) -> Kind {
        let kind = |origin, status, reason, level| Kind { origin, status, reason, level };
        use LogLevel::{Debug, Info, Warn};
        use Origin::{Client, Internal, Upstream};
        match self {
            ActivatorError::Proxy(err) => err.kind(),
            ActivatorError::UnknownService(_) => {
                kind(Client, StatusCode::NOT_FOUND, "unknown_service", Debug)
            }
            ActivatorError::Misrouted(_) => kind(Client, StatusCode::BAD_REQUEST, "misrouted", Debug),
            ActivatorError::QueueFull => kind(Internal, StatusCode::SERVICE_UNAVAILABLE, "queue_full", Debug),
            ActivatorError::ActivationTimeout(_) => {
                kind(Upstream, StatusCode::SERVICE_UNAVAILABLE, "activation_timeout", Info)
            }
            ActivatorError::ServiceBlocked(_) => {
                kind(Upstream, StatusCode::SERVICE_UNAVAILABLE, "service_blocked", Warn)
            }
            ActivatorError::ServiceRemoved => {
                kind(Internal, StatusCode::SERVICE_UNAVAILABLE, "service_removed", Info)
            }
        }
    }

    fn timeout(&self) -> Option<ebb_http::timeouts::TimeoutKind> {
        match self {
            ActivatorError::Proxy(err) => err.timeout(),
            _ => None,
        }
    }
}

impl ActivatorError {
    /// One error of every kind, in the order metric series list them: the data plane's, then the activator's.
    pub fn every_kind() -> Vec<ActivatorError> {
        let own = [
            ActivatorError::UnknownService(String::new()),
            ActivatorError::Misrouted(String::new()),
            ActivatorError::QueueFull,
            ActivatorError::ActivationTimeout(String::new()),
            ActivatorError::ServiceBlocked(String::new()),
            ActivatorError::ServiceRemoved,
        ];
        ProxyError::every_kind().into_iter().map(ActivatorError::Proxy).chain(own).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_consistent_class_and_its_own_reason() {
        let all = ActivatorError::every_kind();
        let mut reasons: Vec<&str> = all.iter().map(Classified::reason).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len(), "a reason is used twice");
        for err in &all {
            let client = err.origin() == Origin::Client;
            assert_eq!(err.status().is_client_error(), client, "{err:?}");
        }
    }
}
