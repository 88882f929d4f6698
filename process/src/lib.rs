//! What every ebb process does the same way, so a fix reaches all of them: the log subscriber
//! ([`logging`]), the shutdown signal ([`signal`]), exit codes ([`exit`]), duration flags ([`flags`]), the
//! open-files limit ([`limits`]), the metrics page in the format its scraper asks for ([`exposition`]) and
//! locks that stay usable after a panic ([`sync`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod exit;
pub mod exposition;
pub mod flags;
pub mod limits;
pub mod logging;
pub mod signal;
pub mod sync;
