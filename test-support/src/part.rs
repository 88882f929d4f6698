//! How a real part the tests run (the Kubernetes control plane, Prometheus) can be missing. What a test
//! does about it is [`crate::require`]'s rule.

use std::fmt;

/// Why a real part cannot be used.
#[derive(Debug)]
pub enum Missing {
    /// Not provided at all (nothing set, nothing found where it is looked for): the test is skipped with a
    /// notice, or fails under `EBB_REQUIRE_REAL_PARTS=1`. The text says where it was looked for and how to
    /// provide it.
    Absent(String),
    /// Provided but unusable (a variable set to a path without the part): always a failure.
    Broken(String),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Absent(text) | Missing::Broken(text) => f.write_str(text),
        }
    }
}
