//! The queue-proxy sidecar ebb adds to a service's pods: one model, two entry points. `ebb inject` edits a
//! Deployment's pod template in a YAML file ([`inject_template`]); the admission webhook the autoscaler serves
//! edits a Pod as it is created ([`inject_pod`]). Both run the same code over the same form, a
//! `serde_json::Value` (what a YAML document is read into, and what an AdmissionReview carries), so a pod gets
//! the same sidecar whichever way it came. Pure: no files, no network, no clock.
//!
//! - [`pod`]: the two entry points, and what the template or pod gets;
//! - [`model`]: the typed parts of a pod that ebb reads and edits, written back into the value;
//! - [`readiness`]: whether the queue-proxy can take over the readinessProbe;
//! - [`sidecar_container`]: the queue-proxy container and its env;
//! - [`drain`]: the drain hook and the grace period;
//! - [`gate`]: the readiness gate of an entry pod of a multi-pod instance;
//! - [`value`]: helpers over JSON values.

mod drain;
mod gate;
mod model;
mod pod;
mod readiness;
mod sidecar_container;
mod value;

pub use drain::drain_hook;
pub use gate::add_instance_gate;
pub use model::SIDECAR;
pub use pod::{Injection, PodInjection, Service, inject_pod, inject_template};
