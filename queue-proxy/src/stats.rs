//! The one-second stat the autoscaler scrapes from the stats port, kept as the latest encoded record.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ebb_process::sync::Locked;

/// The latest encoded stat, shared between the once-a-second reporter and the `/stats` handler.
#[derive(Debug, Clone, Default)]
pub struct LatestStat {
    inner: Arc<Mutex<Option<Bytes>>>,
}

impl LatestStat {
    /// Replaces the latest stat.
    pub fn set(&self, encoded: Bytes) {
        *self.inner.locked() = Some(encoded);
    }

    /// The latest stat, if a period has ended yet.
    pub fn get(&self) -> Option<Bytes> {
        self.inner.locked().clone()
    }
}
