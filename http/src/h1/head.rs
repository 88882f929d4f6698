//! Message heads of the HTTP/1 fast path: parsing a client's request head and deciding whether the fast path
//! may carry it, writing the head that goes upstream, parsing the upstream's response head and writing the one
//! that goes back to the client. Pure functions over bytes (no I/O, no clock), so that they can be fuzzed.
//!
//! The fast path carries only a strict subset of HTTP/1.1: a request outside it is [`Parsed::Unusual`] and its
//! connection is handed to hyper before anything of it was consumed, so that every malformed, ambiguous or
//! merely rare request (and every request hyper answers with a 4xx by itself) is treated by the same code as
//! before. Inside the subset the framing is unambiguous: one `Host`, at most one `Content-Length` of plain
//! digits, no `Transfer-Encoding`, no upgrade, no `Expect`, no `TE`, a `Connection` header naming only `close`
//! or `keep-alive`, an origin-form target of conservative bytes, HTTP/1.1. Anything else (request smuggling
//! attempts included) never reaches the fast path's own forwarding.

use std::mem::MaybeUninit;

use http::{Method, StatusCode};

/// Longest request head the fast path reads; a longer one goes to hyper (which allows about 400 KiB).
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Longest response head accepted from an upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most header fields in a head the fast path carries (hyper's limit is 100; more go to hyper).
pub const MAX_HEADERS: usize = 64;
/// Longest request target carried (hyper's limit is 65534; longer ones go to hyper).
const MAX_TARGET: usize = 8 * 1024;

/// A header field: where its name and value lie in the buffer the head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

impl Field {
    /// The name, as the peer wrote it.
    pub fn name<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.name.0 as usize..self.name.1 as usize]
    }

    /// The value, without surrounding whitespace.
    pub fn value<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.value.0 as usize..self.value.1 as usize]
    }

    /// Whether the name is `name` (lower case), ignoring case.
    pub fn is(&self, buf: &[u8], name: &str) -> bool {
        self.name(buf).eq_ignore_ascii_case(name.as_bytes())
    }
}

fn span(buf: &[u8], part: &[u8]) -> (u32, u32) {
    // `part` is a slice of `buf` (httparse returns slices of its input); an empty one may point anywhere.
    match (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize) {
        Some(start) if !part.is_empty() && start + part.len() <= buf.len() => {
            (start as u32, (start + part.len()) as u32)
        }
        _ => (0, 0),
    }
}

/// A request head the fast path carries. Its fields refer to the buffer it was parsed from, which holds the
/// head at its start.
#[derive(Debug, Default, Clone)]
pub struct RequestHead {
    /// Bytes of the head (request line, fields, the empty line).
    pub len: usize,
    /// The method.
    pub method: Method,
    target: (u32, u32),
    /// The header fields, in order.
    pub fields: Vec<Field>,
    /// The body's length (`Content-Length`, 0 without one).
    pub content_length: u64,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
}

impl RequestHead {
    /// The request target (origin form: path and query).
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b str {
        // Checked to be ASCII when parsed.
        std::str::from_utf8(&buf[self.target.0 as usize..self.target.1 as usize]).unwrap_or("/")
    }

    /// The path (the target without its query).
    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b str {
        let target = self.target(buf);
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    /// The first value of the field `name` (lower case).
    pub fn get<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.fields.iter().find(|f| f.is(buf, name)).map(|f| f.value(buf))
    }

    /// Whether the request has a body.
    pub fn has_body(&self) -> bool {
        self.content_length > 0
    }
}

/// What the start of a client's buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole head yet (and shorter than [`MAX_REQUEST_HEAD`]).
    Partial,
    /// A head the fast path carries, parsed into the given [`RequestHead`].
    Fast,
    /// Anything else: malformed, too large, or outside the fast path's subset (the reason, for logs and tests).
    Unusual(&'static str),
}

