//! The inject core behind the webhook: the same model and code as `ebb inject`, called on a Pod.
//!
//! The core lives in the `ebb` command's crate for now, which this crate cannot depend on; `ebb autoscaler`
//! hands it over at start ([`set_injector`]). The `autoscaler` binary alone has none, and its webhook
//! refuses labelled pods saying so.

use std::sync::OnceLock;

use std::collections::BTreeMap;

use ebb_config::GlobalConfig;
use serde_json::Value;

/// The service a pod belongs to.
pub struct Service<'a> {
    /// Its name (the Deployment's).
    pub name: &'a str,
    /// The Deployment's annotations.
    pub annotations: &'a BTreeMap<String, String>,
    /// `config-autoscaler`.
    pub global: &'a GlobalConfig,
}

/// An injected pod.
pub struct Injected {
    /// The pod with the queue-proxy.
    pub pod: Value,
    /// What the user should know.
    pub warnings: Vec<String>,
}

/// The inject core: the queue-proxy of `service`, running `image`, added to `pod`, or every problem.
pub type Injector = fn(pod: &Value, service: &Service<'_>, image: &str) -> Result<Injected, Vec<String>>;

static INJECTOR: OnceLock<Injector> = OnceLock::new();

/// Sets the process's inject core (once; later calls are ignored).
pub fn set_injector(injector: Injector) {
    let _ = INJECTOR.set(injector);
}

/// Injects the queue-proxy of `service`, running `image`, into `pod`.
pub fn pod(pod: &Value, service: &Service<'_>, image: &str) -> Result<Injected, Vec<String>> {
    match INJECTOR.get() {
        Some(inject) => inject(pod, service, image),
        None => Err(vec![
            "this autoscaler has no inject core (the `autoscaler` binary); run `ebb autoscaler`, as the image does"
                .into(),
        ]),
    }
}
