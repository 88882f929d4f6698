//! The data plane the queue-proxy and the activator share, independent of either process: accepting
//! connections ([`listen`]), forwarding to an upstream ([`proxy`], [`h2c`], [`upstream_io`]), bodies that carry
//! what a request holds until it ends ([`body`]), the concurrency [`breaker`], time-weighted request [`stats`],
//! the request [`timeouts`], the graceful [`drain`], the HTTP/1 fast path ([`h1`]), errors classified once ([`error`]) and turned into answers
//! in one place ([`answer`]), to which each component adds its own errors; and the small endpoints every
//! component serves beside its work ([`admin`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod answer;
pub mod body;
pub mod breaker;
pub mod drain;
pub mod error;
pub mod h1;
pub mod h2c;
pub mod listen;
pub mod proxy;
pub mod stats;
pub mod timeouts;
pub mod upstream_io;