/// Parses the request head at the start of `buf` into `head` and decides whether the fast path carries it.
pub fn parse_request(buf: &[u8], head: &mut RequestHead) -> Parsed {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    // hyper's server parses with the default configuration too (no obsolete line folding, single spaces).
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut req, buf, &mut storage) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            return Parsed::Unusual("head too large");
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Unusual("too many header fields"),
        Err(_) => return Parsed::Unusual("malformed head"),
    };
    if len > MAX_REQUEST_HEAD {
        return Parsed::Unusual("head too large");
    }
    if req.version != Some(1) {
        return Parsed::Unusual("not HTTP/1.1");
    }
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("POST") => Method::POST,
        Some("HEAD") => Method::HEAD,
        Some("PUT") => Method::PUT,
        Some("DELETE") => Method::DELETE,
        Some("PATCH") => Method::PATCH,
        Some("OPTIONS") => Method::OPTIONS,
        _ => return Parsed::Unusual("method"),
    };
    let Some(target) = req.path else { return Parsed::Unusual("malformed head") };
    if !is_plain_target(target.as_bytes()) {
        return Parsed::Unusual("request target");
    }
    head.len = len;
    head.method = method;
    head.target = span(buf, target.as_bytes());
    head.fields.clear();
    head.content_length = 0;
    head.close = false;
    let mut hosts = 0;
    let mut lengths = 0;
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        let value = field.value;
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                lengths += 1;
                match parse_digits(value) {
                    Some(n) => head.content_length = n,
                    None => return Parsed::Unusual("content-length"),
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => match connection_tokens(value) {
                Some(close) => head.close |= close,
                None => return Parsed::Unusual("connection options"),
            },
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                return Parsed::Unusual("transfer-encoding");
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Parsed::Unusual("upgrade"),
            6 if name.eq_ignore_ascii_case(b"expect") => return Parsed::Unusual("expect"),
            2 if name.eq_ignore_ascii_case(b"te") => return Parsed::Unusual("te"),
            // Kept for hyper, which answers such requests itself (or a component's own handler does).
            16 if name.eq_ignore_ascii_case(b"proxy-connection") => {
                return Parsed::Unusual("proxy-connection");
            }
            _ => {}
        }
        head.fields.push(Field { name: span(buf, name), value: span(buf, value) });
    }
    if hosts != 1 {
        return Parsed::Unusual("host");
    }
    if lengths > 1 {
        return Parsed::Unusual("content-length");
    }
    Parsed::Fast
}

/// Whether an origin-form target is made only of bytes that every parser on the way reads the same
/// (RFC 3986 unreserved, sub-delims, `:`, `@`, `/`, `?` and `%`); anything else is left to hyper.
fn is_plain_target(target: &[u8]) -> bool {
    target.first() == Some(&b'/')
        && target.len() <= MAX_TARGET
        && target.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'/'
                        | b'?'
                        | b'%'
                )
        })
}

/// A `Content-Length` value of plain decimal digits that fits in 63 bits.
fn parse_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// A `Connection` value naming only `close` and `keep-alive`: whether it says close. `None` for any other
/// option (which would name a hop-by-hop field to remove, or an upgrade).
fn connection_tokens(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
            return None;
        }
    }
    Some(close)
}

/// Changes made to a request head on its way upstream.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestEdit<'a> {
    /// Fields not forwarded (lower case), besides the hop-by-hop ones.
    pub remove: &'a [&'a str],
    /// A field added (name, value).
    pub add: Option<(&'a str, &'a str)>,
}

/// Writes the head that goes upstream into `out`: the request line, every end-to-end field as the client wrote
/// it (hop-by-hop fields and `edit.remove` left out), `edit.add`.
pub fn write_request(out: &mut Vec<u8>, buf: &[u8], head: &RequestHead, edit: &RequestEdit<'_>) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target(buf).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for field in &head.fields {
        let name = field.name(buf);
        let hop = match name.len() {
            10 => name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive"),
            _ => false,
        };
        if hop || edit.remove.iter().any(|r| name.eq_ignore_ascii_case(r.as_bytes())) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(field.value(buf));
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = edit.add {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a response to HEAD, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// An upstream's response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Bytes of the head.
    pub len: usize,
    /// The status.
    pub status: StatusCode,
    reason: (u32, u32),
    /// The header fields, in order.
    pub fields: Vec<Field>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the upstream keeps the connection open after this response.
    pub keep_alive: bool,
    /// Whether it carries a `Date`.
    pub has_date: bool,
}

impl Default for ResponseHead {
    fn default() -> Self {
        Self {
            len: 0,
            status: StatusCode::OK,
            reason: (0, 0),
            fields: Vec::new(),
            framing: Framing::Empty,
            keep_alive: false,
            has_date: false,
        }
    }
}

impl ResponseHead {
    /// The first value of the field `name` (lower case).
    pub fn get<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.fields.iter().find(|f| f.is(buf, name)).map(|f| f.value(buf))
    }
}

