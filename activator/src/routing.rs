//! Which service a request is for (docs/architecture.md, "The request path" and "Trust").
//!
//! The service comes from `Ebb-Service: NAMESPACE/NAME` (set by a gateway route), else from the Host (or, for
//! HTTP/2, which carries it as `:authority` in the URI instead, the URI's authority) with its port and a fully
//! qualified name's trailing dot stripped: `NAME.NAMESPACE`, `NAME.NAMESPACE.svc`, `NAME.NAMESPACE.svc.cluster.local`, a host listed in
//! the service's `ebb.dev/hosts`, or in local mode a bare `NAME` in namespace `default`.
//!
//! Trust: a gateway route that names a service by header *sets* `Ebb-Service`, overwriting whatever the client
//! sent. A route by Host cannot stop a client from adding the header, so when the Host names a service and the
//! header names another, the request is refused: a client reaches only the service its route named.

use std::collections::HashMap;

use ebb_config::ServiceId;
use ebb_config::names::HEADER_SERVICE;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Uri};

/// Why no service could be chosen; each names what was looked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Neither the header nor the Host names a known service.
    #[error("no service {0}")]
    Unknown(String),
    /// The `Ebb-Service` header is not `NAMESPACE/NAME`.
    #[error("the Ebb-Service header {0:?} is not NAMESPACE/NAME")]
    BadHeader(String),
    /// The request carries a routing header twice (a Host, or an `Ebb-Service`): which one a gateway read cannot
    /// be known, so neither is used (RFC 9112 section 3.2: a request with two Hosts is answered 400).
    #[error("the request has more than one {0} header")]
    Duplicate(&'static str),
    /// The header names one service and the Host another.
    #[error("the Ebb-Service header names {header} but the Host routes to {host}")]
    Conflict {
        /// The service the header named.
        header: ServiceId,
        /// The service the Host named.
        host: ServiceId,
    },
}

/// The known services and every host name that routes to one. Rebuilt when services change; cheap to read.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    hosts: HashMap<String, ServiceId>,
    services: HashMap<ServiceId, ()>,
    local_mode: bool,
}

impl RouteTable {
    /// An empty table. In local mode a bare `NAME` Host means `default/NAME`.
    pub fn new(local_mode: bool) -> Self {
        Self { local_mode, ..Self::default() }
    }

    /// Adds a service and its extra host names (`ebb.dev/hosts`). A host already taken by another service stays
    /// with the first; the conflicting service is returned so the caller can report it.
    pub fn insert(&mut self, service: ServiceId, extra_hosts: &[String]) -> Vec<(String, ServiceId)> {
        let (ns, name) = (&service.namespace, &service.name);
        let mut names = vec![
            format!("{name}.{ns}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}.svc.cluster.local"),
        ];
        if self.local_mode && &**ns == "default" {
            names.push(name.to_string());
        }
        names.extend(extra_hosts.iter().cloned());
        let mut conflicts = Vec::new();
        for host in names {
            match self.hosts.get(&host) {
                Some(owner) if *owner != service => conflicts.push((host, owner.clone())),
                _ => {
                    self.hosts.insert(host, service.clone());
                }
            }
        }
        self.services.insert(service, ());
        conflicts
    }

    /// Whether the service is known.
    pub fn contains(&self, service: &ServiceId) -> bool {
        self.services.contains_key(service)
    }

    /// The service that a request names by its headers and, lacking a Host, its URI's authority.
    pub fn route(&self, uri: &Uri, headers: &HeaderMap) -> Result<ServiceId, RouteError> {
        let fields = RouteFields {
            hosts: headers.get_all(HOST).iter().count(),
            host: headers.get(HOST).map(HeaderValue::as_bytes),
            authority: uri.authority().map(|a| a.host()),
            services: headers.get_all(HEADER_SERVICE).iter().count(),
            service: headers.get(HEADER_SERVICE).map(HeaderValue::as_bytes),
        };
        self.route_fields(&fields)
    }

