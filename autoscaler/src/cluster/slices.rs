//! ebb's EndpointSlices: which API version serves them, and the labels that mark them as ebb's (the watch
//! selects on them, the request path writes them).

use kube::Client;
use kube::api::{ApiResource, GroupVersionKind};

/// The EndpointSlice label naming its Service.
pub const LABEL_SLICE_SERVICE: &str = "kubernetes.io/service-name";
/// The EndpointSlice label naming who manages it (the built-in controller leaves other values alone).
pub const LABEL_SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// ebb's value of [`LABEL_SLICE_MANAGED_BY`].
pub const SLICE_MANAGER: &str = "ebb.dev";

/// The label selector of ebb's EndpointSlices.
pub fn slice_selector() -> String {
    format!("{LABEL_SLICE_MANAGED_BY}={SLICE_MANAGER}")
}

/// `discovery.k8s.io/v1` EndpointSlices where served, else `v1beta1` (Kubernetes 1.20).
pub async fn discover_endpoint_slices(client: &Client) -> Result<ApiResource, kube::Error> {
    let groups = client.list_api_groups().await?;
    let versions: Vec<String> = groups
        .groups
        .iter()
        .find(|g| g.name == "discovery.k8s.io")
        .map(|g| g.versions.iter().map(|v| v.version.clone()).collect())
        .unwrap_or_default();
    let version = if versions.iter().any(|v| v == "v1") || versions.is_empty() { "v1" } else { "v1beta1" };
    let gvk = GroupVersionKind::gvk("discovery.k8s.io", version, "EndpointSlice");
    Ok(ApiResource::from_gvk_with_plural(&gvk, "endpointslices"))
}
