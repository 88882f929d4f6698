//! `ebb inject` end to end: the real binary on files and stdin, its YAML, messages and exit codes; the
//! injected pod template checked with the autoscaler's own ConfigMismatch check (`env_check`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use ebb_autoscaler::cluster::env_check;
use ebb_autoscaler::cluster::watched::WatchedPod;
use ebb_config::{GlobalConfig, resolve_service};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod};

fn ebb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ebb"))
}

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ebb-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `ebb inject` on `text` through a file.
fn inject(name: &str, text: &str) -> (i32, String, String) {
    let path = write(name, text);
    let Output { status, stdout, stderr } = ebb().arg("inject").arg(&path).output().unwrap();
    (status.code().unwrap(), String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

/// Runs `ebb inject -` with `text` on stdin.
fn inject_stdin(text: &str) -> (i32, String, String) {
    let mut child = ebb()
        .args(["inject", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap();
    (status.code().unwrap(), String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

const CHAT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: chat
  namespace: models
  labels: {ebb.dev/service: chat}
  annotations:
    ebb.dev/container-concurrency: "8"
    ebb.dev/timeout: "2m"
    ebb.dev/response-start-timeout: "30s"
    ebb.dev/idle-timeout: "10s"
    ebb.dev/queue-depth: "16"
    ebb.dev/protocol: "h2c"
    autoscaling.knative.dev/window: "30s"
spec:
  selector: {matchLabels: {ebb.dev/service: chat}}
  template:
    metadata:
      labels: {ebb.dev/service: chat}
    spec:
      containers:
        - name: model
          image: vllm/vllm-openai:v0.6.0
          ports: [{name: http, containerPort: 8000}]
          startupProbe: {httpGet: {path: /health, port: http}, failureThreshold: 120, periodSeconds: 5}
          livenessProbe: {httpGet: {path: /health, port: http}}
          readinessProbe: {httpGet: {path: /v1/models, port: 8000}}
"#;

const OTHER: &str = r#"# Not ebb's: printed exactly as written.
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: models}   # flow style kept
data:
  key: "value"
"#;

fn deployments(yaml: &str) -> Vec<Deployment> {
    serde_saphyr::from_multiple::<serde_json::Value>(yaml)
        .unwrap()
        .into_iter()
        .filter(|v| v["kind"] == "Deployment")
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

fn containers(deployment: &Deployment) -> Vec<Container> {
    deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers.clone()
}

fn env(container: &Container, name: &str) -> Option<String> {
    container.env.iter().flatten().rfind(|e| e.name == name).and_then(|e| e.value.clone())
}

#[test]
fn the_sidecar_carries_the_annotations_and_passes_the_autoscalers_check() {
    let (code, stdout, stderr) = inject("chat.yaml", CHAT);
    assert_eq!(code, 0, "{stderr}");
    let deployment = deployments(&stdout).remove(0);
    let containers = containers(&deployment);
    assert_eq!(containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["model", "queue-proxy"]);
    let qp = &containers[1];
    assert_eq!(qp.image.as_deref(), Some("ghcr.io/ebb-dev/ebb:0.1.0"));
    assert_eq!(qp.command.as_deref(), Some(&["ebb".to_owned(), "queue-proxy".to_owned()][..]));
    let ports: Vec<(i32, String)> =
        qp.ports.iter().flatten().map(|p| (p.container_port, p.name.clone().unwrap())).collect();
    assert_eq!(
        ports,
        [
            (8012, "queue-data".into()),
            (8022, "queue-admin".into()),
            (9090, "queue-stats".into()),
            (9091, "queue-metrics".into())
        ]
    );
    for (name, value) in [
        ("EBB_UPSTREAM", "127.0.0.1:8000"),
        ("EBB_SERVICE_NAME", "chat"),
        ("EBB_CONTAINER_CONCURRENCY", "8"),
        ("EBB_QUEUE_DEPTH", "16"),
        ("EBB_TIMEOUT", "2m"),
        ("EBB_RESPONSE_START_TIMEOUT", "30s"),
        ("EBB_IDLE_TIMEOUT", "10s"),
        ("EBB_PROTOCOL", "h2c"),
        ("EBB_PROBE_PATH", "/v1/models"),
    ] {
        assert_eq!(env(qp, name).as_deref(), Some(value), "{name}");
    }
    let field = |name: &str| {
        let e = qp.env.iter().flatten().find(|e| e.name == name).unwrap();
        e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path.clone()
    };
    assert_eq!(field("EBB_SERVICE_NAMESPACE"), "metadata.namespace");
    assert_eq!(field("POD_NAME"), "metadata.name");

    // The autoscaler's ConfigMismatch check finds nothing to complain about in a pod of this template.
    let annotations: BTreeMap<String, String> = deployment.metadata.annotations.clone().unwrap();
    let spec = resolve_service(&annotations, &GlobalConfig::default()).unwrap().value.data_plane;
    let template = deployment.spec.as_ref().unwrap().template.clone();
    let pod = Pod {
        metadata: kube::api::ObjectMeta { name: Some("chat-1".into()), ..Default::default() },
        spec: template.spec,
        ..Default::default()
    };
    // Read as the autoscaler's pod watch reads it: from the pod's JSON.
    let pod: WatchedPod = serde_json::from_value(serde_json::to_value(&pod).unwrap()).unwrap();
    assert_eq!(env_check::mismatches(&pod, &spec), []);
    // ... and would complain about a sidecar injected for other annotations.
    let stale = CHAT.replace("\"8\"", "\"2\"");
    let other = resolve_service(
        &deployments(&stale)[0].metadata.annotations.clone().unwrap(),
        &GlobalConfig::default(),
    )
    .unwrap()
    .value
    .data_plane;
    assert!(!env_check::mismatches(&pod, &other).is_empty());
}

#[test]
fn readiness_moves_to_the_queue_proxy_and_the_rest_stays() {
    let (code, stdout, stderr) = inject("probes.yaml", CHAT);
    assert_eq!(code, 0, "{stderr}");
    let deployment = deployments(&stdout).remove(0);
    let containers = containers(&deployment);
    let (model, qp) = (&containers[0], &containers[1]);
    assert!(model.readiness_probe.is_none(), "the model's readiness moved");
    assert_eq!(model.startup_probe.as_ref().unwrap().failure_threshold, Some(120));
    assert!(model.liveness_probe.is_some());
    let ready = qp.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(ready.path.as_deref(), Some("/"));
    assert_eq!(ready.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8022));
    let header = &ready.http_headers.as_ref().unwrap()[0];
    assert_eq!((header.name.as_str(), header.value.as_str()), ("Ebb-Probe", "queue"));
    // The model waits for the drain; the queue-proxy has no hook: SIGTERM alone starts its drain.
    let hook = model.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap().http_get.clone().unwrap();
    assert_eq!(hook.path.as_deref(), Some("/wait-for-drain"));
    assert!(qp.lifecycle.is_none(), "{:?}", qp.lifecycle);
    // 2m timeout + 30s drain quiet period + 5s margin.
    let grace = deployment.spec.unwrap().template.spec.unwrap().termination_grace_period_seconds;
    assert_eq!(grace, Some(155));
}

#[test]
fn injecting_is_idempotent_and_updates_in_place() {
    let (_, once, _) = inject("once.yaml", &format!("{OTHER}---\n{CHAT}"));
    let (code, twice, stderr) = inject("twice.yaml", &once);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(once, twice);

    let changed = once.replace("ebb.dev/container-concurrency: '8'", "ebb.dev/container-concurrency: '3'");
    assert_ne!(changed, once, "the annotation is in the output");
    let (code, updated, stderr) = inject("changed.yaml", &changed);
    assert_eq!(code, 0, "{stderr}");
    let containers = containers(&deployments(&updated)[0]);
    assert_eq!(containers.len(), 2, "updated, not added again");
    assert_eq!(env(&containers[1], "EBB_CONTAINER_CONCURRENCY").as_deref(), Some("3"));
    assert_eq!(env(&containers[1], "EBB_PROBE_PATH").as_deref(), Some("/v1/models"), "the moved probe stays");
}

#[test]
fn other_documents_pass_through_in_order() {
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: chat-metrics}\n";
    let unlabelled = CHAT.replace("labels: {ebb.dev/service: chat}\n  annotations", "annotations");
    let text = format!("{OTHER}---\n{CHAT}---\n{service}---\n{unlabelled}");
    let (code, stdout, stderr) = inject("mixed.yaml", &text);
    assert_eq!(code, 0, "{stderr}");
    let parts: Vec<&str> = stdout.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{stdout}");
    assert_eq!(parts[0], OTHER);
    assert!(parts[1].contains("queue-proxy"));
    assert_eq!(parts[2], service);
    assert_eq!(parts[3], unlabelled, "a Deployment without the label is not ebb's");
}

#[test]
fn stdin_works_like_a_file() {
    let (code, from_stdin, stderr) = inject_stdin(CHAT);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(from_stdin, inject("file.yaml", CHAT).1);
}

#[test]
fn ports_that_collide_with_ebbs_are_refused() {
    let text = format!("{OTHER}---\n{}", CHAT.replace("containerPort: 8000", "containerPort: 8012"));
    let (code, stdout, stderr) = inject("collide.yaml", &text);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr
            .contains("collide.yaml: document 2: Deployment models/chat: container \"model\" uses port 8012"),
        "{stderr}"
    );
    assert!(stderr.contains("8012, 8022, 9090, 9091"), "{stderr}");
}

#[test]
fn invalid_annotations_and_input_are_refused() {
    let text = CHAT.replace("\"30s\"\n", "\"3s\"\n");
    let (code, stdout, stderr) = inject("invalid.yaml", &text);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(
            "invalid.yaml: document 1: Deployment models/chat: autoscaling.knative.dev/window: \"3s\": must be"
        ),
        "{stderr}"
    );
    let (code, _, stderr) = inject("broken.yaml", "kind: Deployment\nmetadata: {name: [unclosed\n");
    assert_eq!(code, 2);
    assert!(stderr.contains("broken.yaml: document 1: not valid YAML"), "{stderr}");
    let Output { status, stderr, .. } = ebb().args(["inject", "/nonexistent/ebb.yaml"]).output().unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(String::from_utf8_lossy(&stderr).contains("/nonexistent/ebb.yaml: cannot read"));
}

#[test]
fn the_queue_proxy_accepts_the_injected_env() {
    let (code, stdout, stderr) = inject("run.yaml", CHAT);
    assert_eq!(code, 0, "{stderr}");
    let qp = containers(&deployments(&stdout)[0])[1].clone();
    let mut command = ebb();
    command.arg("queue-proxy");
    // The env as a kubelet resolves it for pod models/chat-1 ...
    for e in qp.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().unwrap().field_path.as_str() {
                "metadata.namespace" => "models".to_owned(),
                "metadata.name" => "chat-1".to_owned(),
                "status.podIP" => "127.0.0.1".to_owned(),
                other => panic!("unexpected fieldRef {other}"),
            },
            (None, None) => String::new(),
        };
        command.env(&e.name, value);
    }
    // ... on loopback and free ports (tests never take fixed ports).
    for (name, value) in [
        ("EBB_BIND_ADDRESS", "127.0.0.1"),
        ("EBB_DATA_PORT", "0"),
        ("EBB_ADMIN_PORT", "0"),
        ("EBB_STATS_PORT", "0"),
        ("EBB_METRICS_PORT", "0"),
    ] {
        command.env(name, value);
    }
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // It prints its bound addresses once its configuration is accepted and its ports are open.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let addresses: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("no addresses ({e}): {line:?}; stderr: {stderr}"));
    assert!(addresses["data"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{addresses}");
}

/// A StatefulSet's template and a LeaderWorkerSet's leader template (the entry role) get the sidecar, and
/// the leader the instance readiness gate (a group is Ready only when all its pods are); the workers'
/// template is left alone; a custom kind whose template ebb does not know passes through unchanged
/// with a warning.
#[test]
fn statefulsets_and_a_leaderworkersets_leader_are_injected() {
    let text = r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, labels: {ebb.dev/service: db}}
spec:
  template:
    metadata: {labels: {ebb.dev/service: db}}
    spec:
      containers: [{name: model, image: m, ports: [{containerPort: 8080}]}]
---
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
metadata: {name: llm, labels: {ebb.dev/service: llm}}
spec:
  leaderWorkerTemplate:
    size: 2
    leaderTemplate:
      metadata: {labels: {ebb.dev/service: llm}}
      spec:
        containers: [{name: model, image: m, ports: [{containerPort: 8080}]}]
    workerTemplate:
      spec:
        containers: [{name: worker, image: m}]
---
apiVersion: serving.example.com/v1
kind: InferenceService
metadata: {name: big, labels: {ebb.dev/service: big}}
spec: {replicas: 1}
"#;
    let (code, stdout, stderr) = inject("kinds.yaml", text);
    assert_eq!(code, 0, "{stderr}");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout).unwrap();
    let names = |template: &serde_json::Value| -> Vec<String> {
        template["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&docs[0]["spec"]["template"]), ["model", "queue-proxy"]);
    assert_eq!(names(&docs[1]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]), ["model", "queue-proxy"]);
    assert_eq!(names(&docs[1]["spec"]["leaderWorkerTemplate"]["workerTemplate"]), ["worker"]);
    let gates = |template: &serde_json::Value| template["spec"]["readinessGates"].clone();
    assert_eq!(
        gates(&docs[1]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]),
        serde_json::json!([{"conditionType": "ebb.dev/instance-ready"}])
    );
    assert_eq!(
        gates(&docs[0]["spec"]["template"]),
        serde_json::Value::Null,
        "a StatefulSet's pod is its replica"
    );
    assert_eq!(gates(&docs[1]["spec"]["leaderWorkerTemplate"]["workerTemplate"]), serde_json::Value::Null);
    assert_eq!(docs[2]["spec"], serde_json::json!({"replicas": 1}));
    assert!(stderr.contains("does not know where this kind keeps its pod template"), "{stderr}");
}
