//! The HTTP/1 fast path: plain request/response traffic (the bulk of what a model server gets) is forwarded by
//! a small HTTP/1.1 implementation of its own on top of `httparse` (the parser hyper uses), one task per client
//! connection doing all of an exchange, while hyper keeps everything unusual: h2c, upgrades, chunked request
//! bodies, `Expect`, HTTP/1.0, probes, and every malformed or ambiguous request, whose connection is handed to
//! hyper before anything of it was consumed (so hyper's answers to bad input stay what they were).
//!
//! - [`head`]: parsing and writing message heads, and the rules of what the fast path carries;
//! - [`chunked`]: the chunked coding of response bodies;
//! - [`conn`]: the connection driver and the [`conn::Policy`] a component plugs in;
//! - [`pool`]: idle upstream connections;
//! - [`io`]: a connection with bytes already read, for the hand-over to hyper.

pub mod chunked;
pub mod conn;
pub mod head;
pub mod io;
pub mod pool;
