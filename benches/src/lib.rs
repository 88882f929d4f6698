//! Shared helpers for ebb's benchmarks.
#![forbid(unsafe_code)]

pub mod scale;
