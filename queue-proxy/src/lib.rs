//! The queue-proxy: the sidecar in every serving pod. It enforces the concurrency limit with a bounded queue,
//! measures time-weighted concurrency for the autoscaler, probes the user container, owns the request
//! timeouts and drains gracefully.
//!
//! The data-plane mechanisms are public and independent of the process around them, because the activator
//! reuses them: [`breaker::Breaker`] (slots as [`breaker::Permit`]s that ride in the response body),
//! [`stats::RequestStats`] (time-weighted concurrency with guards), [`proxy::Forwarder`] (pooled HTTP/1.1 and
//! h2c forwarding with hop-by-hop handling and upgrades), [`body::TrackedBody`] (a streamed body that holds
//! its payload until it ends) and [`error`] (the one mapping from error to answer).
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod drain;
pub mod error;
pub mod h2c;
pub mod handler;
pub mod listen;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod server;
pub mod stats;
pub mod timeouts;
pub mod upstream_io;

pub use body::{BodyEnd, ProxyBody, TrackedBody};
pub use breaker::{Breaker, BreakerError, Permit};
pub use error::{ClientKind, Origin, ProxyError, error_response};
pub use proxy::{Forwarder, ForwarderOptions, PendingUpgrade};
pub use server::{Addresses, QueueProxy};
pub use stats::{RequestStats, Snapshot, StatsGuard};
pub use timeouts::{TimeoutKind, Timeouts};
