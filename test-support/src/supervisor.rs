//! Processes that must not outlive the test binary, however it ends (a failed test, a panic in a static's
//! initializer, SIGKILL from a CI timeout).
//!
//! A [`Supervisor`] is a small `bash` process in a process group of its own. Every process spawned through
//! [`Supervisor::spawn`] joins that group at `exec` time (`Command::process_group`, no `unsafe`), so no window
//! exists where it runs unsupervised. The supervisor reads its stdin, a pipe whose only writer is the test
//! process (the write end is close-on-exec, so no other child inherits it). When the pipe reaches end of
//! file, because the test process closed it ([`Supervisor::shutdown`]) or died, the supervisor sends SIGTERM
//! to the group, SIGKILL to what is left half a second later, removes its directory and exits. No polling of
//! the test process is needed, and cleanup starts at once.
//!
//! Statics are never dropped, so the shared control plane relies on this at the end of every test binary.
//! Issue 8's pod processes can be spawned through the same kind of supervisor.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The supervisor's script. `$1` is the directory to remove at the end (empty: remove nothing). Each stdin
/// line is the pid of a supervised process, so it can wait for those to be gone before removing the
/// directory; processes in the group that it was not told about still get SIGTERM and the final SIGKILL.
/// SIGTERM first, SIGKILL half a second later: everything is gone within about a second.
const SCRIPT: &str = r#"
dir=$1
trap '' INT TERM HUP PIPE
pids=
while read -r pid; do pids="$pids $pid"; done
kill -TERM -- -$$ 2>/dev/null
# A zombie (dead, not reaped yet) counts as gone.
alive() {
  for p in $pids; do
    s=$(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null) && [ -n "$s" ] && [ "$s" != Z ] && return 0
  done
  return 1
}
i=0; while alive && [ $i -lt 5 ]; do sleep 0.1; i=$((i+1)); done
for p in $pids; do kill -KILL "$p" 2>/dev/null; done
i=0; while alive && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
[ -n "$dir" ] && rm -rf -- "$dir"
kill -KILL -- -$$
"#;

/// A process group whose members die when the test process ends or [`Supervisor::shutdown`] is called.
pub struct Supervisor {
    child: Mutex<Child>,
    /// The write end of the supervisor's stdin; dropping it starts the teardown.
    stdin: Mutex<Option<ChildStdin>>,
    pgid: i32,
    dir: Option<PathBuf>,
}

impl Supervisor {
    /// Starts a supervisor that removes `dir` (when given) after its processes are gone. Set
    /// `EBB_KUBE_KEEP=1` to keep the directory (component logs) for debugging.
    pub fn start(dir: Option<&Path>) -> std::io::Result<Supervisor> {
        let keep = std::env::var_os("EBB_KUBE_KEEP").is_some_and(|v| !v.is_empty() && v != "0");
        let dir_arg = match dir {
            Some(dir) if !keep => dir.as_os_str().to_owned(),
            _ => Default::default(),
        };
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(SCRIPT)
            .arg("ebb-test-supervisor")
            .arg(dir_arg)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take();
        let pgid = i32::try_from(child.id()).expect("pid fits in i32");
        Ok(Supervisor {
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            pgid,
            dir: dir.map(Path::to_path_buf),
        })
    }

    /// Spawns `command` as a member of the supervised group.
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<Child> {
        let mut stdin = self.stdin.lock().unwrap();
        let Some(pipe) = stdin.as_mut() else {
            return Err(std::io::Error::other("supervisor already shut down"));
        };
        let child = command.process_group(self.pgid).spawn()?;
        // The child is in the group already; the pid only lets the supervisor wait for it before it
        // removes the directory.
        let _ = writeln!(pipe, "{}", child.id());
        Ok(child)
    }

    /// The directory the supervisor removes at the end.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Tears the group down now: kills and reaps `children` (the caller's handles to supervised processes,
    /// so the supervisor does not wait on zombies), then lets the supervisor clean up and waits for it, at
    /// most a few seconds.
    pub fn shutdown(&self, children: &mut [Child]) {
        for child in children.iter_mut() {
            let _ = child.kill();
        }
        for child in children.iter_mut() {
            let _ = child.wait();
        }
        drop(self.stdin.lock().unwrap().take());
        let mut supervisor = self.child.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match supervisor.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown(&mut []);
    }
}
