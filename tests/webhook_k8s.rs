//! The admission webhook that injects the queue-proxy, on a real control plane: ebb installed from
//! `manifests/` (the webhook registered with `clientConfig.url` on a loopback forwarder standing in for its
//! Service, since the test cluster has no kube-proxy), and Deployments applied as a user writes them.
//!
//! - a plain labelled Deployment gets pods with the sidecar (the Deployment itself stays as written), scales
//!   from zero through the gateway and back; an unlabelled one is untouched; a broken annotation is refused
//!   with its message; an annotation changed under running pods is reported ("restart the Deployment to
//!   apply") until the restart; labelled pods created without the webhook are reported;
//! - the webhook's certificate and CA rotate while pods are created, without one failed creation;
//! - the webhook's RBAC is what docs/rbac.md says, names its objects, and is enough on v1.20.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use ebb_autoscaler::cluster::rbac::WEBHOOK_RULES;
use ebb_test_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::autoscaler::metrics_text;
use support::cluster::{
    Cluster, WAIT, WEBHOOK_NAMESPACE_LABEL, complete, http_client, is_completion, ready_ips,
};
use support::manifests::{find, grant, render};
use support::paths::in_repo;
use support::{TestNamespace, require, wait_for};

/// A Deployment as its user writes it: labelled, annotated, one container with its own readiness probe, no
/// sidecar, no `replicas` (the autoscaler's).
fn plain(name: &str, labelled: bool, annotations: Value) -> Deployment {
    let labels = if labelled { json!({"ebb.dev/service": name}) } else { json!({"app": name}) };
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{
                    "name": "model",
                    "image": "ghcr.io/ebb-dev/ebb:0.1.0",
                    "command": ["ebb", "demo-model"],
                    "args": ["--model", "demo", "--startup-delay", "500ms", "--concurrency", "8"],
                    "env": [{"name": "EBB_DEMO_LISTEN", "value": "0.0.0.0:8080"}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 1},
                }]},
            },
        },
    }))
    .unwrap()
}

fn containers(pod: &Pod) -> Vec<String> {
    pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect()
}

fn env(pod: &Pod, container: &str, name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let c = spec.containers.iter().find(|c| c.name == container)?;
    c.env.iter().flatten().find(|e| e.name == name)?.value.clone()
}

