//! A real Kubernetes v1.20.2 control plane for end-to-end tests: etcd, kube-apiserver and
//! kube-controller-manager on free loopback ports, in a temporary directory, started once per test binary
//! ([`ControlPlane::shared`]), with a namespace per test ([`TestNamespace`]). There is no scheduler and no
//! kubelet: the [`crate::node`] emulator binds pods and writes their status.
//!
//! The binaries are not in the repository. They come from `$EBB_KUBE_BIN_DIR` (the three, uncompressed, as
//! in the official Kubernetes v1.20.2 server release and etcd 3.4), else from `shared/k8s/bin` beside the
//! repository (`etcd.xz`, `kube-apiserver.xz`, `kube-controller-manager.xz` and their `SHA256SUMS`), which
//! is unpacked under the target directory. Tests reach them through [`crate::require::control_plane`].
//!
//! The processes run under a [`Supervisor`], so they die with the test binary however it ends, and the
//! directory is removed. Each test builds its own [`kube::Client`] ([`ControlPlane::client`]) because every
//! `#[tokio::test]` has its own runtime and a client is bound to the runtime that built it.

use std::collections::BTreeMap;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::part::Missing;
use super::paths::{repo_root, scratch_dir};
use super::supervisor::Supervisor;
use super::wait::{try_wait_for, wait_for};

/// Environment variable naming a directory with ready-to-run `etcd`, `kube-apiserver` and
/// `kube-controller-manager` binaries; when unset, the xz files of `shared/k8s/bin` are unpacked.
pub const BIN_DIR_ENV: &str = "EBB_KUBE_BIN_DIR";
/// Environment variable naming the `shared` directory (default: `shared/` beside the repository), for
/// instance an empty one to see what the tests do on a fresh clone.
pub const SHARED_DIR_ENV: &str = "EBB_SHARED_DIR";
/// The three binaries a control plane needs.
pub const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];
/// How long the API server and then the controller manager may take to become ready (about 2 s each when
/// the machine is idle; much more while other test binaries compile beside it).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a namespace's `default` ServiceAccount and its token may take to appear.
const NAMESPACE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for a cleanup request made from `Drop`.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Controllers of v1.20 that need a cloud, a kubelet or a scheduler that the test cluster does not have.
const CONTROLLERS: &str = "*,-nodeipam,-nodelifecycle,-attachdetach,-persistentvolume-binder,\
                           -persistentvolume-expander,-ttl,-cloud-node-lifecycle,-route,-service";
/// Label put on every namespace made by [`TestNamespace`].
pub const TEST_NAMESPACE_LABEL: &str = "ebb.dev/e2e-test";

/// Installs rustls' `ring` provider for the process (kube is built with rustls and `ring`); idempotent.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where the control-plane binaries are, before anything is unpacked.
pub enum KubeBinaries {
    /// `$EBB_KUBE_BIN_DIR`, holding the three, ready to run.
    Ready(PathBuf),
    /// `shared/k8s/bin`, holding them compressed, with their `SHA256SUMS`.
    Packed(PathBuf),
}

/// Finds the control-plane binaries without unpacking them: `$EBB_KUBE_BIN_DIR` (set without the three
/// binaries is [`Missing::Broken`]), else `shared/k8s/bin` with its `SHA256SUMS` ([`Missing::Absent`] when
/// there is none, as on a fresh clone).
pub fn find_kube_binaries() -> Result<KubeBinaries, Missing> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        let missing: Vec<_> = BINARIES.iter().filter(|b| !dir.join(b).is_file()).collect();
        if missing.is_empty() {
            return Ok(KubeBinaries::Ready(dir));
        }
        return Err(Missing::Broken(format!(
            "{BIN_DIR_ENV}={} lacks {missing:?}: it must name a directory holding {BINARIES:?} (Kubernetes \
             v1.20.2's server release, etcd 3.4), or be unset to use shared/k8s/bin beside the repository",
            dir.display()
        )));
    }
    let shared = match std::env::var_os(SHARED_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("../shared"),
    };
    let source = shared.join("k8s/bin");
    if !source.join("SHA256SUMS").is_file() {
        return Err(Missing::Absent(format!(
            "{} not found. To run these tests, set {BIN_DIR_ENV} to a directory holding etcd, kube-apiserver \
             and kube-controller-manager (from the official Kubernetes v1.20.2 server release, \
             kubernetes-server-linux-amd64.tar.gz, and etcd 3.4), or put shared/k8s/bin/{{SHA256SUMS,etcd.xz,\
             kube-apiserver.xz,kube-controller-manager.xz}} beside the repository (or {SHARED_DIR_ENV}=DIR for \
             DIR/k8s/bin)",
            source.join("SHA256SUMS").display()
        )));
    }
    Ok(KubeBinaries::Packed(source))
}

