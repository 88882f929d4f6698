//! The open-files limit. A process starts with the soft limit its parent or container runtime gave it, often
//! 1,024 even where the hard limit is half a million (containerd 2, systemd services). Each of ebb's
//! processes holds a socket per connection (the autoscaler one per scraped pod, the proxies one per client and
//! upstream), so each raises its soft limit to the hard one at start, as Go's runtime does for every Go
//! program (Knative's components included).

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

/// The open-files limits of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// What the process may open now.
    pub soft: u64,
    /// What the soft limit may be raised to.
    pub hard: u64,
}

/// The open-files limits in force; `None` where the system does not say.
pub fn open_files() -> Option<OpenFiles> {
    getrlimit(Resource::RLIMIT_NOFILE).ok().map(|(soft, hard)| OpenFiles { soft, hard })
}

/// Raises the soft open-files limit to the hard one (an unlimited hard limit to the kernel's per-process
/// ceiling, `fs.nr_open`) and returns the limits in force after, with the soft limit before.
pub fn raise_open_files() -> Option<(OpenFiles, u64)> {
    let before = open_files()?;
    let ceiling = if before.hard == RLIM_INFINITY { nr_open().unwrap_or(1 << 20) } else { before.hard };
    if before.soft < ceiling {
        // Refused (a seccomp profile, say): the process carries on with what it has.
        let _ = setrlimit(Resource::RLIMIT_NOFILE, ceiling, before.hard);
    }
    Some((open_files()?, before.soft))
}

/// Raises the limit as [`raise_open_files`] does and logs the outcome: every component calls it at start,
/// after installing its log subscriber.
pub fn raise_and_log() {
    match raise_open_files() {
        Some((now, before)) if now.soft > before => {
            tracing::info!(before, soft = now.soft, hard = now.hard, "open-files limit raised");
        }
        Some((now, _)) => tracing::debug!(soft = now.soft, hard = now.hard, "open-files limit"),
        None => tracing::warn!("the open-files limit cannot be read"),
    }
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}
