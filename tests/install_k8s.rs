//! README's "Install on a cluster", with the `kubectl` a user has (its built-in kustomize) against the test
//! control plane: `kubectl apply -k manifests/` as a server-side dry run (every object the v1.20 API server
//! serves is accepted; the `policy/v1` PodDisruptionBudgets, which it does not serve, are the only ones
//! named), kustomize renders exactly what the tests install, and the README's plain Deployment is accepted
//! by `ebb check` and by the API server. What the webhook does to that Deployment's pods is
//! tests/webhook_k8s.rs's.

use std::path::Path;
use std::process::{Command, Output};

use ebb_test_support as support;
use serde_json::Value;
use support::manifests::{kind, name, render};
use support::paths::{in_repo, repo_root};
use support::{TestNamespace, require};

fn readme() -> String {
    std::fs::read_to_string(in_repo("README.md")).expect("README.md")
}

/// The README's section `## title`.
fn section(title: &str) -> String {
    let text = readme();
    let start = text.find(&format!("\n## {title}\n")).unwrap_or_else(|| panic!("README has no ## {title}"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    rest[..end].to_owned()
}

/// The fenced blocks of `text` in language `lang`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    text.split(&fence).skip(1).filter_map(|b| b.split("```").next().map(str::to_owned)).collect()
}

fn run(command: &mut Command, input: Option<&str>) -> (Output, String) {
    use std::io::Write as _;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).expect("YAML").into_iter().filter(|v| !v.is_null()).collect()
}

#[test]
fn kubectls_kustomize_renders_what_the_tests_install() {
    let Some(kubectl) = require::kubectl() else { return };
    let (out, text) = run(Command::new(kubectl).args(["kustomize"]).arg(in_repo("manifests")), None);
    assert!(out.status.success(), "{text}");
    let mut theirs = documents(&String::from_utf8_lossy(&out.stdout));
    let mut ours = render(&in_repo("manifests")).unwrap();
    let key = |o: &Value| format!("{}/{}", kind(o), name(o));
    theirs.sort_by_key(key);
    ours.sort_by_key(key);
    assert_eq!(theirs.iter().map(key).collect::<Vec<_>>(), ours.iter().map(key).collect::<Vec<_>>());
    for (theirs, ours) in theirs.iter().zip(&ours) {
        assert_eq!(theirs, ours, "{}: kustomize and test-support/src/manifests.rs differ", key(ours));
    }
}

#[test]
fn the_sharded_component_runs_three_autoscalers_on_nine_buckets_and_changes_nothing_else() {
    let Some(kubectl) = require::kubectl() else { return };
    // The overlay manifests/README.md's "Sharding" shows, beside the repository's own (paths relative, as
    // kustomize wants them).
    let overlay = repo_root().join("target").join(format!("sharded-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "resources: [../../manifests]\ncomponents: [../../manifests/sharded]\n",
    )
    .unwrap();
    let (out, text) = run(Command::new(kubectl).arg("kustomize").arg(&overlay), None);
    std::fs::remove_dir_all(&overlay).ok();
    assert!(out.status.success(), "{text}");
    let sharded = documents(&String::from_utf8_lossy(&out.stdout));
    let base = render(&in_repo("manifests")).unwrap();
    assert_eq!(sharded.len(), base.len());
    for object in &sharded {
        let ours = base.iter().find(|o| kind(o) == kind(object) && name(o) == name(object)).unwrap();
        if kind(object) != "Deployment" || name(object) != "ebb-autoscaler" {
            assert_eq!(object, ours, "{}/{} is the base's", kind(object), name(object));
            continue;
        }
        assert_eq!(object["spec"]["replicas"], 3);
        let env = object["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        let buckets: Vec<&Value> = env.iter().filter(|e| e["name"] == "EBB_BUCKETS").collect();
        assert_eq!(buckets.len(), 1, "{env:?}");
        assert_eq!(buckets[0]["value"], "9");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_install_commands_are_accepted_by_a_real_api_server() {
    let install = section("Install on a cluster");
    let commands = blocks(&install, "sh").join("\n");
    assert!(commands.contains("kubectl apply -k manifests/"), "{commands}");
    let deployment =
        blocks(&install, "yaml").into_iter().find(|b| b.contains("kind: Deployment")).expect("the YAML");
    let object = &documents(&deployment)[0];
    assert_eq!(object["metadata"]["labels"]["ebb.dev/service"], object["metadata"]["name"]);
    assert!(object["spec"].get("replicas").is_none(), "replicas are the autoscaler's");
    let containers = object["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert!(containers.iter().all(|c| c["name"] != "queue-proxy"), "a plain Deployment: no sidecar");

    // `ebb check` accepts it as written.
    let (out, text) = run(Command::new(support::ebb()).args(["check", "-"]), Some(&deployment));
    assert!(out.status.success(), "ebb check: {text}");

    let (Some(cp), Some(kubectl)) = (require::control_plane(), require::kubectl()) else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "install").await;
    let kubeconfig = cp.kubeconfig_path();
    let kubectl = |args: &[&str]| {
        let mut command = Command::new(&kubectl);
        command.arg("--kubeconfig").arg(kubeconfig).args(args);
        command
    };

    // `kubectl apply -k manifests/`, into the test's namespace (an overlay, as the README's "Another
    // namespace" says) and as a dry run, so the shared control plane keeps nothing.
    let overlay = repo_root().join("target").join(format!("install-overlay-{ns}"));
    std::fs::create_dir_all(&overlay).unwrap();
    let relative = Path::new("../..").join("manifests");
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!("namespace: {ns}\nresources: [{}]\n", relative.display()),
    )
    .unwrap();
    let (out, text) =
        run(&mut kubectl(&["apply", "-k", overlay.to_str().unwrap(), "--dry-run=server"]), None);
    std::fs::remove_dir_all(&overlay).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let accepted = stdout.lines().filter(|l| l.ends_with("(server dry run)")).count();
    let objects = render(&in_repo("manifests")).unwrap();
    let unserved: Vec<&Value> = objects.iter().filter(|o| o["apiVersion"] == "policy/v1").collect();
    assert_eq!(unserved.len(), 2, "the two PodDisruptionBudgets");
    // The namespace itself is renamed to the test's, which exists: kubectl says "configured" or "unchanged".
    assert!(
        accepted >= objects.len() - unserved.len() - 1,
        "{accepted} of {} accepted:\n{text}",
        objects.len()
    );
    // (kubectl warns that the test's namespace, created without it, lacks its last-applied annotation.)
    let errors = String::from_utf8_lossy(&out.stderr);
    let failed: Vec<&str> = errors.lines().filter(|l| l.contains("resource mapping not found")).collect();
    assert_eq!(failed.len(), unserved.len(), "{text}");
    for line in failed {
        assert!(
            line.contains("\"PodDisruptionBudget\" in version \"policy/v1\""),
            "only the PDBs fail: {line}"
        );
    }
    for name in [
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/ebb-queue-proxy-injector",
        "service/ebb-webhook",
        "secret/ebb-webhook-certs",
        "deployment.apps/ebb-autoscaler",
    ] {
        assert!(stdout.contains(name), "{name}:\n{text}");
    }

    // The README's Deployment, applied as a user would (into the test's namespace instead of `demo`).
    let ours = deployment.replace("namespace: demo", &format!("namespace: {ns}"));
    let (out, text) = run(&mut kubectl(&["apply", "-f", "-", "--dry-run=server"]), Some(&ours));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("deployment.apps/chat created (server dry run)"), "{text}");
}