async fn live_pods(cluster: &Cluster, selector: &str) -> Result<Vec<Pod>, String> {
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    let list = pods.list(&ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?;
    Ok(list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
}

/// `ebb status` against the test cluster, for namespace `ns`.
fn ebb_status(cluster: &Cluster, ns: &str) -> String {
    let kubeconfig = require::control_plane().unwrap().kubeconfig_path().to_owned();
    let out = Command::new(support::ebb())
        .args(["status", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["-n", ns])
        .output();
    let out = out.expect("run ebb status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = cluster;
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_warning(cluster: &Cluster, name: &str, reason: &str, contains: &str) -> String {
    wait_for(WAIT, &format!("a {reason} Event about {name} saying {contains:?}"), async || {
        let notes: Vec<String> =
            cluster.events(name, reason).await.into_iter().filter_map(|e| e.note).collect();
        notes.into_iter().find(|n| n.contains(contains)).ok_or("none yet")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_labelled_deployment_gets_the_sidecar_at_pod_creation_and_scales_from_zero_and_back() {
    let Some(cluster) = Cluster::install(
        "wh-user",
        &[
            ("stable-window", "6s"),
            ("scale-to-zero-grace-period", "2s"),
            ("scale-to-zero-pod-retention-period", "0s"),
        ],
    )
    .await
    else {
        return;
    };
    let deployments = cluster.deployments();
    let pp = PostParams::default();
    let annotations = json!({
        // One pod while the sidecar's settings are changed under it; zero allowed afterwards.
        "autoscaling.knative.dev/min-scale": "1",
        "autoscaling.knative.dev/window": "6s",
        "autoscaling.knative.dev/target-burst-capacity": "0",
        "ebb.dev/container-concurrency": "8",
        "ebb.dev/timeout": "30s",
    });
    deployments.create(&pp, &plain("chat", true, annotations)).await.expect("create the plain Deployment");

    // The pod has the sidecar the annotations ask for; the Deployment is still what the user wrote.
    let pod = wait_for(WAIT, "a pod of chat", async || {
        live_pods(&cluster, "ebb.dev/service=chat").await?.into_iter().next().ok_or("none yet".to_owned())
    })
    .await;
    assert_eq!(containers(&pod), ["model", "queue-proxy"]);
    assert_eq!(env(&pod, "queue-proxy", "EBB_SERVICE_NAME").as_deref(), Some("chat"));
    assert_eq!(env(&pod, "queue-proxy", "EBB_CONTAINER_CONCURRENCY").as_deref(), Some("8"));
    assert_eq!(env(&pod, "queue-proxy", "EBB_TIMEOUT").as_deref(), Some("30s"));
    let qp = pod.spec.as_ref().unwrap().containers.iter().find(|c| c.name == "queue-proxy").unwrap();
    assert_eq!(qp.command.as_deref(), Some(&["ebb".to_owned(), "queue-proxy".to_owned()][..]));
    let model = &pod.spec.as_ref().unwrap().containers[0];
    assert!(model.readiness_probe.is_none(), "the model's readiness moved to the queue-proxy");
    assert!(model.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).is_some(), "the drain hook");
    let stored = deployments.get("chat").await.unwrap();
    let template = stored.spec.unwrap().template.spec.unwrap();
    assert_eq!(template.containers.len(), 1, "the Deployment stays as written: no drift for GitOps");
    assert!(template.containers[0].readiness_probe.is_some());
    cluster.wait_ready_pods(&cluster.apps, "ebb.dev/service=chat", 1).await;

    // An annotation that shapes the sidecar changes under a running pod: reported until the restart.
    let more = json!({"metadata": {"annotations": {"ebb.dev/container-concurrency": "4"}}});
    deployments.patch("chat", &PatchParams::default(), &Patch::Merge(more)).await.unwrap();
    let note = wait_warning(&cluster, "chat", "ConfigMismatch", "restart the Deployment to apply").await;
    assert!(
        note.contains("EBB_CONTAINER_CONCURRENCY is \"8\"") && note.contains("rollout restart"),
        "{note}"
    );
    let status = wait_for(WAIT, "ebb status to show the outdated pod", async || {
        let out = ebb_status(&cluster, &cluster.apps);
        if out.contains("outdated queue-proxy settings") { Ok(out) } else { Err(out) }
    })
    .await;
    assert!(status.contains(&format!("sidecar: {}/chat: 1 of 1 pods", cluster.apps)), "{status}");
    // `kubectl rollout restart`: the new pod gets the new settings, and the note goes.
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}});
    deployments.patch("chat", &PatchParams::default(), &Patch::Merge(restart)).await.unwrap();
    wait_for(WAIT, "the restarted pods to run with the new settings", async || {
        let pods = live_pods(&cluster, "ebb.dev/service=chat").await?;
        let all = !pods.is_empty()
            && pods
                .iter()
                .all(|p| env(p, "queue-proxy", "EBB_CONTAINER_CONCURRENCY").as_deref() == Some("4"));
        let out = ebb_status(&cluster, &cluster.apps);
        if all && !out.contains("sidecar:") { Ok(()) } else { Err(format!("{} pods\n{out}", pods.len())) }
    })
    .await;

    // Idle, it goes to zero; a request through the gateway starts it again; idle, back to zero.
    let gateway = cluster.gateway("chat").await;
    let zero = json!({"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "0"}}});
    deployments.patch("chat", &PatchParams::default(), &Patch::Merge(zero)).await.unwrap();
    cluster.wait_replicas("chat", "0 (idle)", |r| r == 0).await;
    let (status, body) = complete(&http_client(), gateway.addr()).await.expect("a completion from zero");
    assert!(is_completion(status, &body), "{status}: {body}");
    let pods = live_pods(&cluster, "ebb.dev/service=chat").await.unwrap();
    assert!(pods.iter().all(|p| containers(p) == ["model", "queue-proxy"]), "every new pod has the sidecar");
    cluster.wait_replicas("chat", "0 again (idle)", |r| r == 0).await;

    // Unlabelled: the webhook is never asked (objectSelector), the pod is as written.
    deployments.create(&pp, &plain("other", false, json!({}))).await.unwrap();
    let pod = wait_for(WAIT, "a pod of other", async || {
        live_pods(&cluster, "app=other").await?.into_iter().next().ok_or("none yet".to_owned())
    })
    .await;
    assert_eq!(containers(&pod), ["model"]);

    // A broken annotation: the pod is refused with a message naming it, and no pod runs half-injected.
    deployments.create(&pp, &plain("broken", true, json!({"ebb.dev/timeout": "soon"}))).await.unwrap();
    let events: Api<Event> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    let message = wait_for(WAIT, "the ReplicaSet's FailedCreate naming the annotation", async || {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
            .filter_map(|e| e.message)
            .find(|m| m.contains("broken"))
            .ok_or("none yet".to_owned())
    })
    .await;
    assert!(message.contains("queue-proxy.ebb.dev") && message.contains("denied"), "{message}");
    assert!(message.contains("ebb.dev/timeout") && message.contains("soon"), "{message}");
    assert!(live_pods(&cluster, "ebb.dev/service=broken").await.unwrap().is_empty());
    // The webhook counts what it answered, on whichever autoscaler replica the API server asked.
    let counted = async |result: &str| {
        let series = format!("ebb_autoscaler_webhook_admissions_total{{result=\"{result}\"}} ");
        let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.system);
        let mut total = 0.0;
        for ip in ready_ips(&pods, "app.kubernetes.io/name=ebb-autoscaler").await.unwrap() {
            let page = metrics_text(format!("{ip}:9090").parse().unwrap()).await;
            let line = page.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("{page}"));
            total += line[series.len()..].trim().parse::<f64>().unwrap();
        }
        total
    };
    assert!(counted("injected").await >= 3.0, "the chat pods, before and after the restart");
    assert!(counted("denied").await >= 1.0, "the broken pod");

    // Injection off for the namespace (as when the webhook is not installed): a labelled Deployment's pods
    // run without the sidecar, and the autoscaler says so.
    let namespaces: Api<Namespace> = Api::all(cluster.admin.clone());
    let off = json!({"metadata": {"labels": {WEBHOOK_NAMESPACE_LABEL: null}}});
    namespaces.patch(&cluster.apps, &PatchParams::default(), &Patch::Merge(off)).await.unwrap();
    deployments.create(&pp, &plain("bare", true, json!({}))).await.unwrap();
    let note = wait_warning(&cluster, "bare", "QueueProxyMissing", "without the queue-proxy").await;
    assert!(note.contains("rollout restart deployment/bare"), "{note}");
    let status = wait_for(WAIT, "ebb status to show the pod without the sidecar", async || {
        let out = ebb_status(&cluster, &cluster.apps);
        if out.contains("bare: 1 of 1 pods without the queue-proxy") { Ok(out) } else { Err(out) }
    })
    .await;
    assert!(!status.contains("/chat:"), "{status}");
    assert_eq!(cluster.logs.exits(), Vec::<String>::new(), "no container exited on its own");
}

/// Short lifetimes (a 15 s certificate, a 40 s CA, so 4 s steps) make the leader renew the certificate and
/// rotate the CA within a minute, while labelled pods are created (as dry runs: the API server calls the
/// webhook all the same) every 100 ms. Not one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhooks_certificate_and_ca_rotate_without_a_failed_pod_creation() {
    let env = [("EBB_WEBHOOK_CERT_VALIDITY", "15s"), ("EBB_WEBHOOK_CA_VALIDITY", "40s")];
    let Some(cluster) = Cluster::install_with("wh-rot", &[], &env).await else { return };
    let secrets: Api<Secret> = Api::namespaced(cluster.admin.clone(), &cluster.system);
    let data = async |key: &str| -> Vec<u8> {
        let secret = secrets.get("ebb-webhook-certs").await.unwrap();
        secret.data.unwrap_or_default().get(key).map(|v| v.0.clone()).unwrap_or_default()
    };
    let first_ca = data("ca.crt").await;
    let mut certificates = BTreeSet::from([data("tls.crt").await]);
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &cluster.apps);
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "rotation-", "labels": {"ebb.dev/service": "probe"}},
        "spec": {"containers": [{"name": "probe", "image": "ghcr.io/ebb-dev/ebb:0.1.0"}]},
    }))
    .unwrap();
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    let (mut created, mut failed) = (0, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match pods.create(&dry_run, &probe).await {
            Ok(_) => created += 1,
            Err(e) => failed.push(e.to_string()),
        }
        certificates.insert(data("tls.crt").await);
        let (ca, bundle) = (data("ca.crt").await, data("ca-bundle.crt").await);
        let rotated = ca != first_ca && bundle == ca;
        if (rotated && certificates.len() >= 4) || Instant::now() > deadline {
            assert!(rotated, "the CA did not rotate within 2 minutes");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} pod creations failed: {failed:?}",
        failed.len(),
        created + failed.len()
    );
    assert!(certificates.len() >= 4, "serving certificates seen: {}", certificates.len());
    eprintln!(
        "{created} pod creations, {} serving certificates, one CA rotation, none failed",
        certificates.len()
    );
}

