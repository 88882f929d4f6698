//! The queue-proxy: the sidecar in every serving pod. It enforces the concurrency limit with a bounded queue,
//! measures time-weighted concurrency for the autoscaler, probes the user container, owns the request
//! timeouts and drains gracefully. The data-plane mechanisms it is built from (breaker, request stats,
//! forwarding, bodies, timeouts, drain, errors) live in `ebb-http`, which the activator shares; this crate is the
//! process around them: its configuration, request pipeline, probes, auxiliary ports and metrics.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod handler;
pub mod metrics;
pub mod probe;
pub mod server;

pub use server::{Addresses, QueueProxy};
