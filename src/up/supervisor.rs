//! `ebb pod-supervisor` (hidden): one local pod, a queue-proxy and the service's command, each in its own
//! process group. `ebb up` starts one per pod with a pipe on its stdin and never writes to it: when `ebb up`
//! dies, however it died (SIGKILL included), the pipe closes and the supervisor kills both groups and exits.
//! That is the orphan guarantee without `unsafe` (no `prctl(PR_SET_PDEATHSIG)` in a `pre_exec`).
//!
//! - SIGTERM (a scale-down): SIGTERM to the queue-proxy, which drains; once it exited (or the grace period
//!   ran out), SIGTERM to the command's group; SIGKILL to both groups when the grace period is over.
//! - stdin closed (`ebb up` is gone): SIGTERM to both groups, SIGKILL after a second.
//! - Either process exits on its own: the other's group is stopped the same way, and the supervisor exits 1,
//!   so `ebb up` sees the pod die and replaces it.
//!
//! A pod of a role other than a service's entry has no queue-proxy (it takes no traffic from the gateway): its
//! supervisor runs the command alone, the same way.
//!
//! The supervisor tells `ebb up` what it does on its stdout, one JSON line each ([`Report`]): the process group
//! of each child as soon as it runs, the queue-proxy's first line (its bound addresses), and why the pod ended.
//! The groups let `ebb up` kill the pod's processes itself when the supervisor dies without doing so (SIGKILL).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

use super::config;

/// What a supervisor runs, passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The `ebb` binary.
    pub exe: String,
    /// Arguments after `ebb queue-proxy`; `None` for a pod without one (a role other than the entry).
    pub queue_proxy: Option<Vec<String>>,
    /// The service's command.
    pub command: config::Command,
    /// Environment of the command (`HOST`, `PORT`, the service's `env`).
    pub env: BTreeMap<String, String>,
    /// How long a terminating pod may take before it is killed.
    pub grace_ms: u64,
}

/// A line the supervisor writes on its stdout for `ebb up`. The command's own stdout goes there too, so other
/// lines are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Report {
    /// A child's process group (its pid): `ebb up` kills it when the supervisor exits.
    Group {
        /// The group id.
        ebb_group: i32,
    },
    /// Why the pod ended, e.g. "`false` exited with status 1".
    Exit {
        /// The reason.
        ebb_exit: String,
    },
    /// The queue-proxy's addresses, its first line copied as is.
    Addrs(ProxyAddrs),
}

/// The addresses a queue-proxy prints when it listens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ProxyAddrs {
    /// Requests.
    pub data: std::net::SocketAddr,
    /// The autoscaler's stats.
    pub stats: std::net::SocketAddr,
    /// Prometheus metrics.
    pub metrics: std::net::SocketAddr,
}

/// Writes one line on stdout (the command shares it: one `write` per line keeps lines whole).
fn report_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

fn report(report: &Report) {
    if let Ok(line) = serde_json::to_string(report) {
        report_line(&line);
    }
}

/// Arguments of `ebb pod-supervisor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod, as JSON.
    #[arg(long)]
    spec: String,
}

/// Runs one pod until it is told to stop, `ebb up` goes away, or one of its processes exits.
pub fn run(args: Args) -> ExitCode {
    let spec: Spec = match serde_json::from_str(&args.spec) {
        Ok(spec) => spec,
        Err(err) => {
            eprintln!("ebb pod-supervisor: bad --spec: {err}");
            return ExitCode::from(ebb_process::exit::USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ebb pod-supervisor: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(supervise(spec));
    // The stdin reader sits in a blocking read that only `ebb up` closing the pipe ends: do not wait for it.
    runtime.shutdown_background();
    code
}

fn group(child: &Child) -> Option<Pid> {
    child.id().map(|id| Pid::from_raw(id as i32))
}

fn signal_group(pgid: Option<Pid>, signal: Signal) {
    if let Some(pgid) = pgid {
        // ESRCH: the group is already gone.
        let _ = killpg(pgid, signal);
    }
}

async fn supervise(spec: Spec) -> ExitCode {
    let grace = Duration::from_millis(spec.grace_ms);
    let mut user = user_command(&spec);
    user.process_group(0);
    let user = match user.spawn() {
        Ok(child) => child,
        Err(err) => return fail(format!("cannot start {}: {err}", describe_command(&spec.command))),
    };
    let user_group = group(&user);
    if let Some(pgid) = user_group {
        report(&Report::Group { ebb_group: pgid.as_raw() });
    }
    let mut proxy = None;
    if let Some(args) = &spec.queue_proxy {
        let mut command = Command::new(&spec.exe);
        command.arg("queue-proxy").args(args).stdin(Stdio::null()).stdout(Stdio::piped());
        command.process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                let code = fail(format!("cannot start the queue-proxy: {err}"));
                signal_group(user_group, Signal::SIGKILL);
                return code;
            }
        };
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(copy_addresses(stdout));
        }
        proxy = Some(child);
    }
    let proxy_group = proxy.as_ref().and_then(group);
    if let Some(pgid) = proxy_group {
        report(&Report::Group { ebb_group: pgid.as_raw() });
    }
    let pod = Processes { proxy, proxy_group, user, user_group };
    let term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            eprintln!("ebb pod-supervisor: cannot handle SIGTERM: {err}");
            pod.kill_all();
            return ExitCode::FAILURE;
        }
    };
    pod.watch(term, grace, &spec.command).await
}

