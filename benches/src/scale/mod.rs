//! The autoscaler at scale (`autoscaler-scale`): N services of M pods each, their queue-proxies played by one
//! [`farm`] process that answers `GET /stats` for every pod address and pushes activator stats over the real
//! ingest stream, and what the driver measures of the autoscaler under it ([`measure`]). Pods are addressed by
//! [`addresses`]: every pod has its own loopback address, as every pod has its own IP in a cluster.

pub mod addresses;
pub mod driver;
pub mod farm;
pub mod measure;
