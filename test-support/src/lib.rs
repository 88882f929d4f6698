//! The harness of the root package's integration tests (`tests/*.rs`), one crate compiled once for all of
//! them. A test file uses it as `use ebb_test_support as support;`.
//!
//! - [`require`]: the one rule for tests that need a real part the repository does not hold (the Kubernetes
//!   control plane, Prometheus): run, or skip saying so, or fail under `EBB_REQUIRE_REAL_PARTS=1`.
//! - [`paths`]: the repository, the `ebb` binary under test ([`ebb`]), a scratch directory.
//! - [`k8s`]: [`ControlPlane::shared`] (etcd, kube-apiserver, kube-controller-manager once per test binary),
//!   admin and ServiceAccount clients, [`TestNamespace`] (a namespace per test, deleted on drop).
//! - [`node`]: [`NodeEmulator`], the scheduler and kubelet of a fake Node, with a [`PodRuntime`] extension
//!   point for running pods' processes.
//! - [`process_runtime`]: [`process_runtime::ProcessRuntime`], a [`PodRuntime`] running each container as a
//!   process of the `ebb` binary under test on the pod's address, with probes, hooks and ServiceAccount tokens.
//! - [`cluster`]: [`cluster::Cluster`], ebb-system installed from `manifests/` and run as real processes,
//!   the example chat service, and closed-loop load through the gateway.
//! - [`gateway`]: [`gateway::Gateway`], an ingress stand-in following a public Service's EndpointSlice.
//! - [`forward`]: [`forward::ServiceForwarder`], a Service's address for the API server (the webhook's),
//!   standing in for kube-proxy.
//! - [`autoscaler`]: the autoscaler's RBAC for a test namespace, fake pods and stats for its tests.
//! - [`crd`]: [`crd::ScalableKind`], custom kinds with a `scale` subresource standing in for workload CRDs.
//! - [`manifests`]: a tiny kustomize for `manifests/`, and the RBAC grants it holds.
//! - [`wait`]: [`wait_for`] and friends, polling with a deadline and a message saying what was awaited.
//! - [`supervisor`]: process groups that die with the test binary, however it ends.
//! - [`up`]: `ebb up` run as the user runs it, with HTTP helpers and a streaming load.
//! - [`load`]: [`load::Load`], closed-loop clients counting successes and failures.
//! - [`prometheus`]: a real Prometheus of the test's own, and the PromQL of the dashboards and alert rules.

pub mod autoscaler;
pub mod cluster;
pub mod crd;
pub mod forward;
pub mod gateway;
pub mod k8s;
pub mod load;
pub mod manifests;
pub mod node;
pub mod part;
pub mod paths;
pub mod process_runtime;
pub mod prometheus;
pub mod require;
pub mod supervisor;
pub mod up;
pub mod wait;

pub use k8s::{ControlPlane, TestNamespace};
pub use node::{NodeEmulator, PodRuntime, Readiness, RunningPod};
pub use paths::ebb;
pub use wait::wait_for;
