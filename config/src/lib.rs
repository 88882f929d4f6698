//! ebb's vocabulary, shared by every component: per-service configuration from Deployment annotations, the
//! global `config-autoscaler` ConfigMap, their validation, the versioned stat wire formats, the names of
//! labels, headers and ports, service ids and modes, and the queue-proxy's inputs ([`sidecar`]). This crate does
//! no I/O.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod fields;
mod global;
pub mod groups;
mod ids;
pub mod keys;
pub mod names;
pub mod placement;
mod service;
pub mod sidecar;
pub mod spec;
pub mod targets;
pub mod value;
pub mod wire;

pub use error::{Diagnosed, FieldError, Invalid, Warning};
pub use global::GlobalConfig;
pub use ids::{Mode, ServiceId};
pub use service::{
    DEFAULT_ACTIVATION_TIMEOUT, DEFAULT_MAX_QUEUED, DEFAULT_REQUEST_BODY_TIMEOUT, DEFAULT_TIMEOUT,
    MAX_CONTAINER_CONCURRENCY, QUEUE_DEPTH_PER_SLOT, resolve_service,
};
pub use spec::{Aggregation, DataPlaneSpec, Metric, Protocol, ScalerClass, ScalingSpec, ServiceConfig};
