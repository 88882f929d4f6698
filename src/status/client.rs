//! Where `ebb status` reads a server's `/status`, `/debug/decisions` and `/metrics`: a URL (`ebb up`'s
//! metrics port, or an autoscaler's, over `http://` or `https://`), or an autoscaler in a cluster through the
//! API server's service proxy (`GET /api/v1/namespaces/NS/services/ebb-autoscaler:metrics/proxy/PATH`), so
//! no port-forward is needed and RBAC decides who may read it (`services/proxy` on that one Service).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The autoscaler's Service (manifests/autoscaler.yaml) and the name of its metrics port, as the service proxy
/// names them: `ebb-autoscaler:metrics`.
pub const AUTOSCALER_SERVICE: &str = "ebb-autoscaler";
/// The port's name on that Service.
pub const AUTOSCALER_PORT: &str = "metrics";

/// A server `ebb status` reads.
#[derive(Clone)]
pub enum Endpoint {
    /// `http://HOST:PORT` or `https://HOST:PORT[/PREFIX]`.
    Url {
        /// The URL.
        url: String,
        /// For `https://`: trust only the CA certificates in this PEM file instead of the system's (as
        /// kubectl's `--certificate-authority`).
        certificate_authority: Option<PathBuf>,
    },
    /// The autoscaler's Service in `namespace`, through the API server `client` talks to.
    ServiceProxy {
        /// A client of the cluster.
        client: kube::Client,
        /// The autoscaler's namespace.
        namespace: String,
    },
}

impl Endpoint {
    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Url { url, .. } => url.clone(),
            Self::ServiceProxy { namespace, .. } => {
                format!("service {namespace}/{AUTOSCALER_SERVICE}:{AUTOSCALER_PORT} (through the API server)")
            }
        }
    }

    /// `GET path` (with its query): the status and the body.
    pub async fn get(&self, path: &str) -> Result<(u16, Bytes), String> {
        let request = tokio::time::timeout(Duration::from_secs(10), async {
            match self {
                Self::Url { url, certificate_authority } => {
                    get_url(url, certificate_authority.as_deref(), path).await
                }
                Self::ServiceProxy { client, namespace } => proxy_get(client, namespace, path).await,
            }
        });
        request.await.map_err(|_| "timed out after 10 s".to_owned())?
    }
}

/// The proxy path of `path` on the autoscaler's Service in `namespace`.
pub fn proxy_path(namespace: &str, path: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/services/{AUTOSCALER_SERVICE}:{AUTOSCALER_PORT}/proxy{path}")
}

async fn proxy_get(client: &kube::Client, namespace: &str, path: &str) -> Result<(u16, Bytes), String> {
    let request = http::Request::get(proxy_path(namespace, path))
        .body(kube::client::Body::from(Vec::new()))
        .map_err(|e| e.to_string())?;
    let response = client.send(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// `url` joined with `path`: `https://host/prefix` and `/status` give `https://host/prefix/status`.
pub fn join(url: &str, path: &str) -> Result<http::Uri, String> {
    let full = format!("{}{path}", url.trim_end_matches('/'));
    let uri: http::Uri = full.parse().map_err(|e| format!("{url}: not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(format!("{url}: not an http:// or https:// URL")),
    }
}

async fn get_url(
    url: &str,
    certificate_authority: Option<&Path>,
    path: &str,
) -> Result<(u16, Bytes), String> {
    let uri = join(url, path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let connector = match certificate_authority {
        // The system's trusted roots, as curl and kubectl use them.
        None => hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| format!("cannot load the system's trusted certificates: {e}"))?,
        Some(file) => {
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_trusting(file, provider)?)
        }
    };
    let connector = connector.https_or_http().enable_http1().build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let response = client.get(uri).await.map_err(|e| error_chain(&e))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// A TLS client configuration that trusts the CA certificates in the PEM `file`, and nothing else.
fn tls_trusting(file: &Path, provider: Arc<CryptoProvider>) -> Result<rustls::ClientConfig, String> {
    let unreadable = |e: &dyn std::fmt::Display| format!("--certificate-authority {}: {e}", file.display());
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(file).map_err(|e| unreadable(&e))? {
        roots.add(certificate.map_err(|e| unreadable(&e))?).map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in it"));
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An error with its causes (hyper-util's own message is only "client error (Connect)").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_scheme_host_and_prefix() {
        assert_eq!(
            join("https://ebb.example.com/", "/status").unwrap().to_string(),
            "https://ebb.example.com/status"
        );
        assert_eq!(
            join("http://127.0.0.1:9090/ebb", "/debug/decisions?service=a%2Fb").unwrap().to_string(),
            "http://127.0.0.1:9090/ebb/debug/decisions?service=a%2Fb"
        );
        assert!(join("127.0.0.1:9090", "/status").is_err());
        assert!(join("ftp://host", "/status").is_err());
        assert_eq!(
            proxy_path("ebb-system", "/debug/decisions?service=models%2Fchat"),
            "/api/v1/namespaces/ebb-system/services/ebb-autoscaler:metrics/proxy/debug/decisions?service=models%2Fchat"
        );
    }
}
