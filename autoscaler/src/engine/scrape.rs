//! Reading a queue-proxy's latest 1-second stat: `GET :9090/stats`, bounded by a timeout so that one stuck pod
//! never delays a service's second.
//!
//! The client is a few lines of HTTP/1.1 over a kept-alive socket rather than hyper's: between scrapes a pod's
//! connection is only its socket (a few hundred bytes), where hyper's connection task and buffers held about
//! 28 KiB for each of the 30,000 pods of a 10,000-service cluster, most of the autoscaler's memory. The head is
//! parsed by the fast path's response parser (`ebb_http::h1::head`), so the framing rules are the proxy's.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebb_config::names::STATS_PATH;
use ebb_config::wire::{MAX_STAT_LEN, PodStat};
use ebb_http::h1::chunked;
use ebb_http::h1::head::{self, Framing, ParsedResponse, ResponseHead};
use ebb_process::sync::Locked;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room for a stat's response: its head (a queue-proxy's is about 100 bytes) and body (at most
/// [`MAX_STAT_LEN`]).
const READ_BUFFER: usize = 2048;
/// An idle connection unused this long is closed (its pod left the sample, or the service is gone).
const IDLE: Duration = Duration::from_secs(30);

/// Why a scrape gave no stat.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection or the request failed, or the answer was not HTTP/1.1 a stat can travel in.
    #[error("request failed: {0}")]
    Request(String),
    /// The queue-proxy answered with an error status.
    #[error("status {0}")]
    Status(u16),
    /// The body is not a stat.
    #[error("bad stat: {0}")]
    Decode(String),
}

/// One kept-alive HTTP/1.1 connection per pod, reused from second to second, as long as the process may hold
/// that many: beyond [`Scraper::keeping_at_most`] connections a pod is scraped on a new connection that its
/// queue-proxy closes after answering, so an autoscaler short of descriptors costs more CPU, not its stats or
/// the descriptors its ingest and API connections need.
///
/// Not hyper-util's pooled client: at 10,000 services (30,000 pods a second) its pool's bookkeeping per
/// request cost more than the request itself, and a scrape only ever needs its own pod's one connection.
#[derive(Debug, Clone)]
pub struct Scraper {
    idle: Arc<Mutex<HashMap<SocketAddr, (TcpStream, Instant)>>>,
    /// Connections kept, idle or carrying a request.
    kept: Arc<AtomicUsize>,
    keep: usize,
    /// Whether a pod has been scraped on a connection of its own (logged once).
    over_budget: Arc<AtomicBool>,
    timeout: Duration,
}

impl Scraper {
    /// A scraper whose every request is bounded by `timeout`, keeping a connection to every pod.
    pub fn new(timeout: Duration) -> Self {
        Self {
            idle: Arc::default(),
            kept: Arc::default(),
            keep: usize::MAX,
            over_budget: Arc::default(),
            timeout,
        }
    }

    /// Keeps at most `connections` connections open between scrapes.
    pub fn keeping_at_most(mut self, connections: usize) -> Self {
        self.keep = connections;
        self
    }

    /// The stat of the queue-proxy whose stats port is `addr`.
    pub async fn scrape(&self, addr: SocketAddr) -> Result<PodStat, ScrapeError> {
        match tokio::time::timeout(self.timeout, self.fetch(addr)).await {
            Ok(result) => result,
            Err(_) => Err(ScrapeError::Timeout(self.timeout)),
        }
    }

    async fn fetch(&self, addr: SocketAddr) -> Result<PodStat, ScrapeError> {
        let kept = self.idle.locked().remove(&addr).map(|(stream, _)| stream);
        // The place is given back when the connection is not put back, whatever ends this (a timeout too).
        let place = match kept {
            Some(_) => Some(Place(&self.kept)),
            None => self.take_place(),
        };
        let Some(place) = place else {
            return exchange(connect(addr).await?, addr, Connection::Close)
                .await
                .map(|(stat, _)| stat)
                .map_err(Into::into);
        };
        let (stat, stream) = match kept.filter(still_open) {
            Some(stream) => match exchange(stream, addr, Connection::Keep).await {
                // The pod closed the kept connection while it was idle (it restarted, or its own idle timeout
                // passed) before a byte of the answer came: once more on a new connection, as any HTTP client
                // does with an idempotent GET.
                Err(Exchange::Closed) => exchange(connect(addr).await?, addr, Connection::Keep).await?,
                other => other?,
            },
            None => exchange(connect(addr).await?, addr, Connection::Keep).await?,
        };
        if let Some(stream) = stream {
            let replaced = self.idle.locked().insert(addr, (stream, Instant::now()));
            place.keep();
            // Two scrapes of one pod at once (not the collection's way): the other's place is given back.
            drop(replaced.map(|_| Place(&self.kept)));
        }
        Ok(stat)
    }

