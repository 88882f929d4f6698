//! `ebb status --kubeconfig` against the real control plane: the autoscaler runs in-process (as in
//! `tests/autoscaler_k8s.rs`, as ServiceAccount `ebb-autoscaler` with exactly its RBAC), pods are played by
//! the node emulator, and the real `ebb` binary reads what the autoscaler wrote. kubectl's habits
//! (`--context`, `-n`/`-A`, `-o`, `-w`) and `--service` through the API server's service proxy run as a user
//! with exactly `manifests/status-rbac.yaml`'s rights.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ebb_autoscaler::cluster::ClusterController;
use ebb_test_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::autoscaler::{FakePods, grant_autoscaler_rbac, test_options, token_of};
use support::cluster::apply;
use support::manifests::{find, render_in};
use support::paths::in_repo;
use support::{NodeEmulator, TestNamespace, require, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

fn ebb_status(args: &[&str]) -> (i32, String, String) {
    let Output { status, stdout, stderr } =
        Command::new(env!("CARGO_BIN_EXE_ebb")).arg("status").args(args).output().unwrap();
    (status.code().unwrap_or(-1), String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

/// The table's row for `service`, split into its 7 fixed columns and the reason.
fn row(table: &str, service: &str) -> Option<(Vec<String>, String)> {
    let line = table.lines().find(|l| l.split_whitespace().next() == Some(service))?;
    let cells: Vec<&str> = line.split_whitespace().collect();
    (cells.len() >= 8).then(|| (cells[..7].iter().map(|c| (*c).to_owned()).collect(), cells[7..].join(" ")))
}

#[tokio::test]
async fn status_lists_what_the_autoscaler_wrote() {
    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "status").await;
    grant_autoscaler_rbac(&admin, &ns, "ebb-autoscaler").await;
    let sa_config = cp.service_account_kubeconfig(&admin, &ns, "ebb-autoscaler").await;
    let client = support::k8s::client_from_kubeconfig(&sa_config).await.unwrap();
    wait_for(TIMEOUT, "the autoscaler's RBAC to take effect", async || {
        Api::<Deployment>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.map(drop)
    })
    .await;
    let _emulator = NodeEmulator::builder().namespace(&ns).runtime(FakePods::default()).start(&admin).await;

    // At min-scale 2 with no load the autoscaler wants 2 pods, and serves them directly.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"ebb.dev/service": "web"},
                     "annotations": {"autoscaling.knative.dev/min-scale": "2"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"ebb.dev/service": "web"}},
            "template": {
                "metadata": {"labels": {"ebb.dev/service": "web"}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            },
        },
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    // Before the autoscaler ran, the row says so with dashes.
    let kubeconfig = cp.kubeconfig_path().to_str().unwrap().to_owned();
    let (code, stdout, stderr) = ebb_status(&["--kubeconfig", &kubeconfig, "-n", &ns]);
    assert_eq!(code, 0, "{stderr}");
    let service = format!("{}/web", ns.name());
    let (cells, reason) = row(&stdout, &service).unwrap_or_else(|| panic!("no row for {service}:\n{stdout}"));
    // (READY is left out: the emulator may have made the first pod Ready already.)
    assert_eq!(cells[1..3], ["-", "1"], "{stdout}");
    assert_eq!(cells[4..], ["-", "-", "-"], "{stdout}");
    assert_eq!(reason, "-");

    let options = test_options(ns.name(), "replica-0");
    let controller = ClusterController::start(client, options).await.expect("start the controller");

    // What the autoscaler wrote, read through the API, and the table once both agree with the cluster.
    let (cells, reason) = wait_for(TIMEOUT, "ebb status to show web at 2 ready pods, serving", async || {
        let d = deployments.get("web").await.map_err(|e| e.to_string())?;
        let written: BTreeMap<String, String> = d.metadata.annotations.unwrap_or_default();
        let (code, stdout, stderr) = ebb_status(&["--kubeconfig", &kubeconfig, "-n", &ns]);
        if code != 0 {
            return Err(format!("exit {code}: {stderr}"));
        }
        let (cells, reason) = row(&stdout, &service).ok_or(format!("no row:\n{stdout}"))?;
        let want_reason = written.get("status.ebb.dev/reason").cloned().unwrap_or_default();
        let panic_written = written.contains_key("status.ebb.dev/panic");
        if cells[1..5] == ["2", "2", "2", "serve"]
            && !want_reason.is_empty()
            && reason == want_reason
            && panic_written
        {
            Ok((cells, reason))
        } else {
            Err(format!("table:\n{stdout}annotations: {written:?}"))
        }
    })
    .await;
    let svc = Api::<Service>::namespaced(admin.clone(), &ns).get("web").await.unwrap();
    let phase = svc.metadata.annotations.unwrap_or_default().get("status.ebb.dev/phase").cloned();
    assert_eq!(Some(cells[5].clone()), phase.or(Some("-".into())), "the phase is the Service's");
    assert_eq!(cells[6], "no", "a scale-up to min-scale is no panic: {reason}");
    let written = deployments.get("web").await.unwrap().metadata.annotations.unwrap_or_default();
    assert_eq!(written.get("status.ebb.dev/panic").map(String::as_str), Some("false"), "the live flag");

    // All namespaces (the default) include it too; --json gives the same values.
    let (code, stdout, stderr) = ebb_status(&["--kubeconfig", &kubeconfig]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(row(&stdout, &service).map(|r| r.0), Some(cells.clone()), "{stdout}");
    // --cluster finds the cluster through $KUBECONFIG, as kubectl does.
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["status", "--cluster", "-n", &ns])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8(stdout).unwrap(), String::from_utf8_lossy(&stderr));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(row(&stdout, &service).map(|r| r.0), Some(cells.clone()), "{stdout}");
    let (code, stdout, stderr) = ebb_status(&["--kubeconfig", &kubeconfig, "-n", &ns, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows[0]["service"], service.as_str());
    assert_eq!((rows[0]["desired"].as_str(), rows[0]["ready"].as_i64()), (Some("2"), Some(2)));
    assert_eq!(rows[0]["last_reason"], reason.as_str());

    controller.shutdown().await;
    ns.delete(&admin).await;
}

#[test]
fn bad_command_lines_and_kubeconfigs_exit_2() {
    let (code, _, stderr) = ebb_status(&["-n", "models"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--namespace needs a cluster"), "{stderr}");
    let (code, _, stderr) = ebb_status(&["--kubeconfig", "/nonexistent/kubeconfig"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read the kubeconfig /nonexistent/kubeconfig"), "{stderr}");
    let (code, _, stderr) = ebb_status(&["--kubeconfig", "/nonexistent/kubeconfig", "--url", "http://x:1"]);
    assert_eq!(code, 2, "{stderr}");
}

/// ServiceAccount `account` in `ns` gets what manifests/status-rbac.yaml holds, bound to this namespace alone
/// (a team that sees one namespace): ClusterRole `ebb-status` (renamed for the test) through a RoleBinding,
/// and Role `ebb-status-decisions`, as if `ns` were the autoscaler's namespace.
async fn grant_status_rbac(admin: &kube::Client, ns: &str, account: &str) {
    let objects = render_in(&in_repo("manifests"), ns).expect("render manifests/");
    let cluster_role_name = format!("ebb-status-{ns}");
    let mut cluster_role =
        find(&objects, "ClusterRole", "ebb-status").expect("ClusterRole ebb-status").clone();
    cluster_role["metadata"]["name"] = json!(cluster_role_name);
    let role = find(&objects, "Role", "ebb-status-decisions").expect("Role ebb-status-decisions").clone();
    assert_eq!(role["rules"][0]["resourceNames"], json!(["ebb-autoscaler:metrics"]), "one Service, one port");
    let binding = |name: &str, kind: &str, role: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
        })
    };
    for object in [
        cluster_role,
        role,
        binding("ebb-status", "ClusterRole", &cluster_role_name),
        binding("ebb-status-decisions", "Role", "ebb-status-decisions"),
    ] {
        assert!(apply(admin, object).await.is_ok());
    }
}

/// A kubeconfig with two contexts: `elsewhere` (current; nothing listens there) and `test` (the control plane,
/// as the user of `user_kubeconfig`).
fn two_contexts(cp: &support::ControlPlane, user_kubeconfig: &std::path::Path) -> std::path::PathBuf {
    let token = token_of(user_kubeconfig);
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: test\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\n\
         - name: nowhere\n  cluster:\n    server: https://127.0.0.1:1\n\
         users:\n- name: user\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: user\n\
         - name: elsewhere\n  context:\n    cluster: nowhere\n    user: user\n\
         current-context: elsewhere\n",
        cp.server()
    );
    let path = user_kubeconfig.with_extension("two-contexts");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn kubectl_habits_contexts_namespaces_outputs_and_watch() {
    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "status-habits").await;
    grant_status_rbac(&admin, &ns, "status-user").await;
    let user = cp.service_account_kubeconfig(&admin, &ns, "status-user").await;
    let kubeconfig = two_contexts(cp, &user);
    let kubeconfig = kubeconfig.to_str().unwrap();

    // A Deployment as an autoscaler leaves it (no autoscaler runs here: the annotations are written by hand).
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"ebb.dev/service": "web"},
                     "annotations": {"autoscaling.knative.dev/min-scale": "1", "autoscaling.knative.dev/maxScale": "5",
                                     "ebb.dev/container-concurrency": "8", "status.ebb.dev/desired": "1",
                                     "status.ebb.dev/mode": "proxy", "status.ebb.dev/panic": "false",
                                     "status.ebb.dev/reason": "stable: 1 pod"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"ebb.dev/service": "web"}},
            "template": {
                "metadata": {"labels": {"ebb.dev/service": "web"}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            },
        },
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    let service = format!("{}/web", ns.name());
    // The RBAC takes a moment to reach the authorizer's cache.
    wait_for(TIMEOUT, "the status user's rights", async || {
        let (code, stdout, stderr) =
            ebb_status(&["--kubeconfig", kubeconfig, "--context", "test", "-n", &ns]);
        if code == 0 && row(&stdout, &service).is_some() { Ok(()) } else { Err(format!("{code}: {stderr}")) }
    })
    .await;

    // --context picks the context; the current one leads nowhere (exit 1), one that is not there is a bad
    // command line (exit 2). Without --kubeconfig, the context is looked up in $KUBECONFIG.
    let (code, _, stderr) = ebb_status(&["--kubeconfig", kubeconfig, "-n", &ns]);
    assert_eq!(code, 1, "{stderr}");
    let (code, _, stderr) = ebb_status(&["--kubeconfig", kubeconfig, "--context", "missing", "-n", &ns]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("context missing"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["status", "--context", "test", "-n", &ns])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let (cells, reason) = row(&stdout, &service).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(
        (cells[1..].to_vec(), reason.as_str()),
        (
            vec!["1", "1", "0", "proxy", "-", "no"].into_iter().map(String::from).collect::<Vec<_>>(),
            "stable: 1 pod"
        )
    );

    // -o wide adds the kind and the annotations as written (camelCase aliases too); -o yaml and -o json
    // carry them.
    let (code, stdout, stderr) =
        ebb_status(&["--kubeconfig", kubeconfig, "--context", "test", "-n", &ns, "-o", "wide"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("SERVICE"), "{stdout}");
    let header: Vec<&str> = stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[7..12], ["KIND", "MIN", "MAX", "TARGET", "CC"], "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with(&service)).unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[7..12], ["deployments.apps", "1", "5", "-", "8"], "{stdout}");
    let (code, stdout, stderr) =
        ebb_status(&["--kubeconfig", kubeconfig, "--context", "test", "-n", &ns, "-o", "yaml"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("- service: {service}\n")), "{stdout}");
    assert!(
        stdout.contains("  max_scale: \"5\"\n") && stdout.contains("  container_concurrency: \"8\"\n"),
        "{stdout}"
    );
    let (code, stdout, stderr) =
        ebb_status(&["--kubeconfig", kubeconfig, "--context", "test", "-n", &ns, "-o", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (rows[0]["service"].as_str(), rows[0]["min_scale"].as_str()),
        (Some(service.as_str()), Some("1"))
    );

    // -A is every namespace, as the default is; it needs rights there (the admin has them, the user not).
    let admin_config = cp.kubeconfig_path().to_str().unwrap().to_owned();
    let (code, stdout, stderr) = ebb_status(&["--kubeconfig", &admin_config, "-A"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(row(&stdout, &service).is_some(), "{stdout}");
    let (code, _, stderr) = ebb_status(&["--kubeconfig", kubeconfig, "--context", "test", "-A"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("forbidden"), "{stderr}");
    let (code, _, _) = ebb_status(&["--kubeconfig", &admin_config, "-A", "-n", &ns]);
    assert_eq!(code, 2);

    // -w on a pipe: one table per change, no escape codes.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["status", "--kubeconfig", kubeconfig, "--context", "test", "-n", &ns, "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_line = |what: &str, want: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no {what} from ebb status -w:\n{}", seen.join("\n")));
            assert!(!line.contains('\x1b'), "an escape code on a pipe: {line:?}");
            seen.push(line.clone());
            if want(&line) {
                return;
            }
        }
    };
    wait_line("first table", &|l| l.starts_with(&service) && l.ends_with("stable: 1 pod"));
    let patch = json!({"metadata": {"annotations": {"status.ebb.dev/reason": "panic: watched change"}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_line("a table after the change", &|l| {
        l.starts_with(&service) && l.ends_with("panic: watched change")
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let tables = seen.iter().filter(|l| l.starts_with("SERVICE")).count();
    assert_eq!(tables, 2, "one table per change:\n{}", seen.join("\n"));

    ns.delete(&admin).await;
}

#[tokio::test]
async fn the_decision_trace_goes_through_the_service_proxy_and_only_to_the_autoscaler() {
    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "status-proxy").await;
    grant_status_rbac(&admin, &ns, "status-user").await;
    let user = cp.service_account_kubeconfig(&admin, &ns, "status-user").await;
    let nobody = cp.service_account_kubeconfig(&admin, &ns, "nobody").await;
    // The autoscaler's Service and its metrics port, with no endpoint behind it: the API server refuses to
    // proxy to a loopback address (and rejects Endpoints holding one), and the test's pods have nothing else,
    // so the proxy's answer is its own (404: no endpoints), which only a request past RBAC gets.
    for name in ["ebb-autoscaler", "other"] {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "metrics", "port": 9090}]},
        }))
        .unwrap();
        Api::<Service>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &service)
            .await
            .unwrap();
    }
    let trace = format!("{}/web", ns.name());
    let args = |kubeconfig: &std::path::Path| {
        let config = kubeconfig.to_str().unwrap().to_owned();
        vec![
            "--kubeconfig".to_owned(),
            config,
            "--service".into(),
            trace.clone(),
            "--autoscaler-namespace".into(),
            ns.name().to_owned(),
        ]
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ebb_status(&refs)
    };
    // The user reaches the proxy (past RBAC: the answer is the proxy's, not a 403)...
    let stderr = wait_for(TIMEOUT, "the proxy's own answer", async || {
        let (code, _, stderr) = run(args(&user));
        match code {
            1 if !stderr.contains("forbidden") => Ok(stderr),
            _ => Err(format!("{code}: {stderr}")),
        }
    })
    .await;
    assert!(
        stderr.contains(&format!(
            "cannot read the decisions of {trace} at service {}/ebb-autoscaler:metrics",
            ns.name()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("404") && stderr.contains("is the autoscaler running"), "{stderr}");
    // ...a user without the Role does not.
    let (code, _, stderr) = run(args(&nobody));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("403") && stderr.contains("forbidden"), "{stderr}");
    // And the Role reaches no other Service, nor another port of this one.
    let client = support::k8s::client_from_kubeconfig(&user).await.unwrap();
    for (name, want) in
        [("ebb-autoscaler:metrics", false), ("other:metrics", true), ("ebb-autoscaler:9090", true)]
    {
        let path = format!("/api/v1/namespaces/{}/services/{name}/proxy/status", ns.name());
        let request = http::Request::get(&path).body(kube::client::Body::from(Vec::new())).unwrap();
        let status = client.send(request).await.unwrap().status().as_u16();
        assert_eq!(status == 403, want, "{name}: {status}");
        assert!(status == 403 || status == 404, "{name}: {status}");
    }
    ns.delete(&admin).await;
}

#[test]
fn https_urls_are_spoken_to_in_tls() {
    // A listener that records the first bytes it is sent: a TLS ClientHello starts with 0x16 (handshake).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let accept = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).unwrap();
        first[0]
    });
    let (code, _, stderr) = ebb_status(&["--url", &url]);
    assert_eq!(accept.join().unwrap(), 0x16, "not a TLS handshake");
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("failed to lookup address"), "{stderr}");
    // Not a URL at all: a bad command line.
    let (code, _, stderr) = ebb_status(&["--url", "127.0.0.1:9090"]);
    assert_eq!(code, 2, "{stderr}");
}

/// An https URL whose certificate a private CA signed: refused against the system's roots, read with
/// `--certificate-authority` naming that CA, and a file with no certificate in it is a clear error.
#[test]
fn a_private_ca_is_trusted_with_certificate_authority() {
    use std::io::Write;
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.clone().self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let dir = std::env::temp_dir().join(format!("ebb-status-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let empty_file = dir.join("empty.pem");
    std::fs::write(&empty_file, "not a certificate\n").unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key.serialize_der().try_into().unwrap())
        .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    // Answers `/status` with one service to every client that completes the handshake.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let connection = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let mut head = [0u8; 1024];
            if tls.read(&mut head).is_err() {
                continue;
            }
            let body = r#"{"services":[{"name":"chat","desired":1,"ready":1,"mode":"serve"}]}"#;
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });

    let (code, stdout, stderr) = ebb_status(&["--url", &url]);
    assert_eq!(code, 1, "the system's roots do not hold a private CA: {stdout}{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    let (code, stdout, stderr) =
        ebb_status(&["--url", &url, "--certificate-authority", ca_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("chat ")), "{stdout}");
    let (code, _, stderr) =
        ebb_status(&["--url", &url, "--certificate-authority", empty_file.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no certificate in it"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