/// The control-plane binaries, ready to run: [`find_kube_binaries`]'s, unpacked under the target directory
/// after their `SHA256SUMS` are checked. The error says what is missing or wrong.
pub fn kube_binaries() -> Result<PathBuf, String> {
    match find_kube_binaries().map_err(|missing| missing.to_string())? {
        KubeBinaries::Ready(dir) => Ok(dir),
        KubeBinaries::Packed(source) => unpack(&source, &scratch_dir().join("kube-bin")),
    }
}

/// Checks `source/SHA256SUMS` and unpacks `source/NAME.xz` into `dest/NAME`, unless `dest` already holds
/// the binaries of the same sums. Safe when several test binaries do it at once: each file is written
/// under a private name and renamed, and the sums are copied last.
fn unpack(source: &Path, dest: &Path) -> Result<PathBuf, String> {
    let check = Command::new("sha256sum")
        .args(["--check", "--strict", "--quiet", "SHA256SUMS"])
        .current_dir(source)
        .output()
        .map_err(|e| format!("cannot run sha256sum to check {}: {e}", source.display()))?;
    if !check.status.success() {
        return Err(format!(
            "{}/SHA256SUMS does not match the files beside it:\n{}{}",
            source.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    let sums = std::fs::read(source.join("SHA256SUMS")).map_err(|e| e.to_string())?;
    let stamp = dest.join("SHA256SUMS");
    if std::fs::read(&stamp).is_ok_and(|s| s == sums) && BINARIES.iter().all(|b| dest.join(b).is_file()) {
        return Ok(dest.to_path_buf());
    }
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let pid = std::process::id();
    let unpacking: Vec<_> = BINARIES
        .iter()
        .map(|name| {
            let partial = dest.join(format!(".{name}.{pid}"));
            let out =
                File::create(&partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
            let child = Command::new("xz")
                .arg("-dc")
                .arg(source.join(format!("{name}.xz")))
                .stdout(out)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run xz (is it installed?): {e}"))?;
            Ok((name, partial, child))
        })
        .collect::<Result<_, String>>()?;
    for (name, partial, child) in unpacking {
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("xz -dc {name}.xz failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let mut permissions = std::fs::metadata(&partial).map_err(|e| e.to_string())?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&partial, permissions).map_err(|e| e.to_string())?;
        std::fs::rename(&partial, dest.join(name)).map_err(|e| e.to_string())?;
    }
    let partial_stamp = dest.join(format!(".SHA256SUMS.{pid}"));
    std::fs::write(&partial_stamp, &sums).map_err(|e| e.to_string())?;
    std::fs::rename(&partial_stamp, &stamp).map_err(|e| e.to_string())?;
    Ok(dest.to_path_buf())
}

/// The control plane of [`ControlPlane::shared`], or why it did not start.
static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// A running etcd + kube-apiserver + kube-controller-manager.
pub struct ControlPlane {
    dir: PathBuf,
    server: String,
    kubeconfig: PathBuf,
    children: Mutex<Vec<Child>>,
    supervisor: Supervisor,
    /// The binaries' directory and the API server's flags, for [`ControlPlane::restart_api_server`].
    bin: PathBuf,
    api_server_args: Mutex<Vec<String>>,
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use and shared by its tests (their runtimes
    /// come and go; the processes stay). Panics with the components' log tails if it cannot start; later
    /// callers get the same message without a second attempt. A test asks for it first through
    /// [`crate::require::control_plane`], which skips the test instead when the binaries are absent.
    pub fn shared() -> &'static ControlPlane {
        // Started on a thread of its own: the caller may be inside a runtime, where another cannot block.
        let started = SHARED.get_or_init(|| {
            std::thread::spawn(ControlPlane::start).join().unwrap_or_else(|_| Err("start panicked".into()))
        });
        match started {
            Ok(cp) => cp,
            Err(message) => panic!("the test control plane did not start: {message}"),
        }
    }

    /// The shared control plane if it has been started (without starting it).
    pub fn shared_if_started() -> Option<&'static ControlPlane> {
        SHARED.get().and_then(|started| started.as_ref().ok())
    }

    /// Starts a control plane of its own (most tests want [`ControlPlane::shared`]); it is torn down on drop.
    /// Blocking: call it outside a runtime or from a thread.
    pub fn start() -> Result<ControlPlane, String> {
        install_crypto_provider();
        let bin = kube_binaries()?;
        let mut last = String::new();
        // Free ports are found by binding :0 and releasing, so another process may take one in between;
        // that shows as a bind error in a log, and a fresh attempt gets fresh ports.
        for _attempt in 0..3 {
            match ControlPlane::start_once(&bin) {
                Ok(cp) => return Ok(cp),
                Err(message) if message.contains("address already in use") => last = message,
                Err(message) => return Err(message),
            }
        }
        Err(last)
    }

    fn start_once(bin: &Path) -> Result<ControlPlane, String> {
        let began = std::time::Instant::now();
        let base =
            if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("ebb-k8s-{}-{}", std::process::id(), random_hex(4)));
        std::fs::create_dir_all(dir.join("certs"))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let supervisor = Supervisor::start(Some(&dir)).map_err(|e| format!("cannot start bash: {e}"))?;
        let [etcd_port, peer_port, api_port] = free_ports();
        let server = format!("https://127.0.0.1:{api_port}");
        let token = random_hex(16);
        let sa_key = dir.join("sa.key");
        let keygen = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .output()
            .map_err(|e| format!("cannot run openssl (is it installed?): {e}"))?;
        if !keygen.status.success() {
            return Err(format!("openssl genrsa failed: {}", String::from_utf8_lossy(&keygen.stderr)));
        }
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
        };
        write("tokens.csv", &format!("{token},admin,admin,\"system:masters\"\n"))?;
        write("kubeconfig", &kubeconfig_yaml(&server, "admin", &token))?;
        let cp = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            server,
            children: Mutex::new(Vec::new()),
            supervisor,
            bin: bin.to_path_buf(),
            api_server_args: Mutex::new(Vec::new()),
        };
        let d = |name: &str| cp.dir.join(name).display().to_string();
        let etcd = format!("http://127.0.0.1:{etcd_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        cp.spawn(
            bin,
            "etcd",
            &[
                format!("--data-dir={}", d("etcd")),
                format!("--listen-client-urls={etcd}"),
                format!("--advertise-client-urls={etcd}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster=default={peer}"),
            ],
        )?;
        let api_server_args = vec![
            format!("--etcd-servers={etcd}"),
            format!("--service-account-key-file={}", d("sa.key")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--api-audiences=https://kubernetes.default.svc.cluster.local".into(),
            format!("--cert-dir={}", d("certs")),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
        ];
        cp.spawn(bin, "kube-apiserver", &api_server_args)?;
        *cp.api_server_args.lock().unwrap() = api_server_args;
        // Readiness is checked from a runtime of this thread's own (start runs outside any runtime).
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(cp.wait_ready("the API server's /readyz", async |client: &Client| {
            let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
            client.request_text(request).await.map(drop).map_err(|e| e.to_string())
        }))?;
        let api_ready = began.elapsed();
        cp.spawn(
            bin,
            "kube-controller-manager",
            &[
                format!("--kubeconfig={}", d("kubeconfig")),
                format!("--service-account-private-key-file={}", d("sa.key")),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
                // v1.20 also opens a deprecated insecure port, fixed at 10252 unless turned off: two control
                // planes at once (two test runs) would collide on it.
                "--port=0".into(),
                format!("--controllers={CONTROLLERS}"),
            ],
        )?;
        // The controller manager has no readiness endpoint here; the `default` ServiceAccount of `default`
        // and its token Secret show that its serviceaccount and tokens controllers are working.
        runtime.block_on(cp.wait_ready(
            "the controller manager to give namespace default its ServiceAccount token",
            async |client: &Client| service_account_token(client, "default", "default").await.map(drop),
        ))?;
        eprintln!(
            "test control plane at {} ready in {:.1?} (API server {api_ready:.1?}), in {}",
            cp.server,
            began.elapsed(),
            cp.dir.display()
        );
        Ok(cp)
    }

    /// Spawns a component with its output in `DIR/NAME.log`.
    fn spawn(&self, bin: &Path, name: &str, args: &[String]) -> Result<(), String> {
        let child = self.spawn_child(bin, name, args)?;
        self.children.lock().unwrap().push(child);
        Ok(())
    }

    /// Starts a component's process, its output appended to `DIR/NAME.log`.
    fn spawn_child(&self, bin: &Path, name: &str, args: &[String]) -> Result<Child, String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(bin.join(name));
        command.args(args).current_dir(&self.dir).stdin(Stdio::null()).stdout(log).stderr(err);
        self.supervisor.spawn(&mut command).map_err(|e| format!("cannot start {name}: {e}"))
    }

    /// Kills kube-apiserver with SIGKILL (a crash: no graceful shutdown, every connection and watch cut),
    /// leaves it down for `down_for`, starts it again with the same flags, port and certificates (etcd keeps
    /// the data) and waits until it is ready again. Every test of the binary sees the outage: a test binary
    /// that restarts the API server runs its tests one at a time. Panics if it does not come back.
    pub async fn restart_api_server(&self, down_for: Duration) {
        const API_SERVER: usize = 1; // Its place in `children` (etcd, kube-apiserver, controller manager).
        {
            let mut children = self.children.lock().unwrap();
            let child = &mut children[API_SERVER];
            let _ = child.kill();
            let status = child.wait().expect("wait for the killed kube-apiserver");
            eprintln!("test control plane: kube-apiserver killed ({status}), down for {down_for:?}");
        }
        tokio::time::sleep(down_for).await;
        let args = self.api_server_args.lock().unwrap().clone();
        let child = self.spawn_child(&self.bin, "kube-apiserver", &args).expect("restart kube-apiserver");
        self.children.lock().unwrap()[API_SERVER] = child;
        let began = std::time::Instant::now();
        self.wait_ready("the restarted API server's /readyz", async |client: &Client| {
            let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
            client.request_text(request).await.map(drop).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| panic!("kube-apiserver did not come back: {e}"));
        eprintln!("test control plane: kube-apiserver ready again after {:.1?}", began.elapsed());
    }

    /// Polls `check` with an admin client until it succeeds; fails early when a component exits, and says
    /// on failure what each component logged last.
    async fn wait_ready(
        &self,
        what: &str,
        check: impl AsyncFn(&Client) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut client = None;
        let waited = try_wait_for(START_TIMEOUT, what, async || {
            if let Some(exited) = self.exited() {
                return Ok(Err(exited));
            }
            if client.is_none() {
                client = Some(self.client_from(&self.kubeconfig).await.map_err(|e| e.to_string())?);
            }
            check(client.as_ref().unwrap()).await.map(Ok)
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) | Err(message) => Err(format!("{message}\n{}", self.log_tails(30))),
        }
    }

    /// Describes a component that has exited, if any.
    fn exited(&self) -> Option<String> {
        let mut children = self.children.lock().unwrap();
        let names = ["etcd", "kube-apiserver", "kube-controller-manager"];
        children.iter_mut().zip(names).find_map(|(child, name)| {
            let status = child.try_wait().ok()??;
            Some(format!("{name} exited ({status})"))
        })
    }

    /// An admin (`system:masters`) client, bound to the calling test's runtime.
    pub async fn client(&self) -> Client {
        self.client_from(&self.kubeconfig).await.expect("admin client from the test kubeconfig")
    }

    async fn client_from(&self, kubeconfig: &Path) -> Result<Client, String> {
        client_from_kubeconfig(kubeconfig).await
    }

    /// The admin kubeconfig (bearer token, `insecure-skip-tls-verify`), for components a test runs.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// This process's established TCP connections to the API server (its clients', whichever test made them).
    pub fn connections_from_this_process(&self) -> usize {
        let port: u16 =
            self.server.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port in the URL");
        established_connections_to(port)
    }

    /// The control plane's directory (logs `NAME.log`, kubeconfigs); removed at teardown unless
    /// `EBB_KUBE_KEEP=1`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `lines` lines of each component's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in BINARIES {
            let text = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let all: Vec<_> = text.lines().collect();
            out += &format!("--- last lines of {name}.log:\n");
            for line in &all[all.len().saturating_sub(lines)..] {
                out += line;
                out += "\n";
            }
        }
        out
    }

    /// A client that authenticates as ServiceAccount `namespace/name` with its token (RBAC applies to it as
    /// it would in a cluster). Creates the ServiceAccount if it does not exist, and waits for the
    /// controller manager to issue its token Secret. `admin` is used to create and read those.
    pub async fn service_account_client(&self, admin: &Client, namespace: &str, name: &str) -> Client {
        let path = self.service_account_kubeconfig(admin, namespace, name).await;
        client_from_kubeconfig(&path).await.expect("client from a ServiceAccount kubeconfig")
    }

    /// Writes a kubeconfig for ServiceAccount `namespace/name` (see [`Self::service_account_client`]) and
    /// returns its path, for processes that a test runs as that ServiceAccount.
    pub async fn service_account_kubeconfig(&self, admin: &Client, namespace: &str, name: &str) -> PathBuf {
        let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => panic!("creating ServiceAccount {namespace}/{name}: {e}"),
        }
        let token = wait_for(
            NAMESPACE_READY_TIMEOUT,
            &format!("the token Secret of ServiceAccount {namespace}/{name}"),
            async || service_account_token(admin, namespace, name).await,
        )
        .await;
        let path = self.dir.join(format!("kubeconfig-sa-{namespace}-{name}"));
        let user = format!("system:serviceaccount:{namespace}:{name}");
        std::fs::write(&path, kubeconfig_yaml(&self.server, &user, &token)).expect("write a kubeconfig");
        path
    }

    /// Stops the processes and removes the directory now (also done on drop, and by the supervisor when the
    /// test binary exits).
    pub fn stop(&self) {
        let mut children = std::mem::take(&mut *self.children.lock().unwrap());
        self.supervisor.shutdown(&mut children);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A kube client from a kubeconfig file, bound to the calling runtime.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, String> {
    install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("loading {}: {e}", path.display()))?;
    Client::try_from(config).map_err(|e| format!("client from {}: {e}", path.display()))
}