/// One permission: (group, resource, verb, names).
type Permission = (String, String, String, Vec<String>);

fn permissions(rules: &Value) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    };
    for rule in rules.as_array().into_iter().flatten() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb, strings(&rule["resourceNames"])));
                }
            }
        }
    }
    out
}

fn from_code(cluster: bool) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in WEBHOOK_RULES.iter().filter(|r| r.cluster == cluster) {
        for verb in rule.verbs {
            let names = rule.names.iter().map(|n| (*n).to_owned()).collect();
            out.insert((rule.group.to_owned(), rule.resource.to_owned(), (*verb).to_owned(), names));
        }
    }
    out
}

/// docs/rbac.md's table under "## The admission webhook": group, resource, names, verbs, scope.
fn documented(cluster: bool) -> BTreeSet<Permission> {
    let text = std::fs::read_to_string(in_repo("docs/rbac.md")).unwrap();
    let section = text.split("\n## ").find(|s| s.starts_with("The admission webhook")).expect("the section");
    let mut out = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if (cells[5] == "cluster") != cluster {
            continue;
        }
        let unquote = |c: &str| c.trim_matches('`').trim_matches('"').to_owned();
        let names = if cells[3] == "(all)" { vec![] } else { vec![unquote(cells[3])] };
        for verb in cells[4].split(',') {
            out.insert((unquote(cells[1]), unquote(cells[2]), verb.trim().to_owned(), names.clone()));
        }
    }
    out
}

