//! The activator: receives traffic for services at zero or short of burst capacity, holds it while they scale,
//! and forwards it the moment a pod can take it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod balancer;
pub mod capacity;
pub mod cli;
pub mod cold_start;
pub mod compact;
pub mod endpoints;
pub mod error;
pub mod handler;
pub mod kube_source;
pub mod metrics;
pub mod probe;
pub mod push;
pub mod registry;
pub mod retry;
pub mod routing;
pub mod server;
pub mod service;
pub mod stats;
