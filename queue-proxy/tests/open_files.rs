//! The open-files limit of the real binary: a container runtime may start it with a soft limit of 1,024 under
//! a much higher hard one, and every client and upstream connection is a descriptor.

mod common;

use common::*;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The soft and hard "Max open files" of process `pid`.
fn open_files_of(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("an open-files line");
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

#[tokio::test]
async fn the_proxy_raises_its_soft_open_files_limit_to_the_hard_one() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(hard > 256, "this test needs a hard open-files limit above 256, not {hard}");
    // The child inherits this process's limits: a low soft one, as a container runtime may set.
    setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();
    let upstream = upstream(|_| async { response(200, full("ok")) }).await;
    let proxy = BinaryProxy::start(upstream, &[]).await;
    assert_eq!(open_files_of(proxy.pid()), (hard, hard));
}
