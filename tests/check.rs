//! `ebb check` end to end: the real binary on files and stdin, its output lines and exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn ebb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ebb"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ebb-check-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let Output { status, stdout, stderr } = ebb().arg("check").args(args).output().unwrap();
    (status.code().unwrap(), String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

const GOOD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: chat
  namespace: models
  labels: {ebb.dev/service: chat}
  annotations:
    autoscaling.knative.dev/window: "30s"
    ebb.dev/container-concurrency: "4"
spec:
  template:
    metadata:
      labels: {ebb.dev/service: chat}
"#;

const BAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: chat
  namespace: models
  labels: {ebb.dev/service: chat}
  annotations:
    autoscaling.knative.dev/window: "3s"
    autoscaling.knative.dev/metric: "cpu"
    autoscaling.knative.dev/min-scale: "5"
    autoscaling.knative.dev/max-scale: "2"
    ebb.dev/timout: "30s"
spec:
  template:
    metadata:
      labels: {ebb.dev/service: chat}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: unrelated
  annotations: {autoscaling.knative.dev/window: "1s"}
"#;

#[test]
fn a_valid_file_exits_0_and_verbose_prints_the_effective_configuration() {
    let dir = temp_dir("good");
    let file = write(&dir, "good.yaml", GOOD);
    let (code, stdout, stderr) = run(&[&file]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("0 error(s), 0 warning(s); 1 valid object(s)"), "{stderr}");

    let (code, stdout, _) = run(&["--verbose", &file]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!("{file}: Deployment models/chat: effective configuration:")),
        "{stdout}"
    );
    assert!(stdout.contains("  autoscaling.knative.dev/window: \"30s\""), "{stdout}");
    assert!(stdout.contains("  autoscaling.knative.dev/target: \"4\""), "CC 4 is the total: {stdout}");
    assert!(stdout.contains("  ebb.dev/queue-depth: \"40\""), "{stdout}");
    // The decider's and the policy's inputs that only config-autoscaler sets are part of it, marked as such.
    for line in [
        "  max-scale-up-rate: \"1000\" (from config-autoscaler)",
        "  max-scale-down-rate: \"2\" (from config-autoscaler)",
        "  enable-scale-to-zero: \"true\" (from config-autoscaler)",
        "  scale-to-zero-grace-period: \"30s\" (from config-autoscaler)",
        "  activator-capacity: \"100\" (from config-autoscaler)",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }

    // A ConfigMap in the input changes them.
    let cm = write(
        &dir,
        "cm.yaml",
        "kind: ConfigMap\nmetadata: {name: config-autoscaler}\n\
         data: {max-scale-up-rate: \"3\", enable-scale-to-zero: \"false\"}\n",
    );
    let (code, stdout, _) = run(&["--verbose", &cm, &file]);
    assert_eq!(code, 0, "{stdout}");
    let service = stdout.split_once("Deployment models/chat: effective configuration:").unwrap().1;
    assert!(service.contains("  max-scale-up-rate: \"3\" (from config-autoscaler)"), "{stdout}");
    assert!(service.contains("  enable-scale-to-zero: \"false\" (from config-autoscaler)"), "{stdout}");
}

#[test]
fn an_input_with_no_kubernetes_objects_is_a_warning() {
    let dir = temp_dir("noobjects");
    let text = write(&dir, "hello.txt", "hello world\n");
    let empty = write(&dir, "empty.yaml", "");
    let good = write(&dir, "good.yaml", GOOD);
    let (code, stdout, stderr) = run(&[&text, &empty, &good]);
    assert_eq!(code, 0, "warnings alone exit 0: {stdout}{stderr}");
    let warning = "warning: no Kubernetes objects found (no YAML document has a `kind`), so nothing was checked; \
                   is this the right file?";
    assert_eq!(stdout, format!("{text}: {warning}\n{empty}: {warning}\n"));
    assert!(stderr.contains("0 error(s), 2 warning(s); 1 valid object(s)"), "{stderr}");
}

