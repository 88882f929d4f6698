//! Placeholder until the decider lands; replaced by the KPA decider benchmark.
fn main() {}
