//! Reading a queue-proxy's latest 1-second stat: `GET :9090/stats`, bounded by a timeout so that one stuck pod
//! never delays a service's second.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ebb_config::names::STATS_PATH;
use ebb_config::wire::{MAX_STAT_LEN, PodStat};
use ebb_process::sync::Locked;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Each connection's read buffer: a stat's response head and body (at most [`MAX_STAT_LEN`]) with room.
const READ_BUFFER: usize = 2048;
/// An idle connection unused this long is closed (its pod left the sample, or the service is gone).
const IDLE: Duration = Duration::from_secs(30);

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

/// A pod's connection between scrapes, and when it was last used.
type Idle = (SendRequest<Empty<Bytes>>, Instant);

/// One kept-alive HTTP/1.1 connection per pod, reused from second to second.
///
/// Not hyper-util's pooled client: at 10,000 services (30,000 pods a second) its pool's bookkeeping per
/// request cost more than the request itself; a scrape only ever needs its own pod's one connection.
#[derive(Debug, Clone)]
pub struct Scraper {
    idle: Arc<Mutex<HashMap<SocketAddr, Idle>>>,
    timeout: Duration,
}

impl Scraper {
    /// A scraper whose every request is bounded by `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { idle: Arc::default(), timeout }
    }

    /// The stat of the queue-proxy whose stats port is `addr`.
    pub async fn scrape(&self, addr: SocketAddr) -> Result<PodStat, ScrapeError> {
        match tokio::time::timeout(self.timeout, self.fetch(addr)).await {
            Ok(result) => result,
            Err(_) => Err(ScrapeError::Timeout(self.timeout)),
        }
    }

    async fn fetch(&self, addr: SocketAddr) -> Result<PodStat, ScrapeError> {
        let kept = self.idle.locked().remove(&addr).map(|(sender, _)| sender);
        let mut sender = match kept {
            Some(sender) if sender.is_ready() => sender,
            _ => connect(addr).await?,
        };
        let request = http::Request::get(STATS_PATH)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::new())
            .map_err(|e| ScrapeError::Request(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| ScrapeError::Request(e.to_string()))?;
        if !response.status().is_success() {
            return Err(ScrapeError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_STAT_LEN)
            .collect()
            .await
            .map_err(|e| ScrapeError::Decode(e.to_string()))?
            .to_bytes();
        let stat = PodStat::decode(&body).map_err(|e| ScrapeError::Decode(e.to_string()))?;
        let now = Instant::now();
        let mut idle = self.idle.locked();
        idle.insert(addr, (sender, now));
        Ok(stat)
    }

    /// Closes the connections unused for a while (their pods are gone or no longer sampled).
    pub fn close_idle(&self) {
        self.idle.locked().retain(|_, (sender, used)| used.elapsed() < IDLE && !sender.is_closed());
    }
}

/// A new connection to `addr`, its driver on a task of its own.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, ScrapeError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| ScrapeError::Request(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    // A stat and its head fit in 2 KiB; hyper's default 8 KiB read buffer, kept for each of 30,000 pods,
    // was most of the autoscaler's memory.
    let (sender, connection) = http1::Builder::new()
        .read_buf_exact_size(Some(READ_BUFFER))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ScrapeError::Request(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
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