    /// A place for one more kept connection, if there is room.
    fn take_place(&self) -> Option<Place<'_>> {
        let taken =
            self.kept.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.keep).then_some(n + 1));
        if taken.is_err() && !self.over_budget.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                kept = self.keep,
                "more pods than connections this process may keep: the others are scraped on a new connection \
                 each time; raise the open-files limit"
            );
        }
        taken.ok().map(|_| Place(&self.kept))
    }

    /// The most connections kept between scrapes.
    pub fn keep_limit(&self) -> usize {
        self.keep
    }

    /// Connections kept between scrapes now, idle or carrying a request.
    pub fn kept(&self) -> usize {
        self.kept.load(Ordering::Relaxed)
    }

    /// Closes the connections unused for a while (their pods are gone or no longer sampled).
    pub fn close_idle(&self) {
        let mut idle = self.idle.locked();
        let before = idle.len();
        idle.retain(|_, (stream, used)| used.elapsed() < IDLE && still_open(stream));
        self.kept.fetch_sub(before - idle.len(), Ordering::AcqRel);
    }
}

/// One of the scraper's places for a kept connection, given back when dropped unless the connection was kept.
struct Place<'a>(&'a AtomicUsize);

impl Place<'_> {
    /// The connection went back to the idle set, which holds the place from now on.
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a request asks to keep its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    Keep,
    /// `connection: close`: the pod closes first, so the closed socket's wait (TIME_WAIT) is on its side.
    Close,
}