/// What the start of an upstream's buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedResponse {
    /// Not a whole head yet.
    Partial,
    /// An informational (1xx) response of this many bytes, to skip (as hyper's client does).
    Informational(usize),
    /// A final response, parsed into the given [`ResponseHead`].
    Complete,
}

/// Why an upstream's response head was refused (answered 502 `upstream_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// httparse refused it.
    #[error("invalid response head: {0}")]
    Malformed(&'static str),
    /// Longer than [`MAX_RESPONSE_HEAD`], or more fields than [`MAX_HEADERS`].
    #[error("response head too large")]
    TooLarge,
    /// A status the exchange cannot have (101 without an upgrade).
    #[error("unexpected status {0}")]
    Status(u16),
    /// Contradicting or invalid framing.
    #[error("invalid response framing: {0}")]
    Framing(&'static str),
}

/// Parses the response head at the start of `buf` into `head`; `head_request` says the request was HEAD.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    head: &mut ResponseHead,
) -> Result<ParsedResponse, ResponseError> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut res, buf, &mut storage) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return Err(ResponseError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(ParsedResponse::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(err) => return Err(ResponseError::Malformed(malformed(err))),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| ResponseError::Status(code))?;
    match code {
        101 => return Err(ResponseError::Status(101)),
        100..=199 => return Ok(ParsedResponse::Informational(len)),
        _ => {}
    }
    let http11 = res.version == Some(1);
    head.len = len;
    head.status = status;
    head.reason = span(buf, res.reason.unwrap_or("").as_bytes());
    head.fields.clear();
    head.has_date = false;
    let mut keep_alive = http11;
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut saw_close = false;
    for field in res.headers.iter() {
        let name = field.name.as_bytes();
        let value = field.value;
        match name.len() {
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if !http11 {
                    return Err(ResponseError::Framing("transfer-encoding in HTTP/1.0"));
                }
                // Chunked only when `chunked` is the last coding of the last field.
                let last = value.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                // Several equal values (in one field or several) are one length, as hyper reads them.
                for part in value.split(|&b| b == b',') {
                    let n =
                        parse_digits(part.trim_ascii()).ok_or(ResponseError::Framing("content-length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(ResponseError::Framing("content-length values differ"));
                    }
                    length = Some(n);
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                let mut tokens = value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
                if saw_close || tokens.clone().any(|t| t.eq_ignore_ascii_case(b"close")) {
                    saw_close = true;
                    keep_alive = false;
                } else if !http11 && tokens.any(|t| t.eq_ignore_ascii_case(b"keep-alive")) {
                    keep_alive = true;
                }
            }
            4 if name.eq_ignore_ascii_case(b"date") => head.has_date = true,
            _ => {}
        }
        head.fields.push(Field { name: span(buf, name), value: span(buf, value) });
    }
    head.framing = if head_request || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    head.keep_alive = keep_alive && head.framing != Framing::Close;
    Ok(ParsedResponse::Complete)
}

fn malformed(err: httparse::Error) -> &'static str {
    match err {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid new line",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid version",
    }
}

/// Changes made to a response head on its way to the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseEdit<'a> {
    /// Fields not relayed (lower case), besides the hop-by-hop ones.
    pub remove: &'a [&'a str],
    /// Tell the client the connection closes after this response.
    pub close: bool,
    /// The current `Date` value, added when the upstream sent none (as hyper's server does).
    pub date: &'a [u8],
    /// A field added (name, value).
    pub add: Option<(&'a str, &'a [u8])>,
}

/// How the body that follows a head written by [`write_response`] is framed towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body.
    Empty,
    /// Relayed as is: exactly this many bytes.
    Length(u64),
    /// Re-encoded in chunks (the upstream's chunked or close-delimited body).
    Chunked,
}

