//! The fast path's connection driver: one task per client connection reads each request head, asks the
//! component's [`Policy`] what to do with it, and carries the exchange itself: the request (head and body) to a
//! pooled upstream connection, the response back, in the same task, with no body channels, no task per
//! exchange and one timer per connection that is moved rather than re-created. Each wake-up does all the I/O
//! that is ready.
//!
//! It keeps the data plane's behaviours: the policy holds what a request holds (permits, stats) until the
//! response *body* ends; the response-start, idle, total and request-body timeouts; answers in the client's
//! shape (the policy makes them); an upstream that answers before reading the whole body is relayed (its
//! connection is then closed), and a request body left unread is drained for a while before the connection
//! closes (nginx's lingering close); a client that leaves frees its request at once; hop-by-hop fields are
//! removed both ways. A request it does not carry (see [`super::head`]) hands the whole connection to hyper,
//! bytes read included.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::uri::Authority;
use http::{Method, Response, StatusCode};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::chunked::{self, Decoder};
use super::head::{
    self, ClientFraming, Framing, MAX_REQUEST_HEAD, Parsed, ParsedResponse, RequestEdit, RequestHead,
    ResponseEdit, ResponseHead,
};
use super::io::Prefixed;
use super::pool::{Pool, Upstream};
use crate::body::{BodyEnd, LINGER, LINGER_BYTES};
use crate::error::{Cause, ProxyError};
use crate::timeouts::{TimeoutKind, Timeouts, deadline_after};

/// How long a connection may take to send a request head, or stay idle between requests (hyper's
/// `header_read_timeout`, which the hyper path keeps).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads from either side start with a buffer of this size (a request head that does not fit grows it, up to
/// [`MAX_REQUEST_HEAD`]).
const BUFFER: usize = 8192;
/// Response body parts up to this size are copied behind their head rather than written from where they were
/// read (the copy costs less than a second buffer in the write).
const SMALL_BODY: usize = 2048;
/// Spare buffers kept per thread.
const SPARE_BUFFERS: usize = 64;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A read buffer from this thread's spares, or a new one. A connection holds a buffer only while it has bytes
/// in it or an exchange is being read: a thousand idle (or waiting) connections hold none, and a busy one does
/// not go to the allocator for every request.
fn spare() -> BytesMut {
    SPARE.with_borrow_mut(Vec::pop).unwrap_or_else(|| BytesMut::with_capacity(BUFFER))
}

/// Moves what `buf` holds into a buffer of just its size, and gives the read buffer back to the spares.
fn compact(buf: &mut BytesMut) {
    let mut small = BytesMut::with_capacity(buf.len());
    small.extend_from_slice(buf);
    let mut read = std::mem::replace(buf, small);
    read.clear();
    recycle(&mut read);
}

/// Gives `buf` back to the spares (emptied) if it has nothing left in it.
fn recycle(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        let mut buf = std::mem::take(buf);
        // Back to the start of its allocation (its one owner), as long as it has not grown.
        buf.reserve(BUFFER);
        if buf.capacity() == BUFFER {
            SPARE.with_borrow_mut(|spare| {
                if spare.len() < SPARE_BUFFERS {
                    spare.push(buf);
                }
            });
        }
    }
}

/// A request head as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    buf: &'a [u8],
    head: &'a RequestHead,
}

impl<'a> Request<'a> {
    /// The method.
    pub fn method(&self) -> &'a Method {
        &self.head.method
    }

    /// The request target (path and query).
    pub fn target(&self) -> &'a str {
        self.head.target(self.buf)
    }

    /// The path.
    pub fn path(&self) -> &'a str {
        self.head.path(self.buf)
    }

    /// The first value of the field `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.head.get(self.buf, name)
    }

    /// Every field, in order: name (as sent) and value.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let buf = self.buf;
        self.head.fields.iter().map(move |f| (f.name(buf), f.value(buf)))
    }

    /// Whether a body follows.
    pub fn has_body(&self) -> bool {
        self.head.has_body()
    }

    /// The body's length (0 without one).
    pub fn content_length(&self) -> u64 {
        self.head.content_length
    }
}

/// An upstream's response head as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct ResponseView<'a> {
    buf: &'a [u8],
    head: &'a ResponseHead,
}

impl<'a> ResponseView<'a> {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.head.status
    }

    /// The first value of the field `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.head.get(self.buf, name)
    }
}

/// What a component decides for one request.
#[derive(Debug)]
pub enum Admit<H> {
    /// Forward it.
    Forward(Forward<H>),
    /// Answer it here (an error): the answer, complete.
    Answer(Response<Bytes>),
    /// Leave this connection to hyper, from this request on (probes, anything the component treats itself).
    Hyper,
}