#[test]
fn every_bad_annotation_is_printed_and_the_exit_code_is_1() {
    let dir = temp_dir("bad");
    let file = write(&dir, "bad.yaml", BAD);
    let (code, stdout, _) = run(&[&file]);
    assert_eq!(code, 1, "{stdout}");
    let prefix = format!("{file}: Deployment models/chat: ");
    let expected = [
        "autoscaling.knative.dev/metric: \"cpu\": must be one of `concurrency`, `rps`",
        "autoscaling.knative.dev/min-scale: \"5\": must not exceed max-scale (2)",
        "autoscaling.knative.dev/window: \"3s\": must be between 6s and 1h",
        "ebb.dev/timout: \"30s\": unknown key; did you mean ebb.dev/timeout?",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stdout}");
    for (line, want) in lines.iter().zip(expected) {
        assert_eq!(*line, format!("{prefix}{want}"));
    }
    assert!(!stdout.contains("unrelated"), "unlabelled Deployments are not ebb's business");
}

#[test]
fn warnings_alone_exit_0() {
    let dir = temp_dir("warn");
    let text = r#"
kind: Deployment
metadata:
  name: chat
  labels: {ebb.dev/service: chatbot}
  annotations:
    autoscaling.knative.dev/minScale: "1"
    autoscaling.knative.dev/min-scale: "2"
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/window: "20s"}
---
kind: Service
metadata: {name: chat}
---
kind: Service
metadata: {name: chat, namespace: default, labels: {app.kubernetes.io/managed-by: ebb}}
---
kind: StatefulSet
metadata: {name: db, labels: {ebb.dev/service: db}}
"#;
    let file = write(&dir, "warn.yaml", text);
    let (code, stdout, _) = run(&[&file]);
    assert_eq!(code, 0, "{stdout}");
    let expect = |needle: &str| assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    expect(
        "Deployment default/chat: warning: label ebb.dev/service is \"chatbot\" but must equal the Deployment's name \"chat\"",
    );
    expect("Deployment default/chat: warning: the pod template lacks the label ebb.dev/service: chat");
    expect(
        "Deployment default/chat: warning: autoscaling.knative.dev/window is set on the pod template only",
    );
    expect(
        "Deployment default/chat: warning: autoscaling.knative.dev/minScale: ignored (\"1\"): autoscaling.knative.dev/min-scale is also set and wins",
    );
    expect("Service default/chat: warning: has the name of the ebb service default/chat");
    expect(
        "StatefulSet default/db: warning: is labelled ebb.dev/service but statefulsets.apps is not in \
         scale-target-kinds (deployments.apps): add it in config-autoscaler",
    );
    assert_eq!(stdout.matches("Service default/chat: warning").count(), 1, "the ebb-owned Service is fine");
}

#[test]
fn a_config_map_in_the_input_is_checked_and_applied_to_the_deployments() {
    let dir = temp_dir("cm");
    let config_map = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: config-autoscaler, namespace: ebb-system}
data:
  max-scale-limit: "10"
  _example: "ignored"
"#;
    let deployment = GOOD
        .replace("    ebb.dev/container-concurrency: \"4\"", "    autoscaling.knative.dev/max-scale: \"50\"");
    let cm = write(&dir, "cm.yaml", config_map);
    let deploy = write(&dir, "deploy.yaml", &deployment);
    let (code, stdout, _) = run(&[&cm, &deploy]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stdout.trim(),
        format!(
            "{deploy}: Deployment models/chat: autoscaling.knative.dev/max-scale: \"50\": must be between 1 and 10 (max-scale-limit is 10)"
        )
    );

    let bad_cm = write(
        &dir,
        "bad-cm.yaml",
        "kind: ConfigMap\nmetadata: {name: config-autoscaler}\ndata: {stable-window: 2s, max-scale-up-rate: \"1\"}\n",
    );
    let (code, stdout, _) = run(&[&bad_cm]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains(
            "ConfigMap default/config-autoscaler: max-scale-up-rate: \"1\": must be greater than 1"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "ConfigMap default/config-autoscaler: stable-window: \"2s\": must be between 6s and 1h"
        ),
        "{stdout}"
    );
}

