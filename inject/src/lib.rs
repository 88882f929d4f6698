//! The queue-proxy sidecar ebb adds to a service's pods: one model for `ebb inject`, which edits a Deployment's
//! pod template in a YAML file ([`inject_template`]), and for the admission webhook the autoscaler will serve.
//! It works on a `serde_json::Value` (what a YAML document is read into, and what an AdmissionReview carries).
//! Pure: no files, no network, no clock.
//!
//! - [`pod`]: the core, one pod template in and the injected one out, and what it gets;
//! - [`model`]: the typed parts of a pod that ebb reads and edits, written back into the value;
//! - [`readiness`]: whether the queue-proxy can take over the readinessProbe;
//! - [`sidecar_container`]: the queue-proxy container and its env;
//! - [`drain`]: the drain hook and the grace period;
//! - [`value`]: helpers over JSON values.

mod drain;
mod model;
mod pod;
mod readiness;
mod sidecar_container;
mod value;

pub use drain::drain_hook;
pub use model::SIDECAR;
pub use pod::{Injection, Service, inject_template};