/// How to forward one request.
#[derive(Debug)]
pub struct Forward<H> {
    /// Rides with the request until its response ends.
    pub hold: H,
    /// Where to.
    pub upstream: Authority,
    /// When the request arrived (its timeouts count from here).
    pub start: Instant,
    /// Its timeouts (the response-start deadline counts from `start`, the idle one from forwarding).
    pub timeouts: Timeouts,
    /// Answer with `Connection: close` and close after this exchange (draining).
    pub close: bool,
    /// Changes to the request head.
    pub request: RequestEdit<'static>,
    /// Response fields not relayed.
    pub response_remove: &'static [&'static str],
    /// Read the whole body before the first attempt and keep it until the response is accepted, so that
    /// [`Policy::retry`] may send the request again.
    pub replay: bool,
}

/// What to do after an attempt reached no user container (see [`Policy::retry`]).
#[derive(Debug)]
pub enum Retry {
    /// Send the request again, there.
    To(Authority),
    /// Stop: the failure stands (a failed connection is answered by [`Policy::failed`], an answer that said
    /// nothing was forwarded is relayed as it is).
    GiveUp,
    /// Stop with this answer.
    Answer(Response<Bytes>),
}

/// A component's pipeline, as the fast path calls it.
pub trait Policy: Send + Sync + 'static {
    /// What a forwarded request holds until its response ends; dropped then.
    type Hold: BodyEnd;

    /// The first look at a request: forward it, answer it, or leave the connection to hyper. The future may wait
    /// (for a concurrency slot); a client that leaves meanwhile drops it.
    fn admit<'s>(
        &'s self,
        req: &Request<'_>,
    ) -> impl Future<Output = Admit<Self::Hold>> + Send + use<'s, Self>;

    /// The upstream's response head arrived and is accepted: a field to add to it, if any.
    fn responded(
        &self,
        hold: &mut Self::Hold,
        status: StatusCode,
    ) -> Option<(&'static str, http::HeaderValue)>;

    /// Whether a response says that nothing of the request reached a user container (so that the request may
    /// go elsewhere).
    fn unforwarded(&self, _response: &ResponseView<'_>) -> Option<ProxyError> {
        None
    }

    /// An attempt of a [`Forward::replay`] request reached no user container (`failure`: its connection
    /// failed, or the answer said so): where to send it next, if anywhere.
    fn retry<'s>(
        &'s self,
        _hold: &'s mut Self::Hold,
        _failure: &ProxyError,
    ) -> impl Future<Output = Retry> + Send + 's {
        std::future::ready(Retry::GiveUp)
    }

    /// Forwarding failed before the response started: the answer (dropping the hold after it).
    fn failed(&self, hold: Self::Hold, err: &ProxyError) -> Response<Bytes>;

    /// The upstream connections.
    fn pool(&self) -> &Arc<Pool>;
}

/// How the fast path left a connection.
#[derive(Debug)]
pub enum Served {
    /// Closed (or to be closed).
    Closed,
    /// To be served by hyper from here on: the bytes read and not consumed come first.
    Hyper(Prefixed<TcpStream>),
}

/// One lazily created timer per connection, moved to each new deadline.
#[derive(Debug, Default)]
struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    at: Option<Instant>,
}

impl Timer {
    fn poll(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if self.at != Some(deadline) {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.at = Some(deadline);
        sleep.as_mut().poll(cx)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Want {
    up_read: bool,
    up_write: bool,
    client_read: bool,
    client_write: bool,
    deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    UpRead,
    UpWrite,
    ClientRead,
    ClientWrite,
    Deadline,
}

/// Waits until one of the wanted readinesses (or the deadline) is there; the caller then does the I/O, which
/// clears a readiness that turns out stale.
async fn wait(client: &TcpStream, up: Option<&TcpStream>, want: Want, timer: &mut Timer) -> Event {
    std::future::poll_fn(|cx| {
        if let Some(up) = up {
            if want.up_read && up.poll_read_ready(cx).is_ready() {
                return Poll::Ready(Event::UpRead);
            }
            if want.up_write && up.poll_write_ready(cx).is_ready() {
                return Poll::Ready(Event::UpWrite);
            }
        }
        if want.client_write && client.poll_write_ready(cx).is_ready() {
            return Poll::Ready(Event::ClientWrite);
        }
        if want.client_read && client.poll_read_ready(cx).is_ready() {
            return Poll::Ready(Event::ClientRead);
        }
        if let Some(deadline) = want.deadline
            && timer.poll(cx, deadline).is_ready()
        {
            return Poll::Ready(Event::Deadline);
        }
        Poll::Pending
    })
    .await
}

/// Reads what is there into `buf` (a spare one when it has none; grown by `room` when full). After a read that
/// did not fill the room offered, the socket's readiness is cleared as tokio's own reads do, so that an idle
/// pooled connection does not look readable.
fn read_some(stream: &TcpStream, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
    if buf.capacity() == 0 {
        *buf = spare();
    } else if buf.capacity() == buf.len() {
        buf.reserve(room);
    }
    let offered = buf.capacity() - buf.len();
    let n = stream.try_read_buf(buf)?;
    if n > 0 && n < offered {
        let _ = stream.try_io(Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
    }
    Ok(n)
}

fn is_would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// Whether a write failure means the peer stopped reading (see [`crate::upstream_io`]).
fn peer_stopped_reading(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
}

fn upstream_read_error(err: &io::Error) -> ProxyError {
    match err.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
            ProxyError::UpstreamReset
        }
        _ => ProxyError::UpstreamProtocol(Cause::message(err.to_string())),
    }
}

thread_local! {
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
}

/// Today's `Date` value, formatted once a second (per thread).
fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, value)| {
        if *cached != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == value.len() {
                value.copy_from_slice(text.as_bytes());
                *cached = secs;
            }
        }
        f(&value[..])
    })
}