/// The service's command: a shell line or an argv, with the pod's env and `EBB` (the `ebb` binary).
fn user_command(spec: &Spec) -> Command {
    let mut user = match &spec.command {
        config::Command::Shell(line) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(line);
            c
        }
        config::Command::Argv(argv) => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    user.envs(&spec.env).env("EBB", &spec.exe).stdin(Stdio::null());
    user
}

/// Reports why the pod could not start; the supervisor's exit code.
fn fail(reason: String) -> ExitCode {
    eprintln!("ebb pod-supervisor: {reason}");
    report(&Report::Exit { ebb_exit: reason });
    ExitCode::FAILURE
}

/// Copies the queue-proxy's address line, then keeps its stdout drained.
async fn copy_addresses(stdout: tokio::process::ChildStdout) {
    let mut lines = BufReader::new(stdout).lines();
    if let Ok(Some(line)) = lines.next_line().await {
        report_line(&line);
    }
    while let Ok(Some(_)) = lines.next_line().await {}
}

/// Returns once `ebb up` is gone: its end of our stdin closed.
async fn parent_gone() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The pod's two processes (or its command alone), each leading its own process group.
struct Processes {
    proxy: Option<Child>,
    proxy_group: Option<Pid>,
    user: Child,
    user_group: Option<Pid>,
}

impl Processes {
    fn kill_all(&self) {
        kill_both(self.proxy_group, self.user_group);
    }

    /// Waits for `ebb up` to go, SIGTERM, or either process to exit, and stops the pod accordingly.
    async fn watch(
        self,
        mut term: tokio::signal::unix::Signal,
        grace: Duration,
        command: &config::Command,
    ) -> ExitCode {
        let Self { mut proxy, proxy_group, mut user, user_group } = self;
        let kill_all = || kill_both(proxy_group, user_group);
        tokio::select! {
            () = parent_gone() => {
                signal_group(proxy_group, Signal::SIGTERM);
                signal_group(user_group, Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(1);
                let _ = tokio::time::timeout_at(deadline, async { let _ = tokio::join!(exited(&mut proxy), user.wait()); }).await;
                kill_all();
                ExitCode::SUCCESS
            }
            _ = term.recv() => {
                let deadline = Instant::now() + grace;
                signal_group(proxy_group, Signal::SIGTERM);
                if proxy.is_some() {
                    let _ = tokio::time::timeout_at(deadline, wait(&mut proxy)).await;
                }
                signal_group(user_group, Signal::SIGTERM);
                let _ = tokio::time::timeout_at(deadline, user.wait()).await;
                kill_all();
                let _ = timeout(Duration::from_secs(1), async { let _ = tokio::join!(exited(&mut proxy), user.wait()); }).await;
                ExitCode::SUCCESS
            }
            status = wait(&mut proxy) => {
                let reason = format!("the queue-proxy {}", describe(status));
                eprintln!("ebb pod-supervisor: {reason}");
                report(&Report::Exit { ebb_exit: reason });
                signal_group(user_group, Signal::SIGTERM);
                let _ = timeout(Duration::from_secs(1), user.wait()).await;
                kill_all();
                ExitCode::FAILURE
            }
            status = user.wait() => {
                let reason = format!("{} {}", describe_command(command), describe(status));
                eprintln!("ebb pod-supervisor: {reason}");
                report(&Report::Exit { ebb_exit: reason });
                signal_group(proxy_group, Signal::SIGTERM);
                let _ = timeout(Duration::from_secs(1), wait(&mut proxy)).await;
                kill_all();
                ExitCode::FAILURE
            }
        }
    }
}

/// Waits for the queue-proxy to exit; never returns for a pod without one.
async fn wait(proxy: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match proxy {
        Some(proxy) => proxy.wait().await,
        None => std::future::pending().await,
    }
}

/// Waits for the queue-proxy to be gone; at once for a pod without one.
async fn exited(proxy: &mut Option<Child>) {
    if let Some(proxy) = proxy {
        let _ = proxy.wait().await;
    }
}

/// SIGKILL to both groups of a pod.
fn kill_both(proxy_group: Option<Pid>, user_group: Option<Pid>) {
    signal_group(proxy_group, Signal::SIGKILL);
    signal_group(user_group, Signal::SIGKILL);
}

/// "exited with status 1", "was killed by SIGKILL".
fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => match Signal::try_from(signal) {
                Ok(signal) => format!("was killed by {signal}"),
                Err(_) => format!("was killed by signal {signal}"),
            },
            (None, None) => status.to_string(),
        },
        Err(err) => format!("could not be waited for: {err}"),
    }
}

/// The command as the user wrote it, in backquotes.
fn describe_command(command: &config::Command) -> String {
    match command {
        config::Command::Shell(line) => format!("`{line}`"),
        config::Command::Argv(argv) => format!("`{}`", argv.join(" ")),
    }
}