async fn allowed(admin: &Client, ns: &str, attributes: Value) -> bool {
    let review: SubjectAccessReview = serde_json::from_value(json!({"spec": {
        "user": format!("system:serviceaccount:{ns}:ebb-autoscaler"),
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
        "resourceAttributes": attributes,
    }}))
    .unwrap();
    let answer =
        Api::<SubjectAccessReview>::all(admin.clone()).create(&PostParams::default(), &review).await.unwrap();
    answer.status.unwrap().allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhooks_rbac_is_documented_names_its_objects_and_is_enough() {
    let objects = render(&in_repo("manifests")).unwrap();
    let rules =
        |kind: &str| permissions(&find(&objects, kind, "ebb-autoscaler-webhook").expect(kind)["rules"]);
    for cluster in [true, false] {
        let kind = if cluster { "ClusterRole" } else { "Role" };
        assert_eq!(documented(cluster), from_code(cluster), "docs/rbac.md and rbac::WEBHOOK_RULES ({kind})");
        assert_eq!(rules(kind), from_code(cluster), "manifests/ {kind} ebb-autoscaler-webhook");
    }
    let configuration = find(&objects, "MutatingWebhookConfiguration", "ebb-queue-proxy-injector").unwrap();
    let webhook = &configuration["webhooks"][0];
    assert_eq!(webhook["name"], ebb_autoscaler::cluster::webhook::WEBHOOK_NAME);
    assert_eq!(webhook["failurePolicy"], "Fail");
    assert_eq!(
        webhook["objectSelector"],
        json!({"matchExpressions": [{"key": "ebb.dev/service", "operator": "Exists"}]})
    );
    assert_eq!(webhook["rules"][0]["operations"], json!(["CREATE"]));
    assert!(find(&objects, "Secret", "ebb-webhook-certs").unwrap().get("data").is_none(), "created empty");

    let Some(cp) = require::control_plane() else { return };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "webhook-rbac").await;
    grant(&admin, &ns, "ebb-autoscaler").await;
    let mut wrong = Vec::new();
    let configurations = |verb: &str, name: &str| json!({"verb": verb, "group": "admissionregistration.k8s.io", "resource": "mutatingwebhookconfigurations", "name": name});
    let secrets = |verb: &str, name: &str, namespace: &str| json!({"verb": verb, "group": "", "resource": "secrets", "name": name, "namespace": namespace});
    for (attributes, want) in [
        (configurations("patch", "ebb-queue-proxy-injector"), true),
        (configurations("patch", "another-webhook"), false),
        (configurations("get", "ebb-queue-proxy-injector"), false),
        (configurations("update", "ebb-queue-proxy-injector"), false),
        (secrets("get", "ebb-webhook-certs", &ns), true),
        (secrets("update", "ebb-webhook-certs", &ns), true),
        (secrets("get", "another-secret", &ns), false),
        (secrets("list", "", &ns), false),
        (secrets("create", "", &ns), false),
        (secrets("delete", "ebb-webhook-certs", &ns), false),
        (secrets("get", "ebb-webhook-certs", "default"), false),
        (json!({"verb": "watch", "group": "apps", "resource": "replicasets"}), true),
        (json!({"verb": "patch", "group": "apps", "resource": "replicasets"}), false),
    ] {
        if allowed(&admin, &ns, attributes.clone()).await != want {
            wrong.push(format!("{attributes} should be {}", if want { "allowed" } else { "denied" }));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // With its token, as the autoscaler runs on v1.20: the watch by name (a list with a field selector) is
    // authorized by the named rule; any other Secret is not.
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "ebb-webhook-certs"}})).unwrap();
    Api::<Secret>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &secret).await.unwrap();
    let client = cp.service_account_client(&admin, &ns, "ebb-autoscaler").await;
    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    let by_name = ListParams::default().fields("metadata.name=ebb-webhook-certs");
    let listed = wait_for(WAIT, "the webhook Role to take effect", async || {
        secrets.list(&by_name).await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(listed.items.len(), 1);
    let other = secrets.get("default-token-none").await;
    assert!(matches!(&other, Err(kube::Error::Api(s)) if s.code == 403), "{other:?}");
}