/// The state of one client connection.
struct Conn {
    client: TcpStream,
    /// What the client sent and was not consumed yet.
    cbuf: BytesMut,
    /// The head going upstream (and local answers).
    out: Vec<u8>,
    /// The response head and framing going to the client.
    cout: Vec<u8>,
    head: RequestHead,
    response: ResponseHead,
    /// The deadline of an exchange's current wait (moved forward as it goes).
    timer: Timer,
    /// The deadline of the wait for the next request head (moved forward request after request: two timers
    /// that each only move forward are cheaper than one moved back and forth).
    head_timer: Timer,
    /// The time an exchange ended, when it has just ended.
    now: Option<Instant>,
}

/// What follows an exchange.
enum Next {
    KeepAlive,
    Close,
}

/// Why an exchange ended before its response was complete.
enum Abort {
    /// The client went away (or its socket failed): nothing more to say.
    ClientGone,
}

impl Conn {
    fn view(&self) -> Request<'_> {
        Request { buf: &self.cbuf, head: &self.head }
    }

    /// Writes all of `parts` to the client.
    async fn write_client(&mut self, parts: &[&[u8]]) -> Result<(), Abort> {
        let mut skip = 0;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        while skip < total {
            let mut slices = [IoSlice::new(&[]); 3];
            let mut n = 0;
            let mut offset = skip;
            for part in parts {
                if offset >= part.len() {
                    offset -= part.len();
                    continue;
                }
                if n < slices.len() {
                    slices[n] = IoSlice::new(&part[offset..]);
                    n += 1;
                }
                offset = 0;
            }
            // One buffer goes by write(2), which costs the kernel less than writev(2).
            let written = match n {
                1 => self.client.try_write(&slices[0]),
                _ => self.client.try_write_vectored(&slices[..n]),
            };
            match written {
                Ok(written) => skip += written,
                Err(err) if is_would_block(&err) => {
                    if self.client.writable().await.is_err() {
                        return Err(Abort::ClientGone);
                    }
                }
                Err(_) => return Err(Abort::ClientGone),
            }
        }
        Ok(())
    }

    /// Writes a local answer; whether the connection may carry another request.
    async fn answer(&mut self, answer: Response<Bytes>, close: bool) -> Next {
        let close = close
            || self.head.close
            || answer
                .headers()
                .get_all(http::header::CONNECTION)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let head_request = self.head.method == Method::HEAD;
        let mut out = std::mem::take(&mut self.out);
        with_date(|date| head::write_answer(&mut out, &answer, date, close, head_request));
        let written = self.write_client(&[&out]).await;
        self.out = out;
        match (written, close) {
            (Ok(()), false) => Next::KeepAlive,
            _ => Next::Close,
        }
    }

    /// Reads and discards what is left of a request body (`left` bytes), for at most [`LINGER`] and
    /// [`LINGER_BYTES`]: whether all of it came (the connection can then carry another request).
    async fn linger(&mut self, mut left: u64) -> bool {
        let deadline = Instant::now() + LINGER;
        let mut drained = 0usize;
        loop {
            let here = (self.cbuf.len() as u64).min(left);
            self.cbuf.advance(here as usize);
            left -= here;
            drained += here as usize;
            if left == 0 {
                return true;
            }
            if drained > LINGER_BYTES {
                return false;
            }
            let want = Want { client_read: true, deadline: Some(deadline), ..Want::default() };
            match wait(&self.client, None, want, &mut self.timer).await {
                Event::Deadline => return false,
                _ => match read_some(&self.client, &mut self.cbuf, 16 * 1024) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(err) if is_would_block(&err) => {}
                    Err(_) => return false,
                },
            }
        }
    }
}

