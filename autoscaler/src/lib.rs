//! The KPA autoscaler around the pure decision core of [`ebb_kpa`]:
//!
//! - [`engine`] drives the core: stat collection and scraping, a tick per service, actuation through a
//!   [`engine::Scaler`], status and metrics. It alone does I/O and reads clocks, then passes `now` in;
//! - [`cluster`] runs it as a Kubernetes controller, fed from watches and acting on Deployments and the
//!   request path;
//! - [`cli`] is the command line of the `autoscaler` binary and `ebb autoscaler`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod cluster;
pub mod engine;
