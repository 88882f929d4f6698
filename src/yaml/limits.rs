//! How much YAML ebb reads, and how it reads it. Every input of `ebb check`, `ebb inject` and `ebb up -f` may be
//! hostile (a file from elsewhere, a pipe, a CI job's artifact): whatever it holds, reading it takes bounded
//! memory and time and ends in a clear error, never a panic or an exhausted machine.
//!
//! The limits are far above any real set of manifests (the largest CRD bundles are a few MiB, a few hundred
//! thousand nodes, and about 30 levels deep) and below what would hurt: serde-saphyr reads about 4 MB of
//! manifests a second in a release build, so an input at the limits takes seconds and about 150 MB.

use serde_saphyr::{MergeKeyPolicy, NonFiniteFloatPolicy, Options};

/// The most bytes of YAML read from one input: larger inputs are not read past this.
pub const MAX_INPUT_BYTES: usize = 32 << 20;
/// The deepest nesting of mappings and sequences. Parsing recurses per level (about 20 KiB of stack per level in
/// a debug build), so 64 levels stay within a 2 MiB thread stack (a test's, a tokio worker's); real manifests
/// stay under about 30.
pub const MAX_DEPTH: usize = 64;
/// The most nodes (scalars, mappings, sequences), aliases' expansions included: about 32 MiB of dense manifests.
pub const MAX_NODES: usize = 2_000_000;
/// The most parser events (a node, or the end of a collection or document).
pub const MAX_EVENTS: usize = 2 * MAX_NODES;
/// The most documents in one stream.
pub const MAX_DOCUMENTS: usize = 10_000;
/// The most nodes that aliases may expand to, in all: what stops an alias bomb (a billion laughs) early.
/// Manifests rarely use anchors, and then for a few labels or an env list.
pub const MAX_ALIAS_EXPANSION: usize = 100_000;
/// The most bytes of scalar text, aliases' expansions included.
pub const MAX_SCALAR_BYTES: usize = MAX_INPUT_BYTES;

/// The options of every YAML read, so that `ebb check`, `ebb inject` and `ebb up -f` agree on what a file
/// means.
///
/// Values read as YAML 1.2 core, as serde_yaml read them before and as `kubectl` sends them to the API server
/// for the cases that matter: `yes`, `on` and `0755` are strings, `true` and `7` are not; `.inf` and `.nan`
/// stay text (JSON has no such numbers). Duplicate keys are errors. Merge keys (`<<: *base`) are expanded, as
/// `kubectl` expands them.
pub fn options() -> Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_events: MAX_EVENTS,
            max_documents: MAX_DOCUMENTS,
            max_total_scalar_bytes: MAX_SCALAR_BYTES,
            max_total_comment_bytes: MAX_INPUT_BYTES,
            max_recorded_anchor_events: MAX_NODES,
            max_recorded_anchor_bytes: MAX_INPUT_BYTES,
            // The expansion limit below bounds aliases exactly; this heuristic would also refuse one anchor
            // used a hundred times.
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_EXPANSION,
        },
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        non_finite_float_policy: NonFiniteFloatPolicy::AsString,
        merge_keys: MergeKeyPolicy::Merge,
        // One line per problem: ebb prints the location itself.
        with_snippet: false,
    }
}