/// Serves `stream` with `policy` until it closes, hyper must take over, or `shutdown` says stop (between
/// requests).
pub async fn serve<P: Policy>(stream: TcpStream, policy: &P, shutdown: &mut watch::Receiver<bool>) -> Served {
    let mut conn = Conn {
        client: stream,
        cbuf: BytesMut::new(),
        out: Vec::new(),
        cout: Vec::new(),
        head: RequestHead::default(),
        response: ResponseHead::default(),
        timer: Timer::default(),
        head_timer: Timer::default(),
        now: None,
    };
    let mut stopped = pin!(stopped(shutdown));
    let mut stop_seen = false;
    loop {
        // The next request head.
        let mut head_deadline = None;
        loop {
            if !conn.cbuf.is_empty() {
                match head::parse_request(&conn.cbuf, &mut conn.head) {
                    Parsed::Fast => break,
                    Parsed::Partial => {}
                    Parsed::Unusual(why) => {
                        tracing::trace!("handing the connection to hyper: {why}");
                        return Served::Hyper(Prefixed::new(conn.cbuf, conn.client));
                    }
                }
            } else {
                recycle(&mut conn.cbuf);
            }
            // Counted from the end of the last exchange (or now, for a new connection): one clock read less.
            let deadline = *head_deadline
                .get_or_insert_with(|| conn.now.take().unwrap_or_else(Instant::now) + HEADER_READ_TIMEOUT);
            let readable = wait(
                &conn.client,
                None,
                Want { client_read: true, deadline: Some(deadline), ..Want::default() },
                &mut conn.head_timer,
            );
            // Between requests, a shutdown closes the connection (hyper's graceful shutdown).
            let event = tokio::select! {
                biased;
                event = readable => event,
                () = stopped.as_mut(), if conn.cbuf.is_empty() && !stop_seen => return Served::Closed,
            };
            if event == Event::Deadline {
                return Served::Closed;
            }
            let room = if conn.cbuf.is_empty() { BUFFER } else { conn.cbuf.len().min(MAX_REQUEST_HEAD) };
            match read_some(&conn.client, &mut conn.cbuf, room) {
                Ok(0) => return Served::Closed,
                Ok(_) => {}
                Err(err) if is_would_block(&err) => {}
                Err(_) => return Served::Closed,
            }
        }

        let mut admitted = pin!(policy.admit(&conn.view()));
        let first = std::future::poll_fn(|cx| Poll::Ready(admitted.as_mut().poll(cx))).await;
        let admitted = match first {
            Poll::Ready(admitted) => admitted,
            Poll::Pending => {
                // The request waits (for a slot, or a pod): it keeps a copy of its bytes, not a read buffer.
                compact(&mut conn.cbuf);
                if conn.head.has_body() {
                    admitted.await
                } else {
                    // A client that leaves while its request waits frees it at once.
                    loop {
                        let readable = conn.client.readable();
                        tokio::select! {
                            biased;
                            admitted = admitted.as_mut() => break admitted,
                            ready = readable, if conn.cbuf.len() < MAX_REQUEST_HEAD * 2 => {
                                if ready.is_err() {
                                    return Served::Closed;
                                }
                                match read_some(&conn.client, &mut conn.cbuf, BUFFER) {
                                    Ok(0) => return Served::Closed,
                                    Ok(_) => {}
                                    Err(err) if is_would_block(&err) => {}
                                    Err(_) => return Served::Closed,
                                }
                            }
                        }
                    }
                }
            }
        };
        let next = match admitted {
            Admit::Hyper => return Served::Hyper(Prefixed::new(conn.cbuf, conn.client)),
            Admit::Answer(answer) => {
                let body = conn.head.content_length;
                conn.cbuf.advance(conn.head.len);
                match conn.answer(answer, false).await {
                    Next::KeepAlive if conn.linger(body).await => Next::KeepAlive,
                    _ => Next::Close,
                }
            }
            Admit::Forward(forward) => match exchange(&mut conn, policy, forward).await {
                Ok(next) => next,
                Err(Abort::ClientGone) => Next::Close,
            },
        };
        if !stop_seen {
            stop_seen = stopped.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop())).is_ready();
        }
        match next {
            Next::KeepAlive if !stop_seen => {}
            _ => return Served::Closed,
        }
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The request on its way upstream: the head (`out[sent..]` still to go), then the body, whose next bytes are
/// the first of the client buffer (or, for a body kept for another attempt, at `offset` in it).
struct Pump {
    sent: usize,
    /// Body bytes not sent yet.
    left: u64,
    /// The body's length.
    len: u64,
    /// The body stays in the client buffer until [`Self::commit`] (for attempts to repeat it).
    keep: bool,
    /// Body bytes sent, when kept.
    offset: usize,
    /// The upstream stopped reading (a write failed with EPIPE or a reset): what is left of the body is read
    /// from the client and dropped, and the upstream's answer is still read (see [`crate::upstream_io`]).
    discard: bool,
    /// The client's last body bytes (the request-body timeout counts from here).
    last_progress: Instant,
    limit: Option<Duration>,
}

