//! Fuzzing the HTTP/1 fast path's parsers (`ebb_http::h1`) with proptest, over arbitrary bytes and over valid
//! requests with random damage. The properties: nothing panics; a head the fast path carries is one that hyper
//! (which serves every other request) reads the same way, field for field, so no request can mean one thing to
//! the fast path and another to hyper or to the upstream; what the fast path writes upstream parses back to the
//! same request; the chunked decoder gives the same bytes however its input is split.

use std::sync::{Arc, Mutex};

use ebb_http::h1::chunked::{self, Decoder};
use ebb_http::h1::head::{
    self, Framing, Parsed, ParsedResponse, RequestEdit, RequestHead, ResponseEdit, ResponseHead,
};
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

/// What hyper's HTTP/1 server makes of `bytes`: the first request's method, target, fields and body length, or
/// `None` when it answers or drops the connection without a request.
type HyperView = (String, String, Vec<(String, Vec<u8>)>, Option<u64>);

fn hyper_reads(runtime: &tokio::runtime::Runtime, bytes: &[u8]) -> Option<HyperView> {
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let seen: Arc<Mutex<Option<HyperView>>> = Arc::default();
        let record = seen.clone();
        // Recorded when hyper calls the service, which it does as soon as it has the head (it may drop the
        // service's future unpolled once it sees the input end).
        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let mut slot = record.lock().unwrap();
            if slot.is_none() {
                let fields = req
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                    .collect();
                let length = hyper::body::Body::size_hint(req.body()).exact();
                *slot = Some((req.method().to_string(), req.uri().to_string(), fields, length));
            }
            async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(
                    http_body_util::Empty::<bytes::Bytes>::new(),
                ))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
        seen.lock().unwrap().take()
    })
}

/// Checks every property of one input.
fn check_request(runtime: &tokio::runtime::Runtime, bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut head = RequestHead::default();
    let parsed = head::parse_request(bytes, &mut head);
    if parsed != Parsed::Fast {
        return Ok(());
    }
    prop_assert!(head.len <= bytes.len());
    let target = head.target(bytes).to_owned();
    prop_assert!(target.starts_with('/'));
    // hyper reads the same request.
    let hyper = hyper_reads(runtime, bytes);
    prop_assert!(
        hyper.is_some(),
        "hyper refused a request the fast path carries: {:?}",
        String::from_utf8_lossy(bytes)
    );
    let (method, uri, fields, length) = hyper.unwrap();
    prop_assert_eq!(method.as_str(), head.method.as_str());
    prop_assert_eq!(uri, target.clone());
    let ours: Vec<(String, Vec<u8>)> = head
        .fields
        .iter()
        .map(|f| (String::from_utf8_lossy(f.name(bytes)).to_ascii_lowercase(), f.value(bytes).to_vec()))
        .collect();
    let mut theirs = fields.clone();
    let mut sorted_ours = ours.clone();
    theirs.sort();
    sorted_ours.sort();
    prop_assert_eq!(&sorted_ours, &theirs, "fields differ for {:?}", String::from_utf8_lossy(bytes));
    prop_assert_eq!(length.unwrap_or(0), head.content_length, "body length differs");
    prop_assert_eq!(fields.iter().filter(|(n, _)| n == "host").count(), 1);

    // What goes upstream is the same request, hop-by-hop fields and the removed ones aside.
    let mut out = Vec::new();
    let edit = RequestEdit { remove: &["ebb-proxied"], add: Some(("ebb-proxied", "activator")) };
    head::write_request(&mut out, bytes, &head, &edit);
    let mut again = RequestHead::default();
    prop_assert_eq!(
        head::parse_request(&out, &mut again),
        Parsed::Fast,
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    prop_assert_eq!(again.len, out.len());
    prop_assert_eq!(again.method.as_str(), head.method.as_str());
    prop_assert_eq!(again.target(&out), target.as_str());
    prop_assert_eq!(again.content_length, head.content_length);
    let hop = ["connection", "keep-alive", "ebb-proxied"];
    let expected: Vec<(String, Vec<u8>)> =
        ours.into_iter().filter(|(n, _)| !hop.contains(&n.as_str())).collect();
    let forwarded: Vec<(String, Vec<u8>)> = again
        .fields
        .iter()
        .map(|f| (String::from_utf8_lossy(f.name(&out)).to_ascii_lowercase(), f.value(&out).to_vec()))
        .filter(|(n, _)| n != "ebb-proxied")
        .collect();
    prop_assert_eq!(forwarded, expected);
    Ok(())
}

/// A valid request of the fast path's kind, with a body length that matches what follows the head.
fn valid_request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]);
    let path = "/[a-zA-Z0-9._~%/?=&-]{0,40}";
    let extra = prop::collection::vec(
        (
            prop::sample::select(vec![
                "x-trace",
                "content-type",
                "accept",
                "connection",
                "keep-alive",
                "ebb-proxied",
                "user-agent",
                "transfer-encoding",
                "content-length",
                "host",
                "upgrade",
                "te",
                "expect",
                "x-a",
            ]),
            "[ -~]{0,20}",
        ),
        0..6,
    );
    let body = prop::collection::vec(any::<u8>(), 0..64);
    (method, path, extra, body).prop_map(|(method, path, extra, body)| {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: demo\r\ncontent-length: {}\r\n", body.len());
        for (name, value) in extra {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str("\r\n");
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(&body);
        raw
    })
}