/// The token of ServiceAccount `namespace/name`, from the Secret the controller manager made for it.
async fn service_account_token(client: &Client, namespace: &str, name: &str) -> Result<String, String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = accounts.get_opt(name).await.map_err(|e| e.to_string())?.ok_or("no ServiceAccount yet")?;
    let secret_name = account
        .secrets
        .unwrap_or_default()
        .into_iter()
        .find_map(|s| s.name)
        .ok_or("the ServiceAccount lists no token Secret yet")?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get_opt(&secret_name).await.map_err(|e| e.to_string())?.ok_or("no Secret yet")?;
    let token = secret.data.unwrap_or_default().remove("token").ok_or("the Secret has no token yet")?;
    String::from_utf8(token.0).map_err(|e| e.to_string())
}

/// A kubeconfig with one cluster (TLS not verified: the API server's certificate is self-signed) and one
/// bearer-token user.
pub fn kubeconfig_yaml(server: &str, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: test\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\n\
         users:\n- name: {user:?}\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: {user:?}\n\
         current-context: test\n"
    )
}

/// Three distinct free TCP ports on 127.0.0.1 (released before use: another process may take one first).
fn free_ports() -> [u16; 3] {
    let listeners: Vec<_> =
        (0..3).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    let port = |i: usize| listeners[i].local_addr().unwrap().port();
    [port(0), port(1), port(2)]
}