    /// The service that a request names by the fields it routes by, however they were parsed.
    pub fn route_fields(&self, fields: &RouteFields<'_>) -> Result<ServiceId, RouteError> {
        if fields.hosts > 1 {
            return Err(RouteError::Duplicate("Host"));
        }
        if fields.services > 1 {
            return Err(RouteError::Duplicate("Ebb-Service"));
        }
        let host = request_host(fields);
        let by_host = host.as_deref().and_then(|h| self.hosts.get(h));
        let Some(header) = fields.service else {
            return by_host.cloned().ok_or_else(|| {
                RouteError::Unknown(format!("for Host {:?}", shown(&host.unwrap_or_default())))
            });
        };
        let text = visible(header).unwrap_or_default();
        let named = ServiceId::parse(text).ok_or_else(|| RouteError::BadHeader(shown(text)))?;
        match by_host {
            Some(host) if *host != named => Err(RouteError::Conflict { header: named, host: host.clone() }),
            _ if self.contains(&named) => Ok(named),
            _ => Err(RouteError::Unknown(format!("{named} (from the Ebb-Service header)"))),
        }
    }
}

/// The fields a request is routed by.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteFields<'a> {
    /// How many Host fields it has.
    pub hosts: usize,
    /// The first Host value.
    pub host: Option<&'a [u8]>,
    /// The host of its URI's authority (HTTP/2's `:authority`).
    pub authority: Option<&'a str>,
    /// How many `Ebb-Service` fields it has.
    pub services: usize,
    /// The first `Ebb-Service` value.
    pub service: Option<&'a [u8]>,
}

/// A field value as text, when it is visible ASCII (as `HeaderValue::to_str` reads it).
fn visible(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Longest client text an error message repeats: a DNS name is at most 253 characters.
const SHOWN_MAX: usize = 253;

/// `text` as an error message may repeat it: at most [`SHOWN_MAX`] characters, marked when cut.
fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_MAX) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}

/// The host a request is addressed to, lowercased, without port or trailing dot. HTTP/1.1 clients send Host;
/// HTTP/2 clients send `:authority`, which hyper puts in the URI, and usually no Host.
fn request_host(fields: &RouteFields<'_>) -> Option<String> {
    let host = match fields.host {
        Some(host) => visible(host)?,
        None => fields.authority?,
    };
    let host = strip_port(host);
    // `name.ns.svc.cluster.local.` is the same name, fully qualified (DNS root).
    let host = host.strip_suffix('.').unwrap_or(host);
    Some(host.to_ascii_lowercase())
}