/// A new connection to `addr`.
async fn connect(addr: SocketAddr) -> Result<TcpStream, ScrapeError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| ScrapeError::Request(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Whether an idle connection can carry another request: nothing to read, not even the end. A pod that closed
/// it, or wrote something nobody asked for, has it dropped.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// How one request on a connection failed.
enum Exchange {
    /// The connection ended before any byte of an answer.
    Closed,
    Failed(ScrapeError),
}

impl From<ScrapeError> for Exchange {
    fn from(err: ScrapeError) -> Self {
        Self::Failed(err)
    }
}

impl From<Exchange> for ScrapeError {
    fn from(err: Exchange) -> Self {
        match err {
            Exchange::Closed => ScrapeError::Request("connection closed before an answer".into()),
            Exchange::Failed(err) => err,
        }
    }
}

fn request_failed(err: impl ToString) -> Exchange {
    Exchange::Failed(ScrapeError::Request(err.to_string()))
}

/// Sends `GET /stats` on `stream` and reads the stat; the stream comes back when it may carry the next one.
async fn exchange(
    mut stream: TcpStream,
    addr: SocketAddr,
    connection: Connection,
) -> Result<(PodStat, Option<TcpStream>), Exchange> {
    let request = match connection {
        Connection::Keep => format!("GET {STATS_PATH} HTTP/1.1\r\nhost: {addr}\r\n\r\n"),
        Connection::Close => {
            format!("GET {STATS_PATH} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")
        }
    };
    stream.write_all(request.as_bytes()).await.map_err(request_failed)?;
    let mut buf = [0u8; READ_BUFFER];
    let mut filled = 0;
    let mut response = ResponseHead::default();
    // The head, after any informational answers.
    loop {
        let n = stream.read(&mut buf[filled..]).await.map_err(request_failed)?;
        if n == 0 {
            return Err(if filled == 0 {
                Exchange::Closed
            } else {
                request_failed("connection closed mid-answer")
            });
        }
        filled += n;
        if parse_head(&mut buf, &mut filled, &mut response)? {
            break;
        }
    }
    if !response.status.is_success() {
        return Err(ScrapeError::Status(response.status.as_u16()).into());
    }
    let too_long = || Exchange::Failed(ScrapeError::Decode(format!("longer than {MAX_STAT_LEN} bytes")));
    let start = response.len;
    // The body, and where the answer ends in the buffer.
    let (body, end) = match response.framing {
        Framing::Empty => (Vec::new(), start),
        Framing::Length(len) => {
            let len = usize::try_from(len).ok().filter(|&l| l <= MAX_STAT_LEN).ok_or_else(too_long)?;
            read_to(&mut stream, &mut buf, &mut filled, start + len).await?;
            (buf[start..start + len].to_vec(), start + len)
        }
        Framing::Chunked => {
            let mut body = Vec::new();
            let mut decoder = chunked::Decoder::new();
            let mut at = start;
            loop {
                at += decoder
                    .decode(&buf[at..filled], |data| body.extend_from_slice(data))
                    .map_err(|e| Exchange::Failed(ScrapeError::Decode(e.to_string())))?;
                if body.len() > MAX_STAT_LEN {
                    return Err(too_long());
                }
                if decoder.is_done() {
                    break (body, at);
                }
                // What the decoder took is done with: room for the rest of the body.
                buf.copy_within(at..filled, 0);
                filled -= at;
                at = 0;
                let want = filled + 1;
                read_to(&mut stream, &mut buf, &mut filled, want).await?;
            }
        }
        Framing::Close => {
            while filled < buf.len() {
                let n = stream.read(&mut buf[filled..]).await.map_err(request_failed)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled - start > MAX_STAT_LEN {
                return Err(too_long());
            }
            (buf[start..filled].to_vec(), filled)
        }
    };
    let stat = PodStat::decode(&body).map_err(|e| ScrapeError::Decode(e.to_string()))?;
    // A connection is kept only when the pod says so and sent nothing past its answer.
    let reusable = connection == Connection::Keep && response.keep_alive && filled == end;
    Ok((stat, reusable.then_some(stream)))
}

/// Parses the response head at the start of `buf`, skipping informational answers: whether it is complete.
fn parse_head(buf: &mut [u8], filled: &mut usize, response: &mut ResponseHead) -> Result<bool, Exchange> {
    loop {
        match head::parse_response(&buf[..*filled], false, response).map_err(request_failed)? {
            ParsedResponse::Complete => return Ok(true),
            ParsedResponse::Informational(len) => {
                buf.copy_within(len..*filled, 0);
                *filled -= len;
            }
            ParsedResponse::Partial if *filled == buf.len() => {
                return Err(request_failed("response head too large"));
            }
            ParsedResponse::Partial => return Ok(false),
        }
    }
}

/// Reads until `buf` holds `want` bytes; an answer that does not fit, or ends early, fails.
async fn read_to(
    stream: &mut TcpStream,
    buf: &mut [u8],
    filled: &mut usize,
    want: usize,
) -> Result<(), Exchange> {
    if want > buf.len() {
        return Err(Exchange::Failed(ScrapeError::Decode(format!("longer than {MAX_STAT_LEN} bytes"))));
    }
    while *filled < want {
        let n = stream.read(&mut buf[*filled..]).await.map_err(request_failed)?;
        if n == 0 {
            return Err(request_failed("connection closed mid-answer"));
        }
        *filled += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    fn stat() -> PodStat {
        PodStat {
            pod: "p".into(),
            average_concurrency: 2.5,
            average_proxied_concurrency: 0.0,
            request_count: 3.0,
            proxied_request_count: 0.0,
            process_uptime_secs: 1.0,
            timestamp_ms: 7,
            average_queued: Some(0.0),
        }
    }

    /// What a test server does with each request on a connection.
    #[derive(Clone, Copy)]
    enum Then {
        /// Answers and keeps the connection for the next request.
        KeepOpen,
        /// Answers and closes the connection.
        Close,
        /// Never answers.
        Stall,
    }

    /// A test pod: its address, the connections it accepted and the requests that asked it to close.
    struct TestPod {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        asked_to_close: Arc<AtomicUsize>,
    }

    impl TestPod {
        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    /// A server answering every request with `response`.
    async fn server(response: Vec<u8>, then: Then) -> TestPod {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, asked_to_close) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (count, closing) = (accepted.clone(), asked_to_close.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let (response, closing) = (response.clone(), closing.clone());
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut request).await
                        && n > 0
                    {
                        let close =
                            String::from_utf8_lossy(&request[..n]).contains("\r\nconnection: close\r\n");
                        closing.fetch_add(usize::from(close), Ordering::SeqCst);
                        match then {
                            Then::Stall => std::future::pending::<()>().await,
                            Then::KeepOpen if !close => drop(stream.write_all(&response).await),
                            Then::KeepOpen | Then::Close => return drop(stream.write_all(&response).await),
                        }
                    }
                });
            }
        });
        TestPod { addr, accepted, asked_to_close }
    }

    fn http(status: &str, fields: &str, body: &[u8]) -> Vec<u8> {
        let mut out =
            format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n{fields}\r\n", body.len()).into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn ok() -> Vec<u8> {
        http("200 OK", "", &stat().encode().unwrap())
    }

    #[tokio::test]
    async fn a_stalled_pod_times_out_and_the_others_answer() {
        let scraper = Scraper::new(Duration::from_millis(200));
        let good = server(ok(), Then::KeepOpen).await.addr;
        let stalled = server(ok(), Then::Stall).await.addr;
        let failing = server(http("503 Service Unavailable", "", b"no"), Then::KeepOpen).await.addr;
        let huge = server(http("200 OK", "", &vec![1u8; MAX_STAT_LEN + 1]), Then::KeepOpen).await.addr;

        let (good, stalled, failing, huge) = tokio::join!(
            scraper.scrape(good),
            scraper.scrape(stalled),
            scraper.scrape(failing),
            scraper.scrape(huge)
        );
        assert_eq!(good.unwrap(), stat());
        assert!(matches!(stalled, Err(ScrapeError::Timeout(_))), "{stalled:?}");
        assert!(matches!(failing, Err(ScrapeError::Status(503))), "{failing:?}");
        assert!(matches!(huge, Err(ScrapeError::Decode(_))), "{huge:?}");
    }

    #[tokio::test]
    async fn one_connection_carries_every_second() {
        let scraper = Scraper::new(Duration::from_secs(5));
        let pod = server(ok(), Then::KeepOpen).await;
        for _ in 0..5 {
            assert_eq!(scraper.scrape(pod.addr).await.unwrap(), stat());
        }
        assert_eq!(pod.accepted(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_pod_closed_is_replaced_without_an_error() {
        let scraper = Scraper::new(Duration::from_secs(5));
        // The pod says nothing of closing, then closes after each answer (as one restarting would).
        let pod = server(ok(), Then::Close).await;
        for _ in 0..3 {
            assert_eq!(scraper.scrape(pod.addr).await.unwrap(), stat());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pod.accepted(), 3);
        // One that says it closes is not kept in the first place.
        let pod =
            server(http("200 OK", "connection: close\r\n", &stat().encode().unwrap()), Then::KeepOpen).await;
        for _ in 0..2 {
            assert_eq!(scraper.scrape(pod.addr).await.unwrap(), stat());
        }
        assert_eq!(pod.accepted(), 2);
        // The first pod's last connection, closed while idle, is let go with the idle ones.
        scraper.close_idle();
        assert_eq!(scraper.kept(), 0);
    }

    #[tokio::test]
    async fn chunked_and_informational_answers_are_read() {
        let body = stat().encode().unwrap();
        let (first, rest) = body.split_at(body.len() / 2);
        let mut response =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for part in [first, rest] {
            response.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            response.extend_from_slice(part);
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(b"0\r\n\r\n");
        let scraper = Scraper::new(Duration::from_secs(5));
        let pod = server(response, Then::KeepOpen).await;
        assert_eq!(scraper.scrape(pod.addr).await.unwrap(), stat());
        assert_eq!(scraper.scrape(pod.addr).await.unwrap(), stat());
        assert_eq!(pod.accepted(), 1);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_stat() {
        let scraper = Scraper::new(Duration::from_secs(5));
        for response in
            [&b"SSH-2.0-OpenSSH\r\n\r\n"[..], &[b'x'; READ_BUFFER * 2][..], b"HTTP/1.1 200 OK\r\n\r\n"]
        {
            let pod = server(response.to_vec(), Then::Close).await;
            let result = scraper.scrape(pod.addr).await;
            assert!(matches!(result, Err(ScrapeError::Request(_) | ScrapeError::Decode(_))), "{result:?}");
        }
    }

    #[tokio::test]
    async fn pods_beyond_the_kept_connections_are_scraped_on_connections_they_close() {
        let scraper = Scraper::new(Duration::from_millis(300)).keeping_at_most(2);
        let mut pods = Vec::new();
        for _ in 0..4 {
            pods.push(server(ok(), Then::KeepOpen).await);
        }
        for _ in 0..3 {
            for pod in &pods {
                assert_eq!(scraper.scrape(pod.addr).await.unwrap(), stat());
            }
        }
        // The first two keep theirs; the other two get a new connection each second, and close it themselves.
        let accepted: Vec<usize> = pods.iter().map(TestPod::accepted).collect();
        assert_eq!(accepted, [1, 1, 3, 3]);
        let asked: Vec<usize> = pods.iter().map(|p| p.asked_to_close.load(Ordering::SeqCst)).collect();
        assert_eq!(asked, [0, 0, 3, 3]);
        assert_eq!(scraper.kept(), 2);

        // A kept connection that times out gives its place back, and the next pod takes it.
        let stalled = server(ok(), Then::Stall).await;
        let scraper = Scraper::new(Duration::from_millis(100)).keeping_at_most(1);
        assert!(matches!(scraper.scrape(stalled.addr).await, Err(ScrapeError::Timeout(_))));
        assert_eq!(scraper.kept(), 0);
        for _ in 0..2 {
            assert_eq!(scraper.scrape(pods[3].addr).await.unwrap(), stat());
        }
        assert_eq!(pods[3].accepted(), 4, "one new connection, kept for the second scrape");
        assert_eq!(scraper.kept(), 1);
        // A kept connection its pod closed while idle gives its place back when idle ones are closed.
        let closing = server(ok(), Then::Close).await;
        let scraper = Scraper::new(Duration::from_millis(300)).keeping_at_most(1);
        assert_eq!(scraper.scrape(closing.addr).await.unwrap(), stat());
        assert_eq!(scraper.kept(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        scraper.close_idle();
        assert_eq!(scraper.kept(), 0);
    }
}
