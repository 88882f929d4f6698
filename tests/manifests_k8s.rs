//! `manifests/` against a real control plane: every object of every kustomization is validated by
//! the API server (a dry-run create) where the v1.20 test control plane serves its kind, and the objects it
//! cannot validate are named with the reason; `ebb check` accepts the configuration and the example
//! services; the pods are hardened and drain within their grace period; and the ServiceAccounts get exactly
//! the RBAC that docs/rbac.md documents, and cannot read Secrets nor delete pods.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use ebb_config::keys::{DefaultDoc, GLOBAL_KEYS};
use ebb_config::names::{
    ACTIVATOR_METRICS_PORT, AUTOSCALER_INGEST_PORT, AUTOSCALER_METRICS_PORT, COMPONENT_ACTIVATOR,
    COMPONENT_AUTOSCALER, CONFIG_MAP_NAME, LABEL_COMPONENT, LABEL_PART_OF, LABEL_SERVICE, PART_OF_EBB,
};
use ebb_test_support as support;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Api, Client, Discovery};
use serde_json::{Value, json};
use support::manifests::{find, grant, kind, name, render, to_yaml};
use support::paths::in_repo;
use support::{TestNamespace, require};

/// The base, the dashboards, the monitoring objects and every example, each a kustomization.
const KUSTOMIZATIONS: &[&str] = &[
    "manifests",
    "manifests/dashboards",
    "manifests/monitoring",
    "manifests/examples/chat",
    "manifests/examples/vllm",
    "manifests/examples/gateway-api",
    "manifests/examples/ingress",
    "manifests/examples/leaderworkerset",
    "manifests/examples/prefill-decode",
    "manifests/scale-targets/statefulsets",
    "manifests/scale-targets/leaderworkersets",
    "manifests/scale-targets/custom",
];

/// The example whose kind the base's `config-autoscaler` does not list (it needs `scale-target-kinds`).
const LEADERWORKERSET: &str = "manifests/examples/leaderworkerset";

const PDB_WHY: &str = "policy/v1 is served from Kubernetes 1.21 and v1.20 serves only policy/v1beta1, so it is \
                       validated as policy/v1beta1 instead (same fields)";
const OPERATOR_WHY: &str = "a Prometheus operator CRD, not installed in the test control plane (tests/prometheus.rs \
                            checks the rules with promtool)";
const HTTPROUTE_WHY: &str = "a Gateway API CRD (HTTPRoute v1 needs Gateway API >= 1.0), not installed in the \
                             test control plane";

/// The objects the v1.20 test control plane cannot validate (apiVersion, kind, name, why). Exact, so that a
/// new object of an unserved kind is noticed rather than silently unvalidated.
const LWS_WHY: &str = "the LeaderWorkerSet CRD, not installed in the test control plane (tests/check.rs and \
                       tests/inject.rs check how ebb reads it)";

const EXPECTED_SKIPS: &[(&str, &str, &str, &str)] = &[
    ("policy/v1", "PodDisruptionBudget", "ebb-autoscaler", PDB_WHY),
    ("policy/v1", "PodDisruptionBudget", "ebb-activator", PDB_WHY),
    ("monitoring.coreos.com/v1", "PodMonitor", "ebb-system", OPERATOR_WHY),
    ("monitoring.coreos.com/v1", "PodMonitor", "ebb-queue-proxies", OPERATOR_WHY),
    ("monitoring.coreos.com/v1", "PrometheusRule", "ebb", OPERATOR_WHY),
    ("gateway.networking.k8s.io/v1", "HTTPRoute", "chat", HTTPROUTE_WHY),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "llm", LWS_WHY),
];

/// The activator's rules (activator/src/kube_source.rs uses only watches: list then watch).
const ACTIVATOR_RULES: &[(&str, &str, &str)] = &[
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("apps", "deployments", "list"),
    ("apps", "deployments", "watch"),
    ("", "services", "list"),
    ("", "services", "watch"),
];

fn rendered(dir: &str) -> Vec<Value> {
    render(&in_repo(dir)).unwrap_or_else(|e| panic!("rendering {dir}: {e}"))
}