impl Pump {
    /// Body bytes at hand in the client buffer.
    fn here(&self, cbuf: &BytesMut) -> usize {
        ((cbuf.len() - self.offset) as u64).min(self.left) as usize
    }

    /// Whether the client is to be read for more of the body.
    fn needs_client(&self, cbuf: &BytesMut) -> bool {
        self.left > 0 && self.here(cbuf) == 0
    }

    fn wants_write(&self, head: &[u8], cbuf: &BytesMut) -> bool {
        !self.discard && (self.sent < head.len() || self.here(cbuf) > 0)
    }

    /// When the client's silence ends the request (while the body is awaited).
    fn deadline(&self, cbuf: &BytesMut) -> Option<Instant> {
        self.limit.filter(|_| self.needs_client(cbuf)).map(|limit| deadline_after(self.last_progress, limit))
    }

    fn consume(&mut self, cbuf: &mut BytesMut, n: usize) {
        if self.keep {
            self.offset += n;
        } else {
            cbuf.advance(n);
        }
        self.left -= n as u64;
    }

    /// Sends what there is to send without waiting (or drops body bytes when the upstream stopped reading).
    fn push(&mut self, up: &TcpStream, head: &[u8], cbuf: &mut BytesMut) -> Result<(), ProxyError> {
        loop {
            let here = self.here(cbuf);
            if self.discard {
                self.consume(cbuf, here);
                return Ok(());
            }
            let head_rest = &head[self.sent.min(head.len())..];
            if head_rest.is_empty() && here == 0 {
                return Ok(());
            }
            let body = &cbuf[self.offset..self.offset + here];
            let written = match (head_rest.is_empty(), body.is_empty()) {
                (false, true) => up.try_write(head_rest),
                (true, false) => up.try_write(body),
                _ => up.try_write_vectored(&[IoSlice::new(head_rest), IoSlice::new(body)]),
            };
            match written {
                Ok(n) => {
                    let from_head = n.min(head_rest.len());
                    self.sent += from_head;
                    self.consume(cbuf, n - from_head);
                }
                Err(err) if is_would_block(&err) => return Ok(()),
                // The upstream reads no more: the rest is discarded, its answer is still read.
                Err(err) if peer_stopped_reading(&err) => self.discard = true,
                Err(err) => return Err(upstream_read_error(&err)),
            }
        }
    }

    /// Reads more of the body (or, once it is all there, whatever the client sends next: a pipelined request,
    /// or its leaving). `Err` when the client is gone.
    fn pull(&mut self, client: &TcpStream, cbuf: &mut BytesMut) -> Result<(), Abort> {
        let room = if self.left > 0 { (self.left as usize).clamp(BUFFER, 64 * 1024) } else { BUFFER };
        match read_some(client, cbuf, room) {
            Ok(0) => Err(Abort::ClientGone),
            Ok(_) => {
                if self.left > 0 {
                    self.last_progress = Instant::now();
                }
                Ok(())
            }
            Err(err) if is_would_block(&err) => Ok(()),
            Err(_) => Err(Abort::ClientGone),
        }
    }

    /// Starts the request over (another attempt of a kept body).
    fn restart(&mut self) {
        self.sent = 0;
        self.offset = 0;
        self.left = self.len;
        self.discard = false;
    }

    /// The attempt stands: the kept body bytes sent leave the client buffer.
    fn commit(&mut self, cbuf: &mut BytesMut) {
        if self.keep {
            cbuf.advance(self.offset);
            self.offset = 0;
            self.keep = false;
        }
    }
}

