//! What the pass remembers about each service from one pass to the next, so that it writes only on change,
//! backs off after errors and reports each problem once.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use k8s_openapi::jiff::Timestamp;

use super::backoff::Backoff;
use super::env_check::Mismatch;

/// A 64-bit hash of `annotations` under this process's random keys: what tells the pass that a service's
/// annotations changed, without a copy of them for every service (about 1 KiB each). Two different sets hash
/// alike with odds of 2^-64, and no one outside the process can aim for it.
pub(crate) fn fingerprint(annotations: &BTreeMap<String, String>) -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new).hash_one(annotations)
}

/// What the pass remembers about one service between passes.
#[derive(Debug, Default)]
pub(crate) struct ServiceState {
    /// The annotations' [`fingerprint`] and the global config generation last resolved.
    pub config_key: Option<(u64, u64)>,
    /// Whether a valid configuration was ever applied (the service is in the engine).
    pub valid: bool,
    /// `spec.replicas` last seen.
    pub seen_replicas: Option<u32>,
    /// When [`Self::seen_replicas`] was first seen at its value.
    pub seen_replicas_at: Timestamp,
    /// The replicas this replica last wrote.
    pub last_written: Option<u32>,
    /// The reason of the last change this replica applied, until written as an annotation.
    pub reason_pending: Option<String>,
    /// Since when the replicas in force have differed from the decision (a scale write is waiting); `None`
    /// while they agree. Among the services a pass must scale, the longest waiting go first.
    pub scale_waiting_since: Option<std::time::Instant>,
    /// Writes of the Deployment (scale, status annotations) after an error.
    pub deployment_writes: Backoff,
    /// Writes of the request path (public Service, EndpointSlice) after an error.
    pub path_writes: Backoff,
    /// Stuck pods already counted.
    pub blocked: HashMap<String, &'static str>,
    /// The data-plane settings of the configuration in force (set while [`Self::valid`]).
    pub data_plane: Option<ebb_config::DataPlaneSpec>,
    /// Pods whose queue-proxy env disagrees with the annotations, with what was reported.
    pub mismatched: HashMap<String, Vec<Mismatch>>,
    /// Pods running without a queue-proxy, as last reported.
    pub without_sidecar: Vec<String>,
    /// What `status.ebb.dev/sidecar` should say (pods without the sidecar or with outdated settings), written
    /// by the leader; `None`: every pod is as its annotations ask.
    pub sidecar_note: Option<String>,
    /// What `status.ebb.dev/starting-since` should say: when the oldest pod still starting was created.
    pub starting_since: Option<String>,
    /// The request path's state.
    pub path: PathState,
    /// Role group members this replica scaled: their replicas as seen then, and as written.
    pub group_written: HashMap<String, (u32, u32)>,
}

/// Per-service request-path state.
#[derive(Debug, Default)]
pub(crate) struct PathState {
    /// A foreign Service was reported.
    pub foreign: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_tells_changed_annotations_apart() {
        let a = BTreeMap::from([("ebb.dev/target".to_owned(), "5".to_owned())]);
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.insert("ebb.dev/target".to_owned(), "6".to_owned());
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&BTreeMap::new()));
    }
}
