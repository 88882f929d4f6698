//! Where things are: the repository, the `ebb` binary under test, and a scratch directory under the target
//! directory. Cargo tells the root package's integration tests these through `env!` (`CARGO_MANIFEST_DIR`,
//! `CARGO_BIN_EXE_ebb`, `CARGO_TARGET_TMPDIR`), but not a library they use, so they are found here instead.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// The repository's root: the directory above this crate's.
pub fn repo_root() -> &'static Path {
    static ROOT: LazyLock<PathBuf> = LazyLock::new(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("test-support/ lies in the repository")
            .to_owned()
    });
    &ROOT
}

/// `relative` (`manifests/monitoring/alerts.rules.yml`) from the repository's root.
pub fn in_repo(relative: &str) -> PathBuf {
    repo_root().join(relative)
}

/// The running test binary's directory of its build profile: `target/debug` for `target/debug/deps/up-HASH`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary lies in a directory");
    if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().expect("deps/ lies in the profile's directory").to_owned()
    } else {
        deps.to_owned()
    }
}

/// The `ebb` binary under test: beside the running test binary's `deps/` directory (Cargo builds the root
/// package's binaries before running its integration tests). Panics, saying how to build it, if it is not there.
pub fn ebb() -> &'static Path {
    static EBB: LazyLock<PathBuf> = LazyLock::new(|| {
        let path = profile_dir().join("ebb");
        assert!(
            path.is_file(),
            "the ebb binary under test is not at {}: these helpers are for the root package's integration tests, \
             which `cargo test` builds it for; otherwise build it first with `cargo build --bin ebb` (with the \
             same profile as the tests)",
            path.display()
        );
        path
    });
    &EBB
}

/// A scratch directory of the tests under the target directory (`target/tmp/ebb-test-support`), created on
/// first use; it outlives the test run, like Cargo's `CARGO_TARGET_TMPDIR`.
pub fn scratch_dir() -> &'static Path {
    static SCRATCH: LazyLock<PathBuf> = LazyLock::new(|| {
        let profile = profile_dir();
        let target = profile.parent().unwrap_or(&profile);
        let dir = target.join("tmp").join("ebb-test-support");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    });
    &SCRATCH
}
