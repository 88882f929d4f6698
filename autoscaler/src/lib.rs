//! The KPA autoscaler around the pure decision core of [`ebb_kpa`]:
//!
//! - [`runtime`] drives the core: stat collection and scraping, a tick per service, actuation through a
//!   [`runtime::Scaler`], status and metrics. It alone does I/O and reads clocks, then passes `now` in;
//! - [`kube`] runs it as a Kubernetes controller, fed from watches and acting on Deployments and the request
//!   path;
//! - [`cli`] is the command line of the `autoscaler` binary and `ebb autoscaler`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod kube;
pub mod runtime;