/// `2 * bytes` random hex digits (names and tokens of a loopback-only test cluster; not cryptographic).
fn random_hex(bytes: usize) -> String {
    let mut out = String::new();
    while out.len() < 2 * bytes {
        out += &format!("{:016x}", RandomState::new().hash_one(std::time::SystemTime::now()));
    }
    out.truncate(2 * bytes);
    out
}

/// Runs `cleanup` with a fresh client from `kubeconfig` on a thread and runtime of its own, and waits for
/// it (at most [`CLEANUP_TIMEOUT`]). For `Drop`, which cannot await: the test's own client cannot be used
/// there, since its runtime is the thread that `Drop` blocks (or is shutting down). Failures are printed,
/// not raised: a cleanup must not turn a test's panic into an abort.
pub fn cleanup_blocking<F>(kubeconfig: PathBuf, what: String, cleanup: F)
where
    F: AsyncFnOnce(Client) -> Result<(), kube::Error> + Send + 'static,
{
    let joined = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let client = client_from_kubeconfig(&kubeconfig).await?;
            match tokio::time::timeout(CLEANUP_TIMEOUT, cleanup(client)).await {
                Ok(done) => done.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer in {CLEANUP_TIMEOUT:?}")),
            }
        })
    })
    .join();
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("cleanup: {what}: {e}"),
        Err(_) => eprintln!("cleanup: {what}: panicked"),
    }
}