#[test]
fn non_string_annotation_values_are_errors() {
    let dir = temp_dir("nonstring");
    let file = write(&dir, "n.yaml", &GOOD.replace("\"30s\"", "30s").replace("\"4\"", "4"));
    let (code, stdout, _) = run(&[&file]);
    assert_eq!(code, 1);
    assert!(
        stdout
            .contains("ebb.dev/container-concurrency: 4: annotation values must be strings; quote it: \"4\""),
        "{stdout}"
    );
}

#[test]
fn stdin_is_read_with_a_dash() {
    let mut child = ebb().args(["check", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(BAD.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("<stdin>: Deployment models/chat: "));
}

#[test]
fn unreadable_input_exits_2_but_the_rest_is_still_checked() {
    let dir = temp_dir("unreadable");
    let bad = write(&dir, "bad.yaml", BAD);
    let not_yaml = write(&dir, "broken.yaml", "kind: Deployment\nmetadata: {name: [\n");
    let missing = dir.join("missing.yaml").to_string_lossy().into_owned();
    let (code, stdout, stderr) = run(&[&missing, &not_yaml, &bad]);
    assert_eq!(code, 2);
    assert!(stderr.contains(&format!("{missing}: cannot read: ")), "{stderr}");
    assert!(stderr.contains(&format!("{not_yaml}: not valid YAML: ")) && stderr.contains("line"), "{stderr}");
    assert_eq!(stdout.lines().count(), 4, "the readable file is still checked: {stdout}");

    let (code, _, stderr) = run(&[]);
    assert_eq!(code, 2, "a missing argument is a usage error: {stderr}");
}

/// Scale targets other than Deployments: a StatefulSet and a LeaderWorkerSet are services once
/// config-autoscaler lists their kinds; the LeaderWorkerSet's pod template that must carry the label is its
/// leader's (the entry role); a custom kind's template is its controller's business and is not checked.
#[test]
fn listed_kinds_are_checked_as_services_and_unlisted_ones_are_named() {
    let dir = temp_dir("kinds");
    let text = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: config-autoscaler, namespace: ebb-system}
data:
  scale-target-kinds: "deployments.apps, statefulsets.apps, leaderworkersets.leaderworkerset.x-k8s.io"
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, labels: {ebb.dev/service: db}, annotations: {autoscaling.knative.dev/max-scale: "3"}}
spec:
  template:
    metadata: {labels: {ebb.dev/service: db}}
---
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
metadata: {name: llm, labels: {ebb.dev/service: llm}}
spec:
  leaderWorkerTemplate:
    size: 3
    leaderTemplate:
      metadata: {labels: {app: llm}}
    workerTemplate:
      metadata: {labels: {ebb.dev/service: llm}}
---
apiVersion: serving.example.com/v1
kind: InferenceService
metadata: {name: big, labels: {ebb.dev/service: big}}
"#;
    let file = write(&dir, "kinds.yaml", text);
    let (code, stdout, _) = run(&["--verbose", &file]);
    assert_eq!(code, 0, "{stdout}");
    assert!(!stdout.contains("StatefulSet default/db: warning"), "{stdout}");
    assert!(
        stdout.contains(
            "LeaderWorkerSet default/llm: warning: the pod template lacks the label ebb.dev/service: llm"
        ),
        "the leader's template is checked: {stdout}"
    );
    assert!(
        stdout.contains(
            "InferenceService default/big: warning: is labelled ebb.dev/service but \
             inferenceservices.serving.example.com is not in scale-target-kinds"
        ),
        "{stdout}"
    );
}

