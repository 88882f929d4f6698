//! What names a service and where its requests go: the identifiers every component shares.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::value::is_dns_name;

/// A service: `NAMESPACE/NAME`, the namespace and name of its Deployment (in local mode, namespace `default`).
/// Cloning is cheap: both parts are shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    /// The namespace.
    pub namespace: Arc<str>,
    /// The Deployment's name.
    pub name: Arc<str>,
}

impl ServiceId {
    /// An id from its parts.
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        Self { namespace: namespace.as_ref().into(), name: name.as_ref().into() }
    }

    /// Parses `NAMESPACE/NAME`, each part a DNS name.
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, name) = text.split_once('/')?;
        let valid = |part: &str| is_dns_name(part) && !part.contains('/');
        (valid(namespace) && valid(name)).then(|| Self::new(namespace, name))
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a service's requests go, as the autoscaler decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Through the activator, which counts them, throttles them to its capacity share and queues them at zero.
    #[default]
    Proxy,
    /// Straight to the ready pods.
    Serve,
}

impl Mode {
    /// `proxy` or `serve`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Serve => "serve",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "proxy" => Ok(Self::Proxy),
            "serve" => Ok(Self::Serve),
            _ => Err(format!("{text:?} is not a mode; use proxy or serve")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print_as_namespace_slash_name() {
        let id = ServiceId::parse("models/chat").unwrap();
        assert_eq!((&*id.namespace, &*id.name), ("models", "chat"));
        assert_eq!(id.to_string(), "models/chat");
        for bad in ["chat", "a/b/c", "/chat", "Models/chat", ""] {
            assert_eq!(ServiceId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn modes_round_trip_through_text() {
        for mode in [Mode::Proxy, Mode::Serve] {
            assert_eq!(mode.as_str().parse::<Mode>(), Ok(mode));
        }
        assert!("warm".parse::<Mode>().is_err());
    }
}
