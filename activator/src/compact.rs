//! Releasing a waiting request's share of its connection's read buffer.
//!
//! hyper parses a request head in place: its header values and its URI are slices of the connection's read
//! buffer (8 KiB), which stays allocated for as long as any of them lives. While the request waits, hyper reads
//! on into a fresh buffer to notice the client leaving, so a queued request held both: 16 KiB per held request,
//! most of the 163 MiB that 10,000 queued requests cost. Copying the head's values out before waiting lets the
//! first buffer go; a few hundred bytes are copied, only for requests that have to wait.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Uri};

/// Replaces `req`'s header values and URI with copies that share nothing with the connection's read buffer.
pub fn compact_head<B>(req: &mut Request<B>) {
    let headers = std::mem::take(req.headers_mut());
    let mut compact = HeaderMap::with_capacity(headers.len());
    let mut name = None;
    for (next, value) in headers {
        // `into_iter` names a header once, then yields its further values with `None`.
        if let Some(next) = next {
            name = Some(next);
        }
        let Some(name) = name.clone() else { continue };
        compact.append(name, copy_value(value));
    }
    *req.headers_mut() = compact;
    if let Ok(uri) = Uri::from_maybe_shared(Bytes::copy_from_slice(req.uri().to_string().as_bytes())) {
        *req.uri_mut() = uri;
    }
}

fn copy_value(value: HeaderValue) -> HeaderValue {
    match HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes())) {
        Ok(mut copy) => {
            copy.set_sensitive(value.is_sensitive());
            copy
        }
        // A value hyper accepted is valid; should it not be, the original (and its buffer) stays.
        Err(_) => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_unchanged_but_owns_its_bytes() {
        let buffer = Bytes::from_static(b"/v1/chat?stream=1 x-trace-a x-trace-b secret");
        let mut req =
            Request::builder().uri(Uri::from_maybe_shared(buffer.slice(0..17)).unwrap()).body(()).unwrap();
        let headers = req.headers_mut();
        headers.append("x-trace", HeaderValue::from_maybe_shared(buffer.slice(18..27)).unwrap());
        headers.append("x-trace", HeaderValue::from_maybe_shared(buffer.slice(28..37)).unwrap());
        let mut secret = HeaderValue::from_maybe_shared(buffer.slice(38..44)).unwrap();
        secret.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, secret);
        let before = (req.uri().clone(), req.headers().clone());

        compact_head(&mut req);

        assert_eq!((req.uri().clone(), req.headers().clone()), before);
        let traces: Vec<_> = req.headers().get_all("x-trace").iter().collect();
        assert_eq!(traces, ["x-trace-a", "x-trace-b"]);
        assert!(req.headers()[http::header::AUTHORIZATION].is_sensitive());
        // Nothing points into the original buffer any more.
        let range = buffer.as_ptr_range();
        let inside = |p: *const u8| range.contains(&p);
        assert!(!inside(req.uri().path().as_ptr()));
        assert!(req.headers().values().all(|v| !inside(v.as_bytes().as_ptr())));
    }
}