/// A namespace for one test, named `PREFIX-xxxxx` by the API server, deleted when dropped (also when the
/// test panics) or by [`TestNamespace::delete`]. Dereferences to its name.
pub struct TestNamespace {
    name: String,
    /// The admin kubeconfig its deletion on drop uses; `None` once deleted.
    cleanup: Option<PathBuf>,
}

impl TestNamespace {
    /// Creates the namespace in [`ControlPlane::shared`] with `client` (one of its clients), and waits until
    /// pods can be created in it (its `default` ServiceAccount has a token; pods are refused before that).
    pub async fn create(client: &Client, prefix: &str) -> TestNamespace {
        TestNamespace::create_in(ControlPlane::shared(), client, prefix).await
    }

    /// [`TestNamespace::create`] in a control plane of the test's own (`client` is one of its clients).
    pub async fn create_in(cp: &ControlPlane, client: &Client, prefix: &str) -> TestNamespace {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some(BTreeMap::from([(TEST_NAMESPACE_LABEL.into(), "true".into())])),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating a namespace {prefix}-*: {e}"));
        let name = created.metadata.name.expect("a created namespace has a name");
        let namespace = TestNamespace { name, cleanup: Some(cp.kubeconfig_path().to_path_buf()) };
        wait_for(
            NAMESPACE_READY_TIMEOUT,
            &format!("the default ServiceAccount token of namespace {}", namespace.name),
            async || service_account_token(client, &namespace.name, "default").await,
        )
        .await;
        namespace
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace now (the API server finishes it in the background).
    pub async fn delete(mut self, client: &Client) {
        self.cleanup = None;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if let Err(e) = namespaces.delete(&self.name, &DeleteParams::background()).await {
            panic!("deleting namespace {}: {e}", self.name);
        }
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let Some(kubeconfig) = self.cleanup.take() else { return };
        let name = self.name.clone();
        cleanup_blocking(kubeconfig, format!("deleting namespace {name}"), async move |client: Client| {
            let namespaces: Api<Namespace> = Api::all(client);
            match namespaces.delete(&name, &DeleteParams::background()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        });
    }
}

/// This process's established TCP connections whose far end is port `port` (`/proc/self/net/tcp*` lists the
/// network namespace's sockets, `/proc/self/fd` says which are this process's).
fn established_connections_to(port: u16) -> usize {
    const ESTABLISHED: &str = "01";
    let ours: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let far_port = format!(":{port:04X}");
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9
                && fields[2].ends_with(&far_port)
                && fields[3] == ESTABLISHED
                && ours.contains(fields[9])
        })
        .count()
}
