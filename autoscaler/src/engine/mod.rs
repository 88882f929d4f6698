//! The autoscaler's engine: stat collection, ticking and actuation around the pure decision core of
//! [`ebb_kpa`], shared by local mode (`ebb up`) and the Kubernetes controller ([`crate::cluster`]). It is the
//! part that does I/O and reads the clock; called `engine` (not `runtime`) so that it is not taken for
//! tokio's runtime, which it runs on.
//!
//! - A source (the local pod manager, or a Kubernetes watch) tells the [`Autoscaler`] the services
//!   ([`Autoscaler::set_service`]) and their pods ([`Autoscaler::set_pods`]: stats address, readiness, age).
//! - Every second it scrapes a sample of each service's ready pods (bounded by a timeout), takes out the load
//!   the activator proxied, adds the activators' stats ([`Autoscaler::ingest`]) and records the total.
//! - Every [`TICK_INTERVAL`](ebb_kpa::TICK_INTERVAL) it decides for every service, and at once when an
//!   activator's stat arrives for a service at zero. Each decision is one log line, a [`DecisionRecord`] kept
//!   in a short history, and a [`ServiceStatus`]; changes of replicas or mode go to the [`Scaler`].

mod autoscaler;
pub mod collect;
pub mod controller;
pub mod debug;
pub mod metrics;
mod scaler;
pub mod scrape;

pub use autoscaler::{Autoscaler, Options, PodTarget, kept_connections_allowed};
pub use controller::{Actions, DecisionRecord, ServiceController, ServiceStatus, Why};
pub use metrics::{Metrics, ServiceSeries};
pub use scaler::Scaler;
pub use scrape::{ScrapeError, Scraper};