/// `host:port` or `[v6]:port` without the port.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(local: bool) -> RouteTable {
        let mut table = RouteTable::new(local);
        table.insert(ServiceId::new("default", "demo"), &[]);
        table.insert(ServiceId::new("models", "chat"), &["chat.example.com".into()]);
        table
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
    }

    fn route(table: &RouteTable, pairs: &[(&str, &str)]) -> Result<String, RouteError> {
        table.route(&Uri::from_static("/"), &headers(pairs)).map(|s| s.to_string())
    }

    /// Routes a request whose URI is `uri` (as hyper gives HTTP/2's `:authority`).
    fn route_uri(table: &RouteTable, uri: &str, pairs: &[(&str, &str)]) -> Result<String, RouteError> {
        table.route(&uri.parse().unwrap(), &headers(pairs)).map(|s| s.to_string())
    }

    #[test]
    fn without_a_host_header_the_uri_authority_routes() {
        let t = table(false);
        for uri in
            ["http://chat.models:8012/v1/models", "http://Chat.Example.com/", "http://user@chat.models/"]
        {
            assert_eq!(route_uri(&t, uri, &[]), Ok("models/chat".into()), "{uri}");
        }
        // A Host header, when sent, is what the route used.
        assert_eq!(
            route_uri(&t, "http://chat.models/", &[("host", "demo.default")]),
            Ok("default/demo".into())
        );
        assert_eq!(
            route_uri(&t, "http://nothing.models/", &[]),
            Err(RouteError::Unknown("for Host \"nothing.models\"".into()))
        );
        // The authority counts against a contradicting header as a Host would.
        let conflict = route_uri(&t, "http://chat.models/", &[("ebb-service", "default/demo")]).unwrap_err();
        assert!(matches!(conflict, RouteError::Conflict { .. }), "{conflict}");
    }

    #[test]
    fn a_fully_qualified_host_with_a_trailing_dot_routes() {
        let t = table(false);
        for host in
            ["chat.models.svc.cluster.local.", "chat.models.svc.cluster.local.:8012", "chat.example.com."]
        {
            assert_eq!(route(&t, &[("host", host)]), Ok("models/chat".into()), "{host}");
        }
        assert_eq!(route_uri(&t, "http://chat.models.svc.cluster.local./", &[]), Ok("models/chat".into()));
        // One dot only: the root, not an empty label.
        assert!(route(&t, &[("host", "chat.models..")]).is_err());
    }

    #[test]
    fn hosts_in_every_cluster_form_with_ports_and_case() {
        let t = table(false);
        for host in
            ["chat.models", "chat.models.svc", "chat.models.svc.cluster.local:80", "Chat.Example.com:8080"]
        {
            assert_eq!(route(&t, &[("host", host)]), Ok("models/chat".into()), "{host}");
        }
        assert_eq!(route(&t, &[("host", "demo")]), Err(RouteError::Unknown("for Host \"demo\"".into())));
        assert_eq!(route(&t, &[]), Err(RouteError::Unknown("for Host \"\"".into())));
    }

    #[test]
    fn local_mode_routes_a_bare_name_in_default() {
        let t = table(true);
        assert_eq!(route(&t, &[("host", "demo:8080")]), Ok("default/demo".into()));
        assert_eq!(
            route(&t, &[("host", "chat")]).unwrap_err(),
            RouteError::Unknown("for Host \"chat\"".into())
        );
    }

    #[test]
    fn the_header_names_the_service_unless_the_host_names_another() {
        let t = table(false);
        assert_eq!(
            route(&t, &[("ebb-service", "models/chat"), ("host", "gateway.example.org")]),
            Ok("models/chat".into())
        );
        assert_eq!(
            route(&t, &[("ebb-service", "models/chat"), ("host", "chat.example.com")]),
            Ok("models/chat".into())
        );
        let conflict =
            route(&t, &[("ebb-service", "default/demo"), ("host", "chat.example.com")]).unwrap_err();
        assert_eq!(
            conflict.to_string(),
            "the Ebb-Service header names default/demo but the Host routes to models/chat"
        );
        assert_eq!(
            route(&t, &[("ebb-service", "models/none")]).unwrap_err().to_string(),
            "no service models/none (from the Ebb-Service header)"
        );
        assert_eq!(route(&t, &[("ebb-service", "chat")]), Err(RouteError::BadHeader("chat".into())));
        assert_eq!(route(&t, &[("ebb-service", "a/b/c")]), Err(RouteError::BadHeader("a/b/c".into())));
    }

    #[test]
    fn a_host_claimed_twice_stays_with_the_first_service() {
        let mut t = table(false);
        let conflicts = t.insert(ServiceId::new("other", "svc"), &["chat.example.com".into()]);
        assert_eq!(conflicts, [("chat.example.com".to_string(), ServiceId::new("models", "chat"))]);
        assert_eq!(route(&t, &[("host", "chat.example.com")]), Ok("models/chat".into()));
    }

    #[test]
    fn a_routing_header_sent_twice_is_refused() {
        let t = table(false);
        let mut twice = headers(&[("host", "chat.models")]);
        twice.append("host", "demo.default".parse().unwrap());
        assert_eq!(t.route(&Uri::from_static("/"), &twice), Err(RouteError::Duplicate("Host")));
        let mut twice = headers(&[("ebb-service", "models/chat")]);
        twice.append("ebb-service", "default/demo".parse().unwrap());
        assert_eq!(t.route(&Uri::from_static("/"), &twice), Err(RouteError::Duplicate("Ebb-Service")));
    }

    #[test]
    fn client_text_repeated_in_errors_is_bounded() {
        let t = table(false);
        let long = "a".repeat(64 * 1024);
        let err = route(&t, &[("host", &long)]).unwrap_err().to_string();
        assert!(err.len() < 400, "{} bytes", err.len());
        assert!(err.contains("... (65536 bytes)"), "{err}");
        let err = route(&t, &[("ebb-service", &long)]).unwrap_err().to_string();
        assert!(err.len() < 400, "{} bytes", err.len());
    }

    #[test]
    fn ports_are_stripped_only_when_numeric() {
        assert_eq!(strip_port("a.b:8080"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("a:b"), "a:b");
    }
}