/// One forwarded exchange, from the request head (parsed in `conn`) to the end of the response body.
async fn exchange<P: Policy>(conn: &mut Conn, policy: &P, forward: Forward<P::Hold>) -> Result<Next, Abort> {
    let Forward { hold, upstream, start, timeouts, close, request, response_remove, replay } = forward;
    let mut authority = upstream;
    let mut hold = Some(hold);
    head::write_request(&mut conn.out, &conn.cbuf, &conn.head, &request);
    let head_request = conn.head.method == Method::HEAD;
    let idempotent = matches!(
        conn.head.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    let client_close = conn.head.close;
    let body_len = conn.head.content_length;
    conn.cbuf.advance(conn.head.len);
    recycle(&mut conn.cbuf);
    let upstream_head = std::mem::take(&mut conn.out);

    let forwarded = Instant::now();
    let (header_deadline, header_kind) = timeouts.header_deadline(start, forwarded);
    let total_deadline = timeouts.total_deadline(start);
    let mut pump = Pump {
        sent: 0,
        left: body_len,
        len: body_len,
        keep: replay && body_len > 0,
        offset: 0,
        discard: false,
        last_progress: forwarded,
        limit: timeouts.request_body,
    };
    let mut ubuf = BytesMut::new();
    let mut rhead = std::mem::take(&mut conn.response);

    // Answering before the response starts (the hold is dropped after the answer is made); a body the client
    // is still sending is drained.
    macro_rules! answer {
        ($answer:expr, $close:expr) => {{
            let answer = $answer;
            drop(hold.take());
            conn.out = upstream_head;
            conn.response = rhead;
            pump.commit(&mut conn.cbuf);
            let next = conn.answer(answer, $close || close).await;
            return Ok(match next {
                Next::KeepAlive if pump.left == 0 || conn.linger(pump.left).await => Next::KeepAlive,
                _ => Next::Close,
            });
        }};
    }
    macro_rules! fail {
        ($err:expr) => {{
            let err: ProxyError = $err;
            let answer = policy.failed(hold.take().expect("held until the response"), &err);
            answer!(answer, matches!(err, ProxyError::Timeout(TimeoutKind::RequestBody)))
        }};
    }

    if pump.keep {
        // A body that may have to go out twice is read whole first (as nginx buffers request bodies).
        while pump.here(&conn.cbuf) < body_len as usize {
            let deadline =
                pump.deadline(&conn.cbuf).map_or(header_deadline, |body| body.min(header_deadline));
            let want = Want { client_read: true, deadline: Some(deadline), ..Want::default() };
            match wait(&conn.client, None, want, &mut conn.timer).await {
                Event::Deadline if Instant::now() >= header_deadline => {
                    fail!(ProxyError::Timeout(header_kind))
                }
                Event::Deadline => {
                    if pump.deadline(&conn.cbuf).is_some_and(|at| Instant::now() >= at) {
                        fail!(ProxyError::Timeout(TimeoutKind::RequestBody));
                    }
                }
                _ => pump.pull(&conn.client, &mut conn.cbuf)?,
            }
        }
    }

    let pool = policy.pool();
    let mut fresh_only = false;
    // Connect (or reuse), send the request and read up to the response head. Again on a new connection when a
    // reused one turns out to have been closed by the upstream before any answer (only for a request without a
    // body that is safe to repeat, as a client would repeat it); again elsewhere when the policy says so for a
    // request that reached no user container.
    let mut up = 'attempt: loop {
        let got = {
            let getting = async {
                match fresh_only {
                    true => pool.connect(&authority).await.map(|stream| Upstream { stream, reused: false }),
                    false => pool.get(&authority, forwarded, !(idempotent && body_len == 0)).await,
                }
            };
            tokio::select! {
                biased;
                got = getting => got,
                () = tokio::time::sleep_until(header_deadline) => Err(ProxyError::Timeout(header_kind)),
            }
        };
        fresh_only = false;
        pump.restart();
        ubuf.clear();
        let up = match got {
            Ok(up) => up,
            Err(err @ (ProxyError::UpstreamRefused | ProxyError::UpstreamConnect(_))) if replay => {
                match policy.retry(hold.as_mut().expect("held until the response"), &err).await {
                    Retry::To(next) => {
                        authority = next;
                        continue 'attempt;
                    }
                    Retry::GiveUp => fail!(err),
                    Retry::Answer(answer) => answer!(answer, false),
                }
            }
            Err(err) => fail!(err),
        };
        loop {
            if let Err(err) = pump.push(&up.stream, &upstream_head, &mut conn.cbuf) {
                fail!(err);
            }
            let deadline = match pump.deadline(&conn.cbuf) {
                Some(body) => body.min(header_deadline),
                None => header_deadline,
            };
            let want = Want {
                up_read: true,
                up_write: pump.wants_write(&upstream_head, &conn.cbuf),
                // For more body, or, once the request is whole, to notice the client leaving.
                client_read: pump.needs_client(&conn.cbuf)
                    || (pump.left == 0 && conn.cbuf.len() < MAX_REQUEST_HEAD),
                deadline: Some(deadline),
                ..Want::default()
            };
            match wait(&conn.client, Some(&up.stream), want, &mut conn.timer).await {
                Event::UpRead => match read_some(&up.stream, &mut ubuf, BUFFER) {
                    Err(err) if is_would_block(&err) => {}
                    Ok(0) | Err(_) if ubuf.is_empty() && up.reused && idempotent && body_len == 0 => {
                        // The upstream had closed this kept connection: try a new one.
                        fresh_only = true;
                        continue 'attempt;
                    }
                    Ok(0) => fail!(ProxyError::UpstreamReset),
                    Err(err) => fail!(upstream_read_error(&err)),
                    Ok(_) => loop {
                        match head::parse_response(&ubuf, head_request, &mut rhead) {
                            Ok(ParsedResponse::Partial) => break,
                            Ok(ParsedResponse::Informational(n)) => ubuf.advance(n),
                            Ok(ParsedResponse::Complete) => {
                                let view = ResponseView { buf: &ubuf, head: &rhead };
                                let Some(err) = policy.unforwarded(&view).filter(|_| replay) else {
                                    break 'attempt up;
                                };
                                let held = hold.as_mut().expect("held until the response");
                                match policy.retry(held, &err).await {
                                    Retry::To(next) => {
                                        authority = next;
                                        continue 'attempt;
                                    }
                                    Retry::GiveUp => break 'attempt up,
                                    Retry::Answer(answer) => answer!(answer, false),
                                }
                            }
                            Err(err) => fail!(ProxyError::UpstreamProtocol(Cause::new(err))),
                        }
                    },
                },
                Event::ClientRead => pump.pull(&conn.client, &mut conn.cbuf)?,
                Event::UpWrite | Event::ClientWrite => {}
                Event::Deadline if Instant::now() >= header_deadline => {
                    fail!(ProxyError::Timeout(header_kind))
                }
                Event::Deadline => {
                    if pump.deadline(&conn.cbuf).is_some_and(|at| Instant::now() >= at) {
                        fail!(ProxyError::Timeout(TimeoutKind::RequestBody));
                    }
                }
            }
        }
    };
    pump.commit(&mut conn.cbuf);

    // The response head.
    let mut hold = hold.take().expect("held until the response");
    let added = policy.responded(&mut hold, rhead.status);
    // A client still sending its body when the response starts is told that the connection closes: the
    // upstream may not read all of it.
    let keep_client = !(close || client_close || pump.left > 0);
    let add = added.as_ref().map(|(name, value)| (*name, value.as_bytes()));
    let edit = ResponseEdit { remove: response_remove, close: !keep_client, date: &[], add };
    let mut out = upstream_head;
    let mut client_out = std::mem::take(&mut conn.cout);
    let framing = if rhead.has_date {
        head::write_response(&mut client_out, &ubuf, &rhead, &edit)
    } else {
        with_date(|date| head::write_response(&mut client_out, &ubuf, &rhead, &ResponseEdit { date, ..edit }))
    };
    ubuf.advance(rhead.len);
    let rhead_framing = rhead.framing;
    let upstream_keeps = rhead.keep_alive;
    conn.response = rhead;

    let bounds = Bounds { total: total_deadline, idle: timeouts.idle };
    let relayed = relay(
        conn,
        &mut up.stream,
        &mut ubuf,
        &mut client_out,
        &out,
        &mut pump,
        rhead_framing,
        framing,
        bounds,
    )
    .await;
    out.clear();
    conn.out = out;
    client_out.clear();
    conn.cout = client_out;
    let leftover = !ubuf.is_empty();
    recycle(&mut ubuf);
    let clean = match relayed {
        Ok(clean) => clean,
        Err(Cut::Client) => return Err(Abort::ClientGone),
        Err(Cut::Timeout(kind)) => {
            hold.timed_out(kind);
            return Ok(Next::Close);
        }
        Err(Cut::Upstream(err)) => {
            hold.failed(&err);
            return Ok(Next::Close);
        }
    };
    // The response ended: this frees the slot.
    drop(hold);
    let now = Instant::now();
    conn.now = Some(now);
    if clean && upstream_keeps && pump.left == 0 && !pump.discard && !leftover {
        pool.put(&authority, up.stream, now);
    } else {
        drop(up);
    }
    if pump.left > 0 {
        // The upstream answered without reading all of the body: drain it a while, then close.
        conn.linger(pump.left).await;
        return Ok(Next::Close);
    }
    Ok(if keep_client { Next::KeepAlive } else { Next::Close })
}

