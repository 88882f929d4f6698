//! `ebb up` as the user runs it: the real binary on ports it picks, its log in a file, stopped (and its pods
//! with it) when the test ends, pass or fail; plus HTTP helpers and a streaming load against its gateway.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;

use super::load::Load;
use super::paths::ebb;

/// A running `ebb up`.
pub struct Up {
    child: Child,
    /// The gateway (the activator).
    pub gateway: SocketAddr,
    /// `/metrics`, `/status`, `/service-discovery`, `/debug/decisions`.
    pub metrics: SocketAddr,
    log: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        // Ctrl-C semantics first (drain), then make sure.
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Writes `text` as `ebb.yaml` in a directory of its own named after `name`.
pub fn write_yaml(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ebb-up-test-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ebb.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `ebb up -f` on `text`, waiting for it to say where it listens.
pub fn start(name: &str, text: &str) -> Up {
    start_with(name, text, &[])
}

/// [`start`] with more command-line arguments.
pub fn start_with(name: &str, text: &str, args: &[&str]) -> Up {
    let path = write_yaml(name, text);
    let log = path.with_file_name("ebb-up.log");
    let mut child = Command::new(ebb())
        .args(["up", "--port", "0", "--metrics-port", "0", "--grace-period", "10s"])
        .args(args)
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().and_then(Result::ok).unwrap_or_else(|| {
        panic!("ebb up exited before listening; log: {}", std::fs::read_to_string(&log).unwrap_or_default())
    });
    std::thread::spawn(move || lines.for_each(drop));
    let v: Value = serde_json::from_str(&line).unwrap();
    let addr = |k: &str| v[k].as_str().unwrap().parse().unwrap();
    Up { gateway: addr("gateway"), metrics: addr("metrics"), child, log }
}

impl Up {
    /// Kills `ebb up` alone with SIGKILL (as the OOM killer would) and reaps it; its pods are on their own.
    pub fn kill(&mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).unwrap();
        let _ = self.child.wait();
    }

    /// Sends SIGINT (Ctrl-C) to `ebb up` alone.
    pub fn interrupt(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).unwrap();
    }

    /// Waits up to `within` for `ebb up` to exit by itself and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "ebb up still running after {within:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the metrics port, as JSON (asserting a 200).
    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = request(self.metrics, "GET", path, "", "x").await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// One service's entry in `/status`.
    pub async fn service(&self, name: &str) -> Value {
        let status = self.get("/status").await;
        status["services"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap()
    }

    /// Polls `/status` until `check` holds for the service, or panics at the deadline with the log's tail.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.service(name).await;
            if check(&s) {
                return s;
            }
            if Instant::now() > deadline {
                let log = self.log();
                let tail: Vec<&str> =
                    log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
                panic!("timed out waiting for {what}: {s:#}\n--- log tail ---\n{}", tail.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One streaming chat completion through the gateway: `Ok` only when it is complete.
    pub async fn chat(&self, host: &str) -> Result<(), String> {
        self.chat_tokens(host, 6).await
    }

    /// [`Self::chat`] for a completion of `tokens` tokens.
    pub async fn chat_tokens(&self, host: &str, tokens: u32) -> Result<(), String> {
        // The service's name is also its model's name.
        let body = chat_body(host, tokens);
        let (status, body) = request(self.gateway, "POST", "/v1/chat/completions", &body, host).await?;
        if status == 200 && body.contains("data: [DONE]") {
            Ok(())
        } else {
            Err(format!("status {status}: {body}"))
        }
    }
}

/// One pod of a service of roles, as `/status` lists it (`role_pods`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePod {
    /// Its name, `SERVICE-INSTANCE-ROLE-N`.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its instance.
    pub instance: u64,
    /// Where its command listens.
    pub address: String,
    /// Whether it is ready.
    pub ready: bool,
    /// Whether it is draining.
    pub terminating: bool,
}

/// The pods of a service of roles in its `/status` entry (none for a plain service).
pub fn role_pods(service: &Value) -> Vec<RolePod> {
    let Some(pods) = service["role_pods"].as_array() else { return Vec::new() };
    pods.iter()
        .map(|p| RolePod {
            name: p["name"].as_str().unwrap().to_owned(),
            role: p["role"].as_str().unwrap().to_owned(),
            instance: p["instance"].as_u64().unwrap(),
            address: p["address"].as_str().unwrap().to_owned(),
            ready: p["ready"].as_bool().unwrap(),
            terminating: p["terminating"].as_bool().unwrap(),
        })
        .collect()
}

impl Up {
    /// One non-streamed chat completion through the gateway to a decode role of `ebb demo-model`: the prefill
    /// pods that took its prompt (the answer's `prefill`), or why it failed.
    pub async fn chat_through_roles(&self, host: &str) -> Result<Vec<String>, String> {
        let body = format!(
            r#"{{"model":"{host}","messages":[{{"role":"user","content":"hello there"}}],"max_tokens":4}}"#
        );
        let (status, body) = request(self.gateway, "POST", "/v1/chat/completions", &body, host).await?;
        let answer: Value = serde_json::from_str(&body).map_err(|_| format!("status {status}: {body}"))?;
        match answer["prefill"].as_array() {
            Some(pods) if status == 200 => {
                Ok(pods.iter().filter_map(|p| Some(p.as_str()?.to_owned())).collect())
            }
            _ => Err(format!("status {status}: {body}")),
        }
    }
}

/// One HTTP/1.1 request with this `Host`; `Err` when no answer came.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    host: &str,
) -> Result<(u16, String), String> {
    request_with(addr, method, path, body, &[("host", host)]).await
}

/// One HTTP/1.1 request with these headers (a JSON content type is added); `Err` when no answer came.
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The body of a streamed chat completion of `tokens` tokens from model `model`.
pub fn chat_body(model: &str, tokens: u32) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":{tokens},"stream":true}}"#
    )
}

/// Pids of live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        // Zombies have an empty command line: they are dead.
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            pids.push(pid);
        }
    }
    pids
}

/// Clients that loop on streamed chats with `host` through `up`'s gateway until stopped.
pub fn chat_load(up: &Arc<Up>, host: &str, clients: usize) -> Load {
    let (up, host) = (up.clone(), host.to_owned());
    Load::start(clients, move || {
        let (up, host) = (up.clone(), host.clone());
        async move { up.chat(&host).await }
    })
}
