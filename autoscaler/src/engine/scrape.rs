//! Reading a queue-proxy's latest 1-second stat: `GET :9090/stats`, bounded by a timeout so that one stuck pod
//! never delays a service's second.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ebb_config::names::STATS_PATH;
use ebb_config::wire::{MAX_STAT_LEN, PodStat};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a scrape gave no stat.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection or the request failed.
    #[error("request failed: {0}")]
    Request(String),
    /// The queue-proxy answered with an error status.
    #[error("status {0}")]
    Status(u16),
    /// The body is not a stat.
    #[error("bad stat: {0}")]
    Decode(String),
}

/// A pooled HTTP client for stats.
#[derive(Debug, Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Scraper {
    /// A scraper whose every request is bounded by `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Self { client, timeout }
    }

    /// The stat of the queue-proxy whose stats port is `addr`.
    pub async fn scrape(&self, addr: SocketAddr) -> Result<PodStat, ScrapeError> {
        let fetch = async {
            let uri: http::Uri = format!("http://{addr}{STATS_PATH}")
                .parse()
                .map_err(|e: http::uri::InvalidUri| ScrapeError::Request(e.to_string()))?;
            let response = self.client.get(uri).await.map_err(|e| ScrapeError::Request(e.to_string()))?;
            if !response.status().is_success() {
                return Err(ScrapeError::Status(response.status().as_u16()));
            }
            let body = Limited::new(response.into_body(), MAX_STAT_LEN)
                .collect()
                .await
                .map_err(|e| ScrapeError::Decode(e.to_string()))?
                .to_bytes();
            PodStat::decode(&body).map_err(|e| ScrapeError::Decode(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, fetch).await {
            Ok(result) => result,
            Err(_) => Err(ScrapeError::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-connection-at-a-time server that answers every request with `response` (none: never answers).
    async fn server(response: Option<Vec<u8>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request).await;
                    match response {
                        Some(bytes) => drop(stream.write_all(&bytes).await),
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        addr
    }

    fn http(status: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn a_stalled_pod_times_out_and_the_others_answer() {
        let stat = PodStat {
            pod: "p".into(),
            average_concurrency: 2.5,
            average_proxied_concurrency: 0.0,
            request_count: 3.0,
            proxied_request_count: 0.0,
            process_uptime_secs: 1.0,
            timestamp_ms: 7,
            average_queued: Some(0.0),
        };
        let scraper = Scraper::new(Duration::from_millis(200));
        let good = server(Some(http("200 OK", &stat.encode().unwrap()))).await;
        let stalled = server(None).await;
        let failing = server(Some(http("503 Service Unavailable", b"no"))).await;
        let huge = server(Some(http("200 OK", &vec![1u8; MAX_STAT_LEN + 1]))).await;

        let (good, stalled, failing, huge) = tokio::join!(
            scraper.scrape(good),
            scraper.scrape(stalled),
            scraper.scrape(failing),
            scraper.scrape(huge)
        );
        assert_eq!(good.unwrap(), stat);
        assert!(matches!(stalled, Err(ScrapeError::Timeout(_))), "{stalled:?}");
        assert!(matches!(failing, Err(ScrapeError::Status(503))), "{failing:?}");
        assert!(matches!(huge, Err(ScrapeError::Decode(_))), "{huge:?}");
    }
}
