//! ebb's vocabulary, shared by every component: per-service configuration from Deployment annotations, the
//! global `config-autoscaler` ConfigMap, their validation, the versioned stat wire formats and the names of
//! labels, headers and ports. This crate does no I/O.
#![forbid(unsafe_code)]

pub mod names;
pub mod spec;
pub mod value;
pub mod wire;

pub use spec::{Aggregation, DataPlaneSpec, Metric, Protocol, ScalerClass, ScalingSpec, ServiceConfig};