/// Writes the head that goes to the client into `out`: the upstream's status line (HTTP/1.1, its reason kept),
/// its end-to-end fields, the framing of the relayed body, `Date` if it had none, `Connection: close` if asked.
pub fn write_response(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    edit: &ResponseEdit<'_>,
) -> ClientFraming {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(&buf[head.reason.0 as usize..head.reason.1 as usize]);
    out.extend_from_slice(b"\r\n");
    let framing = match head.framing {
        Framing::Empty => ClientFraming::Empty,
        Framing::Length(n) => ClientFraming::Length(n),
        Framing::Chunked | Framing::Close => ClientFraming::Chunked,
    };
    // Fields the upstream's Connection header names are hop-by-hop too.
    let named = |name: &[u8]| {
        head.fields
            .iter()
            .filter(|f| f.is(buf, "connection"))
            .any(|f| f.value(buf).split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(name)))
    };
    let has_connection = head.fields.iter().any(|f| f.is(buf, "connection"));
    for field in &head.fields {
        let name = field.name(buf);
        let skip = match name.len() {
            2 => name.eq_ignore_ascii_case(b"te"),
            7 => name.eq_ignore_ascii_case(b"upgrade"),
            10 => name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive"),
            14 => name.eq_ignore_ascii_case(b"content-length") && framing != ClientFraming::Empty,
            16 => name.eq_ignore_ascii_case(b"proxy-connection"),
            17 => name.eq_ignore_ascii_case(b"transfer-encoding"),
            _ => false,
        };
        if skip
            || edit.remove.iter().any(|r| name.eq_ignore_ascii_case(r.as_bytes()))
            || (has_connection && named(name))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(field.value(buf));
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ClientFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ClientFraming::Empty => {}
    }
    if !head.has_date && !edit.date.is_empty() {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(edit.date);
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = edit.add {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if edit.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes a complete local answer (an error, made here) into `out`, with its body.
pub fn write_answer(
    out: &mut Vec<u8>,
    answer: &http::Response<bytes::Bytes>,
    date: &[u8],
    close: bool,
    head_request: bool,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(answer.status().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(answer.status().canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in answer.headers() {
        if name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(answer.body().len()).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(answer.body());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(raw: &str) -> RequestHead {
        let mut head = RequestHead::default();
        assert_eq!(parse_request(raw.as_bytes(), &mut head), Parsed::Fast, "{raw:?}");
        head
    }

    fn unusual(raw: &str) -> &'static str {
        let mut head = RequestHead::default();
        match parse_request(raw.as_bytes(), &mut head) {
            Parsed::Unusual(why) => why,
            other => panic!("{raw:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn plain_requests_are_carried_and_rewritten_for_the_upstream() {
        let raw = "POST /v1/chat?x=1 HTTP/1.1\r\nHost: demo\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\
                   Ebb-Proxied: activator\r\nX-Trace: a b\r\n\r\nhello";
        let head = fast(raw);
        let buf = raw.as_bytes();
        assert_eq!(head.len, raw.len() - 5);
        assert_eq!(
            (head.method.as_str(), head.target(buf), head.path(buf)),
            ("POST", "/v1/chat?x=1", "/v1/chat")
        );
        assert_eq!(head.content_length, 5);
        assert!(!head.close);
        assert_eq!(head.get(buf, "x-trace"), Some(&b"a b"[..]));
        let mut out = Vec::new();
        let edit = RequestEdit { remove: &["ebb-proxied"], add: Some(("ebb-proxied", "activator")) };
        write_request(&mut out, buf, &head, &edit);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/chat?x=1 HTTP/1.1\r\nHost: demo\r\nContent-Length: 5\r\nX-Trace: a b\r\n\
             ebb-proxied: activator\r\n\r\n"
        );
        assert!(fast("GET / HTTP/1.1\r\nhost: x\r\nconnection: Close\r\n\r\n").close);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nhost: x\r\n", &mut RequestHead::default()),
            Parsed::Partial
        );
    }

    #[test]
    fn anything_unusual_or_ambiguous_is_left_to_hyper() {
        for (raw, why) in [
            ("GET / HTTP/1.0\r\nhost: x\r\n\r\n", "not HTTP/1.1"),
            ("GET / HTTP/1.1\r\n\r\n", "host"),
            ("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", "host"),
            (
                "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
                "content-length",
            ),
            ("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5, 5\r\n\r\n", "content-length"),
            ("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +5\r\n\r\n", "content-length"),
            (
                "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
                "transfer-encoding",
            ),
            (
                "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
                "transfer-encoding",
            ),
            (
                "GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
                "connection options",
            ),
            ("GET / HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\n\r\n", "upgrade"),
            ("GET / HTTP/1.1\r\nhost: a\r\nconnection: x-secret\r\n\r\n", "connection options"),
            ("POST / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n\r\n", "expect"),
            ("GET / HTTP/1.1\r\nhost: a\r\nte: trailers\r\n\r\n", "te"),
            ("CONNECT a:443 HTTP/1.1\r\nhost: a\r\n\r\n", "method"),
            ("GET http://a/ HTTP/1.1\r\nhost: a\r\n\r\n", "request target"),
            ("GET * HTTP/1.1\r\nhost: a\r\n\r\n", "request target"),
            ("GET /a{b} HTTP/1.1\r\nhost: a\r\n\r\n", "request target"),
            ("GET /a#b HTTP/1.1\r\nhost: a\r\n\r\n", "request target"),
            ("GET / HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n", "malformed head"),
            ("GET / HTTP/1.1\r\nhost: x\r\n folded\r\n\r\n", "malformed head"),
            ("GET / HTTP/1.1\r\nhost : x\r\n\r\n", "malformed head"),
            ("GET  / HTTP/1.1\r\nhost: x\r\n\r\n", "malformed head"),
        ] {
            assert_eq!(unusual(raw), why, "{raw:?}");
        }
        let many: String = (0..70).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(unusual(&format!("GET / HTTP/1.1\r\nhost: a\r\n{many}\r\n")), "too many header fields");
        let big = format!("GET / HTTP/1.1\r\nhost: a\r\nx: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(unusual(&big), "head too large");
    }

    fn response(raw: &str, head_request: bool) -> ResponseHead {
        let mut head = ResponseHead::default();
        assert_eq!(
            parse_response(raw.as_bytes(), head_request, &mut head),
            Ok(ParsedResponse::Complete),
            "{raw}"
        );
        head
    }

    #[test]
    fn response_framing_follows_hypers_client() {
        let r = |raw: &str| response(raw, false);
        assert_eq!(r("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n").framing, Framing::Length(3));
        assert_eq!(r("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n").framing, Framing::Length(3));
        assert_eq!(
            r("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n").framing,
            Framing::Chunked
        );
        assert_eq!(r("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").framing, Framing::Close);
        assert_eq!(r("HTTP/1.1 200 OK\r\n\r\n").framing, Framing::Close);
        assert!(!r("HTTP/1.1 200 OK\r\n\r\n").keep_alive);
        assert_eq!(r("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Empty);
        assert_eq!(response("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true).framing, Framing::Empty);
        assert!(!r("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n").keep_alive);
        assert!(!r("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").keep_alive);
        assert!(r("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n").keep_alive);
        let mut head = ResponseHead::default();
        let bad = |raw: &str, head: &mut ResponseHead| parse_response(raw.as_bytes(), false, head);
        assert!(matches!(
            bad("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", &mut head),
            Err(ResponseError::Framing(_))
        ));
        assert!(matches!(
            bad("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", &mut head),
            Err(ResponseError::Framing(_))
        ));
        assert!(matches!(
            bad("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", &mut head),
            Err(ResponseError::Framing(_))
        ));
        assert!(matches!(bad("HTTP/1.1 101 Switching\r\n\r\n", &mut head), Err(ResponseError::Status(101))));
        assert!(matches!(
            bad("HTTP/1.1 200 OK\r\nbad line\r\n\r\n", &mut head),
            Err(ResponseError::Malformed(_))
        ));
        assert_eq!(
            bad("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", &mut head),
            Ok(ParsedResponse::Informational(25))
        );
        assert_eq!(bad("HTTP/1.1 200 OK\r\n", &mut head), Ok(ParsedResponse::Partial));
    }

    #[test]
    fn the_client_gets_end_to_end_fields_and_its_own_framing() {
        let raw = "HTTP/1.1 200 Fine\r\nConnection: x-hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                   Transfer-Encoding: chunked\r\nContent-Length: 7\r\nEbb-Proxy-Error: overloaded\r\nX-Keep: 2\r\n\r\n";
        let head = response(raw, false);
        let mut out = Vec::new();
        let edit = ResponseEdit {
            remove: &["ebb-proxy-error"],
            close: true,
            date: b"Thu, 01 Jan 1970 00:00:00 GMT",
            add: None,
        };
        let framing = write_response(&mut out, raw.as_bytes(), &head, &edit);
        assert_eq!(framing, ClientFraming::Chunked);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 Fine\r\nX-Keep: 2\r\ntransfer-encoding: chunked\r\ndate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
             connection: close\r\n\r\n"
        );
        let raw = "HTTP/1.1 404 Not Found\r\nDate: x\r\nContent-Length: 3\r\n\r\n";
        let head = response(raw, false);
        let mut out = Vec::new();
        let framing = write_response(
            &mut out,
            raw.as_bytes(),
            &head,
            &ResponseEdit { date: b"y", ..Default::default() },
        );
        assert_eq!(framing, ClientFraming::Length(3));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nDate: x\r\ncontent-length: 3\r\n\r\n"
        );
    }
}