/// Why a response body was cut.
enum Cut {
    Client,
    Timeout(TimeoutKind),
    Upstream(ProxyError),
}

/// The deadlines of a response body.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    total: Instant,
    idle: Option<Duration>,
}

/// Relays the response body that follows the head waiting in `client_out` (written with the body's first
/// part), while the rest of the request body, if any, still goes upstream. Ok with whether the upstream
/// connection ended cleanly (nothing after the body).
#[allow(clippy::too_many_arguments)]
async fn relay(
    conn: &mut Conn,
    up: &mut TcpStream,
    ubuf: &mut BytesMut,
    client_out: &mut Vec<u8>,
    upstream_head: &[u8],
    pump: &mut Pump,
    upstream_framing: Framing,
    client_framing: ClientFraming,
    bounds: Bounds,
) -> Result<bool, Cut> {
    // Only an idle timeout needs the time of each read.
    let mut last_progress = if bounds.idle.is_some() { Instant::now() } else { bounds.total };
    let mut decoder = Decoder::new();
    let mut left = match upstream_framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut ended = matches!(upstream_framing, Framing::Empty | Framing::Length(0));
    let mut eof = false;
    loop {
        // Turn what was read into output.
        let mut pass = 0usize;
        match upstream_framing {
            Framing::Empty => {}
            Framing::Length(_) => {
                pass = (ubuf.len() as u64).min(left) as usize;
                left -= pass as u64;
                ended = left == 0;
                if pass <= SMALL_BODY && !client_out.is_empty() {
                    // A small body goes with the head in one buffer (one write(2)).
                    client_out.extend_from_slice(&ubuf[..pass]);
                    ubuf.advance(pass);
                    pass = 0;
                }
            }
            Framing::Chunked => match decoder.decode(ubuf, |data| chunked::encode_chunk(client_out, data)) {
                Ok(used) => {
                    ubuf.advance(used);
                    ended = decoder.is_done();
                }
                Err(err) => {
                    // What came before the bad framing (the head at least) still reaches the client.
                    let _ = conn.write_client(&[&client_out[..]]).await;
                    return Err(Cut::Upstream(ProxyError::UpstreamProtocol(Cause::new(err))));
                }
            },
            Framing::Close => {
                chunked::encode_chunk(client_out, ubuf);
                ubuf.clear();
                ended = eof;
            }
        }
        if ended && client_framing == ClientFraming::Chunked {
            client_out.extend_from_slice(chunked::LAST_CHUNK);
        }
        if !client_out.is_empty() || pass > 0 {
            conn.write_client(&[&client_out[..], &ubuf[..pass]]).await.map_err(|_| Cut::Client)?;
            client_out.clear();
            ubuf.advance(pass);
        }
        if ended {
            return Ok(ubuf.is_empty() && !eof);
        }
        // Wait for more of the body; the client is read for the rest of its own body, or watched for leaving.
        pump.push(up, upstream_head, &mut conn.cbuf).map_err(Cut::Upstream)?;
        let mut deadline = bounds.total;
        if let Some(idle) = bounds.idle {
            deadline = deadline.min(deadline_after(last_progress, idle));
        }
        if let Some(body) = pump.deadline(&conn.cbuf) {
            deadline = deadline.min(body);
        }
        let want = Want {
            up_read: true,
            up_write: pump.wants_write(upstream_head, &conn.cbuf),
            client_read: pump.needs_client(&conn.cbuf)
                || (pump.left == 0 && conn.cbuf.len() < MAX_REQUEST_HEAD),
            deadline: Some(deadline),
            ..Want::default()
        };
        match wait(&conn.client, Some(up), want, &mut conn.timer).await {
            Event::UpRead => {
                if ubuf.is_empty() {
                    // Everything read was relayed: reuse the buffer from its start.
                    ubuf.reserve(BUFFER);
                }
                match read_some(up, ubuf, BUFFER) {
                    Ok(0) if upstream_framing == Framing::Close => eof = true,
                    Ok(0) => return Err(Cut::Upstream(ProxyError::UpstreamReset)),
                    Ok(_) if bounds.idle.is_some() => last_progress = Instant::now(),
                    Ok(_) => {}
                    Err(err) if is_would_block(&err) => {}
                    Err(err) => return Err(Cut::Upstream(upstream_read_error(&err))),
                }
            }
            Event::ClientRead => pump.pull(&conn.client, &mut conn.cbuf).map_err(|_| Cut::Client)?,
            Event::Deadline => {
                let now = Instant::now();
                if now >= bounds.total {
                    return Err(Cut::Timeout(TimeoutKind::Total));
                }
                if bounds.idle.is_some_and(|idle| now >= deadline_after(last_progress, idle)) {
                    return Err(Cut::Timeout(TimeoutKind::Idle));
                }
                if pump.deadline(&conn.cbuf).is_some_and(|at| now >= at) {
                    return Err(Cut::Timeout(TimeoutKind::RequestBody));
                }
            }
            Event::UpWrite | Event::ClientWrite => {}
        }
    }
}
