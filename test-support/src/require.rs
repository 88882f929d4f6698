//! The one rule for tests that need a real part the repository does not hold: the Kubernetes control plane
//! ([`control_plane`]) or Prometheus ([`prometheus`]). A test starts with
//! `let Some(cp) = require::control_plane() else { return };` and then:
//!
//! - the part is there: it runs;
//! - the part is absent (nothing set and nothing found where it is looked for, as on a fresh clone): it
//!   passes without running, and says so on the test process's real stderr, which the test harness does not
//!   capture, so that a plain `cargo test` shows a `SKIPPED (...)` line naming the test and how to provide
//!   the part;
//! - the part is absent and `EBB_REQUIRE_REAL_PARTS=1` (CI sets it): it fails with the same text;
//! - the part is named but unusable (`EBB_KUBE_BIN_DIR` or `EBB_PROMETHEUS` set to a path without it, or
//!   `shared/k8s/bin` whose files do not match their sums): it fails, whatever `EBB_REQUIRE_REAL_PARTS` says.

use std::io::Write as _;
use std::panic::Location;

use crate::k8s::{ControlPlane, find_kube_binaries};
use crate::part::Missing;
use crate::prometheus::{Tools, find_tools};

/// Set to `1` to make a missing part a failure instead of a skip (`0` or unset: a skip).
pub const REQUIRE_ENV: &str = "EBB_REQUIRE_REAL_PARTS";

/// The test binary's shared control plane (started on first use), or `None` when the control-plane binaries
/// are absent and [`REQUIRE_ENV`] is not `1`: the caller returns, having passed without running.
#[track_caller]
pub fn control_plane() -> Option<&'static ControlPlane> {
    match find_kube_binaries() {
        Ok(_) => Some(ControlPlane::shared()),
        Err(missing) => skip("no Kubernetes control plane", missing),
    }
}

/// Prometheus and promtool, or `None` when they are absent and [`REQUIRE_ENV`] is not `1`: the caller
/// returns, having passed without running.
#[track_caller]
pub fn prometheus() -> Option<Tools> {
    match find_tools() {
        Ok(tools) => Some(tools),
        Err(missing) => skip("no Prometheus", missing),
    }
}

/// The environment variable naming the `kubectl` to use (default: `kubectl` on the PATH).
pub const KUBECTL_ENV: &str = "EBB_KUBECTL";

/// `kubectl` (with its built-in kustomize), or `None` when there is none and [`REQUIRE_ENV`] is not `1`.
#[track_caller]
pub fn kubectl() -> Option<std::path::PathBuf> {
    let named = std::env::var_os(KUBECTL_ENV).map(std::path::PathBuf::from);
    let candidate = named.clone().unwrap_or_else(|| "kubectl".into());
    let works = std::process::Command::new(&candidate)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    match (works, named) {
        (true, _) => Some(candidate),
        (false, Some(path)) => {
            skip("no kubectl", Missing::Broken(format!("{KUBECTL_ENV}={} does not run", path.display())))
        }
        (false, None) => skip(
            "no kubectl",
            Missing::Absent(format!(
                "kubectl (1.14 or newer, for -k) was not found on the PATH; install it or set {KUBECTL_ENV}"
            )),
        ),
    }
}

/// Whether [`REQUIRE_ENV`] asks for every part.
fn required() -> bool {
    match std::env::var(REQUIRE_ENV).as_deref() {
        Err(_) | Ok("" | "0") => false,
        Ok("1") => true,
        Ok(other) => panic!("{REQUIRE_ENV}={other}: set it to 1 (a missing part fails the test) or 0"),
    }
}

/// Fails for a part named but unusable or required (the panic points at the test's call); otherwise writes
/// the notice and returns `None`.
#[track_caller]
fn skip<T>(part: &str, missing: Missing) -> Option<T> {
    let test = test_name(Location::caller());
    match missing {
        Missing::Broken(why) => panic!("{part}: {why}"),
        Missing::Absent(how) if required() => panic!("{part}, and {REQUIRE_ENV}=1 requires it: {how}"),
        Missing::Absent(how) => {
            // Straight to the process's stderr: the harness captures the print macros, not this.
            let notice =
                format!("SKIPPED ({part}): {test}\n    {how}\n    ({REQUIRE_ENV}=1 makes this a failure.)\n");
            let _ = std::io::stderr().lock().write_all(notice.as_bytes());
            None
        }
    }
}

/// `binary::test`: the test binary's name without Cargo's hash, and the test's, which the harness gives the
/// thread that runs it; the caller's `file:line` where the thread has no such name.
fn test_name(caller: &Location<'_>) -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe.as_deref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    let binary = stem.as_deref().map(|s| s.rsplit_once('-').map_or(s, |(name, _)| name)).unwrap_or("?");
    match std::thread::current().name() {
        Some(test) if test != "main" => format!("{binary}::{test}"),
        _ => format!("{binary}: {}:{}", caller.file(), caller.line()),
    }
}