/// Instances of several pods: a bad `scale-target-instances` is an error naming the key; a listed custom kind
/// needs `ebb.dev/instance-pods` (a whole number) on its objects; the annotation where it has no effect is a
/// warning.
#[test]
fn instance_settings_are_checked_with_the_kinds_they_shape() {
    let dir = temp_dir("instances");
    let config = |instances: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: config-autoscaler, namespace: ebb-system}}\ndata:\n  \
             scale-target-kinds: \"deployments.apps, statefulsets.apps, inferenceservices.serving.example.com\"\n  \
             scale-target-instances: \"{instances}\"\n"
        )
    };
    let bad = write(&dir, "bad.yaml", &config("inferenceservices.serving.example.com: name-label=a"));
    let (code, stdout, _) = run(&[&bad]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("scale-target-instances"), "{stdout}");
    assert!(stdout.contains("instance-label=LABEL is missing"), "{stdout}");

    let shape = "inferenceservices.serving.example.com: name-label=serving.example.com/name, \
                 instance-label=serving.example.com/instance";
    let object = |name: &str, pods: Option<&str>| {
        let annotations =
            pods.map(|p| format!(", annotations: {{ebb.dev/instance-pods: \"{p}\"}}")).unwrap_or_default();
        format!(
            "---\napiVersion: serving.example.com/v1\nkind: InferenceService\nmetadata: {{name: {name}, \
             labels: {{ebb.dev/service: {name}}}{annotations}}}\n"
        )
    };
    let text = format!(
        "{}{}{}{}---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db, labels: {{ebb.dev/service: db}}, \
         annotations: {{ebb.dev/instance-pods: \"2\"}}}}\nspec:\n  template:\n    metadata: {{labels: {{ebb.dev/service: db}}}}\n",
        config(shape),
        object("good", Some("3")),
        object("missing", None),
        object("wrong", Some("three")),
    );
    let file = write(&dir, "objects.yaml", &text);
    let (code, stdout, _) = run(&[&file]);
    assert_eq!(code, 1, "{stdout}");
    assert!(!stdout.contains("InferenceService default/good:"), "{stdout}");
    assert!(
        stdout.contains("InferenceService default/missing: its kind groups pods in instances but the annotation ebb.dev/instance-pods is not set"),
        "{stdout}"
    );
    assert!(stdout.contains("InferenceService default/wrong: ebb.dev/instance-pods: \"three\""), "{stdout}");
    assert!(
        stdout.contains("StatefulSet default/db: warning: ebb.dev/instance-pods is set but a replica of StatefulSet is one pod"),
        "{stdout}"
    );
}

/// Role groups: a prefill/decode pair is accepted; a group without an entry, with two, or with pods per
/// instance that are not a positive whole number is an error on every member, and the exit code is 1.
#[test]
fn bad_role_groups_are_errors_on_every_member() {
    let member = |name: &str, group: &str, entry: bool, pods: Option<&str>| {
        let service = if entry { format!(", ebb.dev/service: {name}") } else { String::new() };
        let annotations =
            pods.map(|p| format!("\n  annotations: {{ebb.dev/group-pods: \"{p}\"}}")).unwrap_or_default();
        format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: ml\n  labels: \
             {{ebb.dev/group: {group}{service}}}{annotations}\n"
        )
    };
    let dir = temp_dir("groups");
    let good = write(
        &dir,
        "good.yaml",
        &(member("prefill", "llm", false, Some("2")) + &member("decode", "llm", true, None)),
    );
    let (code, stdout, stderr) = run(&[&good]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("group"), "{stdout}");

    let bad = [
        member("p1", "none", false, Some("2")),
        member("d1", "none", false, None),
        member("a", "two", true, None),
        member("b", "two", true, None),
        member("p3", "ratio", false, Some("0")),
        member("d3", "ratio", true, None),
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: stray\n  namespace: ml\n  annotations: \
         {ebb.dev/group-pods: \"2\"}\n"
            .to_owned(),
        "---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: ml\n  labels: \
         {ebb.dev/group: llm}\n"
            .to_owned(),
    ]
    .concat();
    let bad = write(&dir, "bad.yaml", &bad);
    let (code, stdout, _) = run(&[&bad]);
    assert_eq!(code, 1, "{stdout}");
    for line in [
        "Deployment ml/p1: group \"none\" is invalid, so ebb scales none of its members: no entry",
        "Deployment ml/d1: group \"none\" is invalid",
        "Deployment ml/a: group \"two\" is invalid, so ebb scales none of its members: 2 entries (a, b)",
        "Deployment ml/b: group \"two\" is invalid",
        "Deployment ml/p3: group \"ratio\" is invalid, so ebb scales none of its members: p3: ebb.dev/group-pods: \
         \"0\": must be a whole number between 1 and 1000",
        "Deployment ml/d3: group \"ratio\" is invalid",
        "Deployment ml/stray: ebb.dev/group-pods is set but the label ebb.dev/group is not",
        "StatefulSet ml/db: warning: is labelled ebb.dev/group but role groups are of Deployments only",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