/// Damage: bytes replaced, inserted or removed, favouring the ones that delimit HTTP/1.
fn mutated_request() -> impl Strategy<Value = Vec<u8>> {
    let special = prop::sample::select(vec![
        b' ', b'\t', b'\r', b'\n', b':', b',', b'0', b'9', 0, 0x7f, 0x80, 0xff, b'a', b'/',
    ]);
    let edit = (0usize..4, any::<prop::sample::Index>(), special);
    (valid_request(), prop::collection::vec(edit, 1..5)).prop_map(|(mut raw, edits)| {
        for (kind, at, byte) in edits {
            let i = at.index(raw.len().max(1)).min(raw.len());
            match kind {
                0 if i < raw.len() => raw[i] = byte,
                1 => raw.insert(i, byte),
                2 if i < raw.len() => {
                    raw.remove(i);
                }
                _ => raw.insert(i, byte),
            }
        }
        raw
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_fool_the_request_parser(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let runtime = runtime();
        check_request(&runtime, &bytes)?;
        // Arbitrary bytes after a valid request line too.
        let mut framed = b"POST /x HTTP/1.1\r\nhost: a\r\n".to_vec();
        framed.extend_from_slice(&bytes);
        check_request(&runtime, &framed)?;
    }

    #[test]
    fn damaged_requests_are_carried_only_when_hyper_reads_them_the_same(raw in mutated_request()) {
        check_request(&runtime(), &raw)?;
    }

    #[test]
    fn valid_requests_are_carried_unless_they_need_hyper(raw in valid_request()) {
        let runtime = runtime();
        check_request(&runtime, &raw)?;
    }

    #[test]
    fn the_chunked_decoder_does_not_depend_on_how_its_input_is_split(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        split in any::<prop::sample::Index>(),
    ) {
        let whole = decode(&[&bytes]);
        let at = split.index(bytes.len() + 1);
        let (a, b) = bytes.split_at(at);
        prop_assert_eq!(decode(&[a, b]), whole);
    }

    #[test]
    fn chunked_bodies_round_trip(pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8)) {
        let mut encoded = Vec::new();
        for piece in &pieces {
            chunked::encode_chunk(&mut encoded, piece);
        }
        encoded.extend_from_slice(chunked::LAST_CHUNK);
        let (data, done, used) = decode(&[&encoded]).unwrap();
        prop_assert!(done);
        prop_assert_eq!(used, encoded.len());
        prop_assert_eq!(data, pieces.concat());
    }

    #[test]
    fn response_heads_never_panic_and_rewrite_to_valid_heads(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        head_request in any::<bool>(),
    ) {
        let mut framed = b"HTTP/1.1 200 OK\r\n".to_vec();
        framed.extend_from_slice(&bytes);
        for input in [&bytes[..], &framed[..]] {
            let mut head = ResponseHead::default();
            if let Ok(ParsedResponse::Complete) = head::parse_response(input, head_request, &mut head) {
                let mut out = Vec::new();
                let edit = ResponseEdit { remove: &["ebb-proxy-error"], close: true, date: b"Thu, 01 Jan 1970 00:00:00 GMT", add: None };
                head::write_response(&mut out, input, &head, &edit);
                let mut again = ResponseHead::default();
                prop_assert_eq!(head::parse_response(&out, head_request, &mut again), Ok(ParsedResponse::Complete));
                prop_assert_eq!(again.status, head.status);
                match head.framing {
                    Framing::Length(n) => prop_assert_eq!(again.framing, Framing::Length(n)),
                    Framing::Chunked | Framing::Close => prop_assert_eq!(again.framing, Framing::Chunked),
                    Framing::Empty => prop_assert_eq!(again.framing, Framing::Empty),
                }
                prop_assert!(again.get(&out, "ebb-proxy-error").is_none());
            }
        }
    }
}

/// Decodes `pieces` in turn: the data, whether the body ended, and the bytes consumed.
fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool, usize), chunked::ChunkError> {
    let mut decoder = Decoder::new();
    let mut data = Vec::new();
    let mut used = 0;
    for piece in pieces {
        if decoder.is_done() {
            break;
        }
        used += decoder.decode(piece, |d| data.extend_from_slice(d))?;
    }
    Ok((data, decoder.is_done(), used))
}