#[test]
fn every_example_kustomization_is_checked() {
    let examples = in_repo("manifests/examples");
    let mut found: Vec<String> = std::fs::read_dir(&examples)
        .expect("manifests/examples")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("kustomization.yaml").is_file())
        .map(|entry| format!("manifests/examples/{}", entry.file_name().to_string_lossy()))
        .collect();
    found.sort();
    let mut listed: Vec<String> = KUSTOMIZATIONS
        .iter()
        .filter(|k| k.starts_with("manifests/examples/"))
        .map(|k| k.to_string())
        .collect();
    listed.sort();
    assert_eq!(found, listed, "every example kustomization is validated by this test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_is_valid_for_the_api_server_or_named_as_skipped() {
    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let discovery = Discovery::new(admin.clone()).run().await.expect("API discovery");
    let ns = TestNamespace::create(&admin, "manifests").await;
    let (mut validated, mut skipped, mut failures) = (0, Vec::new(), Vec::new());
    for dir in KUSTOMIZATIONS {
        let want_namespace = if dir.starts_with("manifests/examples/") { "demo" } else { "ebb-system" };
        for object in rendered(dir) {
            let (api_version, kind, name) =
                (object["apiVersion"].as_str().unwrap_or_default().to_owned(), kind(&object), name(&object));
            let what = format!("{dir}: {api_version} {kind} {name}");
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
            let Some((resource, capabilities)) =
                discovery.resolve_gvk(&GroupVersionKind::gvk(group, version, kind))
            else {
                skipped.push((api_version.clone(), kind.to_owned(), name.to_owned()));
                continue;
            };
            let namespaced = capabilities.scope == Scope::Namespaced;
            assert_eq!(
                namespaced,
                support::manifests::is_namespaced(kind),
                "{what}: the renderer's idea of its scope is wrong"
            );
            if namespaced {
                assert_eq!(object["metadata"]["namespace"], want_namespace, "{what}: rendered namespace");
            }
            // Namespaced objects go to the test's namespace (the real ones need not exist); cluster-scoped
            // ones keep their names: a dry run creates nothing.
            let mut object = object.clone();
            let api: Api<DynamicObject> = if namespaced {
                object["metadata"]["namespace"] = json!(ns.name());
                Api::namespaced_with(admin.clone(), &ns, &resource)
            } else {
                Api::all_with(admin.clone(), &resource)
            };
            match dry_run_create(&api, object).await {
                Ok(()) => validated += 1,
                Err(e) => failures.push(format!("{what}: {e}")),
            }
        }
    }
    for (api_version, kind, name) in &skipped {
        let why = EXPECTED_SKIPS
            .iter()
            .find(|s| (s.0, s.1, s.2) == (api_version.as_str(), kind.as_str(), name.as_str()))
            .map_or("not expected", |s| s.3);
        eprintln!("not validated by the v1.20 API server: {api_version} {kind} {name}: {why}");
    }
    let expected: Vec<(String, String, String)> =
        EXPECTED_SKIPS.iter().map(|s| (s.0.to_owned(), s.1.to_owned(), s.2.to_owned())).collect();
    assert_eq!(skipped, expected, "the objects v1.20 cannot validate");

    // The PodDisruptionBudgets' fields are the same in policy/v1beta1, which v1.20 serves.
    let pdb = discovery
        .resolve_gvk(&GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"))
        .expect("v1.20 serves policy/v1beta1 PodDisruptionBudgets")
        .0;
    for object in rendered("manifests").into_iter().filter(|o| kind(o) == "PodDisruptionBudget") {
        let mut object = object;
        object["apiVersion"] = json!("policy/v1beta1");
        object["metadata"]["namespace"] = json!(ns.name());
        let what = format!("PodDisruptionBudget {} as policy/v1beta1", name(&object));
        match dry_run_create(&Api::namespaced_with(admin.clone(), &ns, &pdb), object).await {
            Ok(()) => validated += 1,
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    assert!(failures.is_empty(), "the API server refused:\n{}", failures.join("\n"));
    eprintln!("{validated} object(s) validated by the API server (dry run)");
    assert!(validated >= 20, "only {validated} objects validated");
}

/// Creates `object` with `dryRun=All`: the API server validates it (admission included) and stores nothing.
/// v1.20 drops unknown fields silently (strict field validation came in 1.25), so a field missing from the
/// object it would store is reported too: a typo, or a field this version does not know.
async fn dry_run_create(api: &Api<DynamicObject>, object: Value) -> Result<(), String> {
    let dynamic: DynamicObject = serde_json::from_value(object).map_err(|e| e.to_string())?;
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    let stored = api.create(&dry_run, &dynamic).await.map_err(|e| e.to_string())?;
    let mut dropped = Vec::new();
    let (sent, stored) = (serde_json::to_value(&dynamic).unwrap(), serde_json::to_value(&stored).unwrap());
    dropped_fields(&sent, &stored, "", &mut dropped);
    match dropped.is_empty() {
        true => Ok(()),
        false => Err(format!("fields the API server dropped or changed: {}", dropped.join(", "))),
    }
}

/// The paths of `sent` that are absent from (or differ in) `stored`, the object the API server would store.
fn dropped_fields(sent: &Value, stored: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, stored) {
        (Value::Object(sent), Value::Object(stored)) => {
            for (key, value) in sent {
                match stored.get(key) {
                    Some(stored) => dropped_fields(value, stored, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(sent), Value::Array(stored)) if sent.len() == stored.len() => {
            for (i, (sent, stored)) in sent.iter().zip(stored).enumerate() {
                dropped_fields(sent, stored, &format!("{path}[{i}]"), out);
            }
        }
        (sent, stored) if sent == stored => {}
        (sent, stored) => out.push(format!("{path} ({sent} became {stored})")),
    }
}

fn ebb_check(args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_ebb")).arg("check").args(args).output().expect("run ebb check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn ebb_check_accepts_the_configuration_and_the_example_services() {
    // Everything rendered together: the ConfigMap applies to the Deployments, and a Service named like a
    // service would be reported.
    let dir = std::env::temp_dir().join(format!("ebb-manifests-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rendered.yaml");
    let base: Vec<Value> =
        KUSTOMIZATIONS.iter().filter(|d| **d != LEADERWORKERSET).flat_map(|dir| rendered(dir)).collect();
    std::fs::write(&file, to_yaml(&base)).unwrap();
    let (code, stdout, stderr) = ebb_check(&[file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "", "no problem is reported");
    assert!(stderr.contains("0 error(s), 0 warning(s); 4 valid object(s)"), "{stderr}");

    // The LeaderWorkerSet example is clean once its kind is listed, as its comments say.
    let listed = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-autoscaler, namespace: ebb-system}\n\
                  data: {scale-target-kinds: \"deployments.apps, leaderworkersets.leaderworkerset.x-k8s.io\"}\n";
    let lws = dir.join("lws.yaml");
    std::fs::write(&lws, format!("{listed}---\n{}", to_yaml(&rendered(LEADERWORKERSET)))).unwrap();
    let (code, stdout, stderr) = ebb_check(&[lws.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "", "no problem is reported");
    assert!(stderr.contains("0 error(s), 0 warning(s); 2 valid object(s)"), "{stderr}");

    // And the files as a user checks them.
    let files = [
        "manifests/config-autoscaler.yaml",
        "manifests/examples/chat/deployment.yaml",
        "manifests/examples/vllm/deployment.yaml",
    ]
    .map(|f| in_repo(f).to_string_lossy().into_owned());
    let (code, stdout, stderr) = ebb_check(&files.each_ref().map(String::as_str));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("0 error(s), 0 warning(s); 3 valid object(s)"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_autoscaler_documents_every_key_with_its_default() {
    let objects = rendered("manifests");
    let config_map = find(&objects, "ConfigMap", CONFIG_MAP_NAME).expect("config-autoscaler in manifests/");
    let data = config_map["data"].as_object().expect("data");
    let real: Vec<&String> = data.keys().filter(|k| !k.starts_with('_')).collect();
    assert!(real.is_empty(), "the shipped ConfigMap keeps the defaults; it sets {real:?}");
    let example = data["_example"].as_str().expect("an _example block");
    let parsed: std::collections::BTreeMap<String, String> =
        serde_saphyr::from_str(example).expect("_example is YAML of string values");
    let documented: BTreeSet<&str> = parsed.keys().map(String::as_str).collect();
    let keys: BTreeSet<&str> = GLOBAL_KEYS.iter().map(|k| k.key).collect();
    assert_eq!(documented, keys, "_example lists every config-autoscaler key, and no other");
    let lines: Vec<&str> = example.lines().collect();
    for doc in GLOBAL_KEYS {
        let DefaultDoc::Value(default) = doc.default else {
            panic!("{}: a global key has a literal default", doc.key)
        };
        assert_eq!(parsed[doc.key], default, "{}: the default shown", doc.key);
        let at = lines.iter().position(|l| l.starts_with(&format!("{}:", doc.key))).unwrap();
        assert!(
            at > 0 && lines[at - 1].starts_with('#') && lines[at - 1].contains(doc.meaning),
            "{}: a comment saying what it does precedes it",
            doc.key
        );
    }
    // The example, used as the data, is exactly the defaults.
    let config = ebb_config::GlobalConfig::from_data(&parsed).expect("the example is valid");
    assert_eq!(config.value, ebb_config::GlobalConfig::default());
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

fn seconds(text: &str) -> Duration {
    ebb_config::value::parse_duration(text).unwrap_or_else(|| panic!("{text:?} is not a duration"))
}

#[test]
fn the_ebb_pods_are_hardened_find_each_other_and_drain_within_their_grace_period() {
    let objects = rendered("manifests");
    let deployment =
        |name: &str| find(&objects, "Deployment", name).unwrap_or_else(|| panic!("Deployment {name}"));
    for (name, component, metrics_port) in [
        ("ebb-autoscaler", COMPONENT_AUTOSCALER, AUTOSCALER_METRICS_PORT),
        ("ebb-activator", COMPONENT_ACTIVATOR, ACTIVATOR_METRICS_PORT),
    ] {
        let d = deployment(name);
        let pod = &d["spec"]["template"];
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels[LABEL_PART_OF], PART_OF_EBB, "{name}");
        assert_eq!(labels[LABEL_COMPONENT], component, "{name}");
        assert_eq!(labels["app.kubernetes.io/name"], name, "{name}");
        let spec = &pod["spec"];
        assert_eq!(spec["serviceAccountName"], name, "{name}");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        let containers = spec["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{name}");
        let c = &containers[0];
        assert_eq!(c["image"], "ghcr.io/ebb-dev/ebb:0.1.0", "{name}");
        assert_eq!(c["command"], json!(["ebb", component]), "{name}: the image holds one multi-call `ebb`");
        let security = &c["securityContext"];
        for (field, want) in [
            ("runAsNonRoot", json!(true)),
            ("readOnlyRootFilesystem", json!(true)),
            ("allowPrivilegeEscalation", json!(false)),
        ] {
            assert_eq!(security[field], want, "{name}: securityContext.{field}");
        }
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
        for resource in ["cpu", "memory"] {
            assert!(c["resources"]["requests"][resource].is_string(), "{name}: requests.{resource}");
            assert!(c["resources"]["limits"][resource].is_string(), "{name}: limits.{resource}");
        }
        let metrics =
            c["ports"].as_array().unwrap().iter().find(|p| p["name"] == "metrics").expect("metrics port");
        assert_eq!(metrics["containerPort"], metrics_port, "{name}");
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{name}: {probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{name}: {probe}");
        }
        for env in ["POD_NAME", "POD_NAMESPACE", "POD_IP"] {
            assert!(c["env"].as_array().unwrap().iter().any(|e| e["name"] == env), "{name}: env {env}");
        }
    }

    let autoscaler = &deployment("ebb-autoscaler")["spec"];
    assert_eq!(autoscaler["replicas"], 2);
    let container = &autoscaler["template"]["spec"]["containers"][0];
    let ingest = container["ports"].as_array().unwrap().iter().find(|p| p["name"] == "ingest").unwrap();
    assert_eq!(ingest["containerPort"], AUTOSCALER_INGEST_PORT);
    // The autoscaler finds the activator pods by this selector, and accepts stats from their account.
    let selector = env_value(container, "EBB_ACTIVATOR_SELECTOR").expect("EBB_ACTIVATOR_SELECTOR");
    let activator_labels = &deployment("ebb-activator")["spec"]["template"]["metadata"]["labels"];
    for term in selector.split(',') {
        let (key, value) = term.split_once('=').unwrap();
        assert_eq!(activator_labels[key], value, "the activator pods match {selector}");
    }
    assert_eq!(
        env_value(container, "EBB_INGEST_IDENTITIES"),
        Some("system:serviceaccount:$(POD_NAMESPACE):ebb-activator"),
        "the activators' ServiceAccount, in whatever namespace the base is installed"
    );
    let env_names: Vec<&str> =
        container["env"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    let at = |n: &str| env_names.iter().position(|e| *e == n).unwrap();
    assert!(at("POD_NAMESPACE") < at("EBB_INGEST_IDENTITIES"), "$(POD_NAMESPACE) must be defined before use");

    // The activator's drain fits in its grace period, and outlasts the default activation timeout.
    let activator = &deployment("ebb-activator")["spec"]["template"]["spec"];
    let container = &activator["containers"][0];
    let deadline = seconds(env_value(container, "EBB_DRAIN_DEADLINE").expect("EBB_DRAIN_DEADLINE"));
    let grace = Duration::from_secs(activator["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(grace > deadline, "grace {grace:?} must exceed the drain deadline {deadline:?}");
    let activation_default = ebb_config::keys::ANNOTATION_KEYS
        .iter()
        .find(|k| k.key == "ebb.dev/activation-timeout")
        .map(|k| match k.default {
            DefaultDoc::Value(v) => seconds(v),
            DefaultDoc::Derived(_) => panic!("activation-timeout has a literal default"),
        })
        .unwrap();
    assert!(deadline > activation_default, "the drain outlasts a queued cold start");

    // The PodDisruptionBudgets and the activator Service select the pods they are meant for.
    for name in ["ebb-autoscaler", "ebb-activator"] {
        let pdb = find(&objects, "PodDisruptionBudget", name).expect("a PodDisruptionBudget");
        let selector = pdb["spec"]["selector"]["matchLabels"].as_object().unwrap();
        let labels = &deployment(name)["spec"]["template"]["metadata"]["labels"];
        assert!(selector.iter().all(|(k, v)| &labels[k] == v), "{name}: the PDB selects the pods");
    }
    let service = find(&objects, "Service", "ebb-activator").expect("the activator Service");
    let selector = service["spec"]["selector"].as_object().unwrap();
    assert!(selector.iter().all(|(k, v)| &activator_labels[k] == v));
}

#[test]
fn the_examples_follow_the_conventions_and_ship_no_service_named_like_theirs() {
    let objects: Vec<Value> = KUSTOMIZATIONS[1..].iter().flat_map(|dir| rendered(dir)).collect();
    let services: Vec<&Value> = objects
        .iter()
        .filter(|o| kind(o) == "Deployment" && o["metadata"]["labels"].get(LABEL_SERVICE).is_some())
        .collect();
    assert_eq!(services.len(), 3, "chat, the vLLM one and the prefill/decode group's entry");
    for d in services {
        let service = name(d);
        assert_eq!(d["metadata"]["labels"][LABEL_SERVICE], service);
        assert_eq!(d["spec"]["template"]["metadata"]["labels"][LABEL_SERVICE], service);
        assert!(d["spec"].get("replicas").is_none(), "{service}: replicas belong to the autoscaler");
        assert!(
            find(&objects, "Service", service).is_none(),
            "{service}: the public Service is the autoscaler's"
        );
        let spec = &d["spec"]["template"]["spec"];
        let containers = spec["containers"].as_array().unwrap();
        let model = &containers[0];
        assert!(model["startupProbe"].is_object() && model["livenessProbe"].is_object(), "{service}");
        assert!(model.get("readinessProbe").is_none(), "{service}: readiness is the queue-proxy's");
        let sidecar =
            containers.iter().find(|c| c["name"] == "queue-proxy").expect("the queue-proxy sidecar");
        let ports: Vec<(u64, &str)> = sidecar["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["containerPort"].as_u64().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        assert_eq!(
            ports,
            [(8012, "queue-data"), (8022, "queue-admin"), (9090, "queue-stats"), (9091, "queue-metrics")]
        );
        assert_eq!(env_value(sidecar, "EBB_SERVICE_NAME"), Some(service));
        let port = model["ports"][0]["containerPort"].as_u64().unwrap();
        assert_eq!(env_value(sidecar, "EBB_UPSTREAM"), Some(format!("127.0.0.1:{port}").as_str()));
        assert_eq!(
            sidecar["readinessProbe"]["httpGet"]["httpHeaders"],
            json!([{"name": "Ebb-Probe", "value": "queue"}])
        );
        // The sidecar has no preStop hook (SIGTERM starts its drain); the model's waits for the drain.
        assert!(sidecar.get("lifecycle").is_none(), "{}", sidecar["lifecycle"]);
        assert_eq!(
            model["lifecycle"]["preStop"]["httpGet"],
            json!({"path": "/wait-for-drain", "port": 8022})
        );
        let timeout = seconds(env_value(sidecar, "EBB_TIMEOUT").unwrap());
        let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            Duration::from_secs(grace) >= timeout + Duration::from_secs(30),
            "{service}: grace covers the drain"
        );
    }
    let route = find(&objects, "HTTPRoute", "chat").expect("the HTTPRoute");
    let filter = &route["spec"]["rules"][0]["filters"][0]["requestHeaderModifier"];
    assert_eq!(filter["set"], json!([{"name": "Ebb-Service", "value": "demo/chat"}]));
    assert_eq!(filter["remove"], json!(["Ebb-Proxied", "K-Proxy-Request"]));
    assert_eq!(route["spec"]["rules"][0]["backendRefs"], json!([{"name": "chat", "port": 80}]));
    let ingress = find(&objects, "Ingress", "chat").expect("the Ingress");
    let chat = find(&objects, "Deployment", "chat").unwrap();
    let hosts = chat["metadata"]["annotations"]["ebb.dev/hosts"].as_str().unwrap();
    assert_eq!(ingress["spec"]["rules"][0]["host"], hosts, "the Ingress's Host is one the activator knows");
}

/// One rule's verb: (API group, resource, verb).
type Permission = (String, String, String);

fn flatten(rules: &Value) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().into_iter().flatten() {
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(), "{rule}");
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    let s = |v: &Value| v.as_str().unwrap().to_owned();
                    out.insert((s(group), s(resource), s(verb)));
                }
            }
        }
    }
    out
}

/// The rows of a docs/rbac.md table under the heading that starts with `heading`.
fn documented(heading: &str) -> BTreeSet<Permission> {
    let text = std::fs::read_to_string(in_repo("docs/rbac.md")).expect("docs/rbac.md");
    let section =
        text.split("\n## ").find(|s| s.starts_with(heading)).unwrap_or_else(|| panic!("## {heading}"));
    let mut out = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let unquote = |c: &str| c.trim_matches('`').trim_matches('"').to_owned();
        for verb in cells[3].split(',') {
            out.insert((unquote(cells[1]), unquote(cells[2]), verb.trim().to_owned()));
        }
    }
    assert!(!out.is_empty(), "no rules under ## {heading}");
    out
}

fn from_code(cluster: bool) -> BTreeSet<Permission> {
    let rules = ebb_autoscaler::cluster::rbac::RULES.iter().filter(|r| r.cluster == cluster);
    rules
        .flat_map(|r| r.verbs.iter().map(|v| (r.group.to_owned(), r.resource.to_owned(), (*v).to_owned())))
        .collect()
}

/// Whether ServiceAccount `namespace/account` may `verb` `group/resource` in `in_namespace` (`None`:
/// cluster-wide), as the API server's authorizer answers.
async fn allowed(
    admin: &Client,
    namespace: &str,
    account: &str,
    permission: (&str, &str, &str),
    in_namespace: Option<&str>,
) -> bool {
    let (group, resource, verb) = permission;
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": format!("system:serviceaccount:{namespace}:{account}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
            "resourceAttributes": {
                "namespace": in_namespace, "verb": verb, "group": group, "resource": resource,
                "subresource": subresource,
            },
        }
    }))
    .unwrap();
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.expect("a review's status").allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_accounts_get_exactly_the_documented_rbac_and_no_secrets() {
    // The statements of each component's rights agree: the docs, the code's list, the manifests.
    let objects = rendered("manifests");
    let rules = |kind: &str, name: &str| {
        flatten(&find(&objects, kind, name).unwrap_or_else(|| panic!("{kind} {name}"))["rules"])
    };
    let (cluster, own) = (documented("ClusterRole"), documented("Role"));
    assert_eq!(cluster, from_code(true), "docs/rbac.md's ClusterRole and autoscaler/src/cluster/rbac.rs");
    assert_eq!(own, from_code(false), "docs/rbac.md's Role and autoscaler/src/cluster/rbac.rs");
    assert_eq!(rules("ClusterRole", "ebb-autoscaler"), cluster, "manifests/ ClusterRole ebb-autoscaler");
    assert_eq!(rules("Role", "ebb-autoscaler"), own, "manifests/ Role ebb-autoscaler");
    let activator: BTreeSet<Permission> =
        ACTIVATOR_RULES.iter().map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string())).collect();
    assert_eq!(documented("The activator"), activator, "docs/rbac.md's activator table");
    assert_eq!(rules("ClusterRole", "ebb-activator"), activator, "manifests/ ClusterRole ebb-activator");
    assert!(find(&objects, "Role", "ebb-activator").is_none(), "the activator needs no Role");

    // Applied for real, the API server's authorizer grants exactly that.
    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "manifests-rbac").await;
    grant(&admin, &ns, "ebb-autoscaler").await;
    grant(&admin, &ns, "ebb-activator").await;
    let elsewhere = "default";
    let mut wrong = Vec::new();
    let mut expect = async |account: &str, permission: Permission, scope: Option<&str>, want: bool| {
        let p = (permission.0.as_str(), permission.1.as_str(), permission.2.as_str());
        if allowed(&admin, &ns, account, p, scope).await != want {
            let allowed = if want { "denied" } else { "allowed" };
            wrong.push(format!("{account}: {} {}/{} in {scope:?} is {allowed}", p.2, p.0, p.1));
        }
    };
    let p = |g: &str, r: &str, v: &str| (g.to_owned(), r.to_owned(), v.to_owned());
    for permission in &cluster {
        expect("ebb-autoscaler", permission.clone(), None, true).await;
        expect("ebb-autoscaler", permission.clone(), Some(elsewhere), true).await;
    }
    for permission in &own {
        expect("ebb-autoscaler", permission.clone(), Some(ns.name()), true).await;
        expect("ebb-autoscaler", permission.clone(), Some(elsewhere), false).await;
    }
    for permission in &activator {
        expect("ebb-activator", permission.clone(), None, true).await;
    }
    // What neither may do.
    let forbidden = [
        p("", "secrets", "get"),
        p("", "secrets", "list"),
        p("", "secrets", "watch"),
        p("", "pods", "delete"),
        p("", "pods", "deletecollection"),
        p("", "pods", "create"),
        p("", "pods/exec", "create"),
        p("", "services", "delete"),
        p("", "services", "update"),
        p("", "configmaps", "update"),
        p("", "nodes", "get"),
        p("apps", "deployments", "update"),
        p("apps", "deployments", "delete"),
        p("apps", "deployments", "create"),
        p("apps", "deployments/scale", "update"),
        p("discovery.k8s.io", "endpointslices", "delete"),
        p("coordination.k8s.io", "leases", "delete"),
        p("rbac.authorization.k8s.io", "clusterroles", "escalate"),
        p("rbac.authorization.k8s.io", "rolebindings", "create"),
    ];
    for account in ["ebb-autoscaler", "ebb-activator"] {
        for permission in &forbidden {
            expect(account, permission.clone(), None, false).await;
            expect(account, permission.clone(), Some(ns.name()), false).await;
        }
    }
    // The activator reads only pods, Deployments and Services, by watches.
    for permission in [
        p("", "pods", "get"),
        p("", "pods", "patch"),
        p("apps", "deployments", "get"),
        p("", "services", "get"),
        p("", "services", "patch"),
        p("discovery.k8s.io", "endpointslices", "list"),
        p("", "configmaps", "get"),
        p("authentication.k8s.io", "tokenreviews", "create"),
        p("coordination.k8s.io", "leases", "get"),
    ] {
        expect("ebb-activator", permission, Some(ns.name()), false).await;
    }
    assert!(wrong.is_empty(), "the RBAC of manifests/ is not what docs/rbac.md says:\n{}", wrong.join("\n"));

    // And with the ServiceAccounts' own tokens, as the components run.
    for account in ["ebb-autoscaler", "ebb-activator"] {
        let client = cp.service_account_client(&admin, &ns, account).await;
        Api::<Pod>::all(client.clone()).list(&ListParams::default()).await.expect("listing pods is allowed");
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns).list(&ListParams::default()).await;
        assert!(matches!(&secrets, Err(kube::Error::Api(s)) if s.code == 403), "{account}: {secrets:?}");
        let secrets = Api::<Secret>::all(client.clone()).list(&ListParams::default()).await;
        assert!(matches!(&secrets, Err(kube::Error::Api(s)) if s.code == 403), "{account}: {secrets:?}");
        // Authorization comes before the lookup: a pod that does not exist still answers 403.
        let delete = Api::<Pod>::namespaced(client, &ns).delete("any-pod", &DeleteParams::default()).await;
        assert!(matches!(&delete, Err(kube::Error::Api(s)) if s.code == 403), "{account}: {delete:?}");
    }
}
