//! `ebb status --kubeconfig` against the real control plane: the autoscaler runs in-process (as in
//! `tests/autoscaler_k8s.rs`, as ServiceAccount `ebb-autoscaler` with exactly its RBAC), pods are played by
//! the node emulator, and the real `ebb` binary reads what the autoscaler wrote.

use ebb_test_support as support;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use ebb_autoscaler::cluster::{ClusterController, Options};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};

use support::autoscaler::{FakePods, grant_autoscaler_rbac};
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

    let mut options = Options::new(ns.name(), "replica-0");
    options.watch_namespaces = vec![ns.name().to_owned()];
    options.ingest_addr = "127.0.0.1:0".parse().unwrap();
    options.metrics_addr = "127.0.0.1:0".parse().unwrap();
    options.sync_interval = Duration::from_millis(250);
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
