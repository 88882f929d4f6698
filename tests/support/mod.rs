//! Shared support for the end-to-end tests against a real Kubernetes control plane.
//! A test binary includes it with `mod support;`.
//!
//! - [`k8s`]: [`ControlPlane::shared`] (etcd, kube-apiserver, kube-controller-manager once per test binary),
//!   admin and ServiceAccount clients, [`TestNamespace`] (a namespace per test, deleted on drop).
//! - [`node`]: [`NodeEmulator`], the scheduler and kubelet of a fake Node, with a [`PodRuntime`] extension
//!   point for running pods' processes.
//! - [`process_runtime`]: [`process_runtime::ProcessRuntime`], a [`PodRuntime`] running each container as a
//!   process of the `ebb` binary under test on the pod's address, with probes, hooks and ServiceAccount tokens.
//! - [`cluster`]: [`cluster::Cluster`], ebb-system installed from `manifests/` and run as real processes,
//!   the example chat service, and closed-loop load through the gateway.
//! - [`gateway`]: [`gateway::Gateway`], an ingress stand-in following a public Service's EndpointSlice.
//! - [`wait`]: [`wait_for`] and friends, polling with a deadline and a message saying what was awaited.
//! - [`supervisor`]: process groups that die with the test binary, however it ends.
//! - [`up`]: `ebb up` run as the user runs it, with HTTP helpers and a streaming load.
//! - [`load`]: [`load::Load`], closed-loop clients counting successes and failures.
//! - [`prometheus`]: a real Prometheus of the test's own, and the PromQL of the dashboards and alert rules.

// Every test binary compiles this module separately and uses only part of it, so unused items are
// expected here and are not dead code.
#![allow(dead_code, unused_imports)]

pub mod autoscaler;
pub mod cluster;
pub mod gateway;
pub mod k8s;
pub mod load;
pub mod manifests;
pub mod node;
pub mod process_runtime;
pub mod prometheus;
pub mod supervisor;
pub mod up;
pub mod wait;

pub use k8s::{ControlPlane, TestNamespace};
pub use node::{NodeEmulator, PodRuntime, Readiness, RunningPod};
pub use wait::{wait_for, wait_until};
