//! `ebb status` on a cluster (`--kubeconfig PATH`, `--context NAME` or `--cluster`): the scale targets labelled
//! `ebb.dev/service` (Deployments, and the objects of the other kinds the public Services name in
//! `ebb.dev/target-kind`), with what the autoscaler writes on them and on their public Service; `-w` follows
//! the Deployments and Services with watches and draws again on every change (the other kinds are read again
//! every two seconds). With `--service`, the decision trace through the API server's service proxy
//! ([`super::client::Endpoint::ServiceProxy`]).

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ebb_config::targets::TargetKind;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, ObjectMeta};
use kube::discovery;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use super::client::Endpoint;
use super::columns::render;
use super::decisions::{self, Options as DecisionOptions};
use super::output::{Format, Screen, document};

/// One autoscaled object (a scale target) as the cluster shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterRow {
    /// `NAMESPACE/NAME`.
    pub service: String,
    /// The target's kind, `RESOURCE.GROUP` (`deployments.apps`, `statefulsets.apps`).
    pub kind: String,
    /// The replicas the autoscaler wants (`status.ebb.dev/desired`); `None` before it wrote any.
    pub desired: Option<String>,
    /// `spec.replicas`.
    pub replicas: Option<i32>,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// `serve` or `proxy`: the public Service's `status.ebb.dev/mode`, else the Deployment's.
    pub mode: Option<String>,
    /// The scale-to-zero phase on the public Service (`activating`, `active`, `inactive`, `zero`).
    pub phase: Option<String>,
    /// Whether the decider is in panic mode (`status.ebb.dev/panic`); from an autoscaler too old to write
    /// it, whether the last change of replicas was a panic decision (its reason starts `panic`).
    pub panic: Option<bool>,
    /// Why the replicas last changed (`status.ebb.dev/reason`).
    pub last_reason: Option<String>,
    /// `autoscaling.knative.dev/min-scale` as written (`-o wide`).
    pub min_scale: Option<String>,
    /// `autoscaling.knative.dev/max-scale` as written (`-o wide`).
    pub max_scale: Option<String>,
    /// `autoscaling.knative.dev/target` as written (`-o wide`).
    pub target: Option<String>,
    /// `ebb.dev/container-concurrency` as written (`-o wide`).
    pub container_concurrency: Option<String>,
    /// Pods without the queue-proxy or with outdated settings, and what to do (`status.ebb.dev/sidecar`).
    pub sidecar: Option<String>,
    /// What is wrong with the role group it is the entry of (`status.ebb.dev/group`).
    pub group: Option<String>,
    /// Since when pods have been starting, not blocked (`status.ebb.dev/starting-since`, RFC 3339).
    pub starting_since: Option<String>,
}

/// A scale target as the rows read it: its kind, metadata, wanted and ready replicas.
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    /// `RESOURCE.GROUP`.
    pub kind: &'a str,
    /// Name, namespace, annotations.
    pub meta: &'a ObjectMeta,
    /// `spec.replicas`.
    pub replicas: Option<i32>,
    /// `status.readyReplicas` (0 when the kind does not say).
    pub ready: i32,
}

impl<'a> Listed<'a> {
    /// A Deployment.
    pub fn deployment(deployment: &'a Deployment) -> Self {
        Self {
            kind: ebb_config::targets::DEPLOYMENTS,
            meta: &deployment.metadata,
            replicas: deployment.spec.as_ref().and_then(|s| s.replicas),
            ready: deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
        }
    }

    /// An object of another kind, read by the fields its scale subresource conventionally maps
    /// (`spec.replicas`, `status.readyReplicas`, as StatefulSets and LeaderWorkerSets have them).
    pub fn object(kind: &'a str, object: &'a DynamicObject) -> Self {
        let number = |section: &str, field: &str| {
            object.data.get(section)?.get(field)?.as_i64().and_then(|n| i32::try_from(n).ok())
        };
        Self {
            kind,
            meta: &object.metadata,
            replicas: number("spec", "replicas"),
            ready: number("status", "readyReplicas").unwrap_or(0),
        }
    }
}

/// The rows for `targets`, with the mode and phase from the ebb-managed `services` of the same names.
pub fn cluster_rows<S: Borrow<Service>>(targets: &[Listed<'_>], services: &[S]) -> Vec<ClusterRow> {
    use ebb_config::keys::annotation;
    use ebb_config::names::{
        LABEL_MANAGED_BY, MANAGED_BY_EBB, STATUS_DESIRED, STATUS_GROUP, STATUS_MODE, STATUS_PANIC,
        STATUS_PHASE, STATUS_REASON, STATUS_SIDECAR, STATUS_STARTING_SINCE,
    };
    let key = |meta: &kube::api::ObjectMeta| {
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )
    };
    let owned: std::collections::HashMap<String, &std::collections::BTreeMap<String, String>> = services
        .iter()
        .map(Borrow::<Service>::borrow)
        .filter(|s| {
            s.metadata.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)).map(String::as_str)
                == Some(MANAGED_BY_EBB)
        })
        .filter_map(|s| Some((key(&s.metadata), s.metadata.annotations.as_ref()?)))
        .collect();
    let empty = std::collections::BTreeMap::new();
    let mut rows: Vec<ClusterRow> = targets
        .iter()
        .map(|d| {
            let service = key(d.meta);
            let own = d.meta.annotations.as_ref().unwrap_or(&empty);
            let public = owned.get(&service).copied().unwrap_or(&empty);
            let last_reason = own.get(STATUS_REASON).cloned();
            let written = |key: &str, alias: Option<&str>| {
                own.get(key).or_else(|| alias.and_then(|a| own.get(a))).cloned()
            };
            ClusterRow {
                min_scale: written(annotation::MIN_SCALE, Some("autoscaling.knative.dev/minScale")),
                max_scale: written(annotation::MAX_SCALE, Some("autoscaling.knative.dev/maxScale")),
                target: written(annotation::TARGET, None),
                container_concurrency: written(annotation::CONTAINER_CONCURRENCY, None),
                desired: own.get(STATUS_DESIRED).cloned(),
                replicas: d.replicas,
                ready: d.ready,
                mode: public.get(STATUS_MODE).or_else(|| own.get(STATUS_MODE)).cloned(),
                phase: public.get(STATUS_PHASE).cloned(),
                panic: own.get(STATUS_PANIC).map(|v| v == "true").or_else(|| {
                    last_reason.as_deref().map(|r| r.starts_with("panic: ") || r.starts_with("panic hold: "))
                }),
                last_reason,
                sidecar: own.get(STATUS_SIDECAR).cloned(),
                group: own.get(STATUS_GROUP).cloned(),
                starting_since: own.get(STATUS_STARTING_SINCE).cloned(),
                kind: d.kind.to_owned(),
                service,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.service.cmp(&b.service));
    rows
}

/// The cluster table; `wide` adds KIND, MIN, MAX, TARGET and CC (the annotations as written) before LAST
/// REASON.
/// The columns of the plain table are stable: scripts read them.
pub fn cluster_table(rows: &[ClusterRow], wide: bool) -> String {
    let mut headers = vec!["SERVICE", "DESIRED", "REPLICAS", "READY", "MODE", "PHASE", "PANIC"];
    if wide {
        headers.extend(["KIND", "MIN", "MAX", "TARGET", "CC"]);
    }
    headers.push("LAST REASON");
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let cells = rows
        .iter()
        .map(|r| {
            let mut cells = vec![
                r.service.clone(),
                dash(&r.desired),
                dash(&r.replicas.map(|n| n.to_string())),
                r.ready.to_string(),
                dash(&r.mode),
                dash(&r.phase),
                dash(&r.panic.map(|p| if p { "yes" } else { "no" }.to_owned())),
            ];
            if wide {
                cells.push(r.kind.clone());
                cells.extend([&r.min_scale, &r.max_scale, &r.target, &r.container_concurrency].map(dash));
            }
            cells.push(dash(&r.last_reason));
            cells
        })
        .collect();
    render(&headers, cells)
}

/// The lines under the table: one per service whose pods are starting (a long startup probe: how long, as
/// of `now`), one per service whose pods do not all run the queue-proxy its annotations ask for, one per
/// service whose role group ebb refuses (empty when there is none).
pub fn cluster_notes(rows: &[ClusterRow], now: Timestamp) -> String {
    let starting = rows.iter().filter_map(|r| {
        let since: Timestamp = r.starting_since.as_deref()?.parse().ok()?;
        let secs = now.duration_since(since).as_secs().max(0).unsigned_abs();
        Some(format!("starting: {}: pods starting for {}, not blocked\n", r.service, elapsed(secs)))
    });
    let sidecar =
        rows.iter().filter_map(|r| Some(format!("sidecar: {}: {}\n", r.service, r.sidecar.as_deref()?)));
    let group = rows.iter().filter_map(|r| Some(format!("group: {}: {}\n", r.service, r.group.as_deref()?)));
    starting.chain(sidecar).chain(group).collect()
}

/// `1h05m`, `4m10s`, `42s`.
fn elapsed(secs: u64) -> String {
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// What `ebb status` on a cluster shows.
pub struct ClusterOptions<'a> {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `-n`: one namespace; `None` is every namespace.
    pub namespace: Option<String>,
    /// `-o`.
    pub format: Format,
    /// `-w`.
    pub watch: bool,
    /// `--service`, with what to show of it.
    pub service: Option<(String, DecisionOptions<'a>)>,
    /// The autoscaler's namespace (its Service for `--service`).
    pub autoscaler_namespace: String,
}

/// `ebb status` on a cluster.
pub fn run(options: ClusterOptions<'_>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ebb status: {err}");
            return ExitCode::FAILURE;
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config =
        match runtime.block_on(cluster_config(options.kubeconfig.as_deref(), options.context.as_deref())) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("ebb status: {err}");
                return ExitCode::from(ebb_process::exit::USAGE);
            }
        };
    let server = config.cluster_url.to_string();
    let default_namespace = config.default_namespace.clone();
    // The client's buffer task needs the runtime.
    let _runtime = runtime.enter();
    let client = match kube::Client::try_from(config) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("ebb status: cannot use the cluster at {server}: {err}");
            return ExitCode::from(ebb_process::exit::USAGE);
        }
    };
    if let Some((service, decision_options)) = options.service {
        // `NAME` alone is in -n's namespace, else the context's.
        let service = match service.split_once('/') {
            Some(_) => service,
            None => format!("{}/{service}", options.namespace.as_deref().unwrap_or(&default_namespace)),
        };
        let endpoint = Endpoint::ServiceProxy { client, namespace: options.autoscaler_namespace };
        return runtime.block_on(decisions::run(&endpoint, &service, decision_options));
    }
    let namespace = options.namespace.as_deref();
    if options.watch {
        return runtime.block_on(watch(client, namespace, options.format, &server));
    }
    match runtime.block_on(fetch_cluster(client, namespace)) {
        Ok((rows, problems)) => {
            print!("{}", show(&rows, &problems, options.format));
            if rows.is_empty() {
                eprintln!("ebb status: nothing labelled ebb.dev/service in {}", scope(namespace));
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ebb status: cannot list autoscaled Deployments from {server}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn scope(namespace: Option<&str>) -> String {
    namespace.map_or_else(|| "any namespace".to_owned(), |ns| format!("namespace {ns}"))
}

/// The rows in `format`; `problems` are lines about kinds that could not be read (under the table).
fn show(rows: &[ClusterRow], problems: &[String], format: Format) -> String {
    match format {
        Format::Table | Format::Wide => {
            let table = cluster_table(rows, format == Format::Wide);
            let problems = problems.iter().map(|p| format!("{p}\n"));
            match cluster_notes(rows, Timestamp::now()) + &problems.collect::<String>() {
                notes if notes.is_empty() => table,
                notes => format!("{table}\n{notes}"),
            }
        }
        Format::Json | Format::Yaml => {
            for problem in problems {
                eprintln!("ebb status: {problem}");
            }
            let value = serde_json::to_value(rows).unwrap_or_default();
            match format {
                // In the rows' own field order.
                Format::Json => serde_json::to_string_pretty(rows).map(|t| t + "\n").unwrap_or_default(),
                _ => document(&value, format),
            }
        }
    }
}

/// The cluster's configuration: `kubeconfig` (else `$KUBECONFIG`, `~/.kube/config`; else in-cluster when no
/// `context` is named), at `context` (else the current one).
async fn cluster_config(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<kube::Config, String> {
    let options =
        kube::config::KubeConfigOptions { context: context.map(str::to_owned), ..Default::default() };
    let in_context = context.map(|c| format!(" in context {c}")).unwrap_or_default();
    match (kubeconfig, context) {
        (Some(path), _) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("cannot use the kubeconfig {}{in_context}: {e}", path.display()))
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await.map_err(|e| {
            format!("cannot use the kubeconfig ($KUBECONFIG or ~/.kube/config){in_context}: {e}")
        }),
        (None, None) => kube::Config::infer().await.map_err(|e| {
            format!(
                "no cluster found ($KUBECONFIG, ~/.kube/config, in-cluster): {e}; or pass --kubeconfig PATH"
            )
        }),
    }
}

/// The APIs of the Deployments and Services in `namespace`, or everywhere.
fn apis(client: kube::Client, namespace: Option<&str>) -> (Api<Deployment>, Api<Service>) {
    match namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client, ns)),
        None => (Api::all(client.clone()), Api::all(client)),
    }
}

fn managed_by_ebb() -> String {
    format!("{}={}", ebb_config::names::LABEL_MANAGED_BY, ebb_config::names::MANAGED_BY_EBB)
}

async fn fetch_cluster(
    client: kube::Client,
    namespace: Option<&str>,
) -> Result<(Vec<ClusterRow>, Vec<String>), String> {
    let (deployments, services) = apis(client.clone(), namespace);
    let labelled = ListParams::default().labels(ebb_config::names::LABEL_SERVICE);
    let deployments = deployments.list(&labelled).await.map_err(|e| e.to_string())?;
    let services =
        services.list(&ListParams::default().labels(&managed_by_ebb())).await.map_err(|e| e.to_string())?;
    let (others, problems) = other_targets(&client, namespace, &services.items).await;
    Ok((rows_of(&deployments.items, &others, &services.items), problems))
}

/// The rows of the Deployments and the objects of other kinds (each with its kind).
fn rows_of<D: Borrow<Deployment>, S: Borrow<Service>>(
    deployments: &[D],
    others: &[(String, DynamicObject)],
    services: &[S],
) -> Vec<ClusterRow> {
    let listed: Vec<Listed<'_>> = deployments
        .iter()
        .map(|d| Listed::deployment(d.borrow()))
        .chain(others.iter().map(|(kind, object)| Listed::object(kind, object)))
        .collect();
    cluster_rows(&listed, services)
}

/// The objects labelled `ebb.dev/service` of the kinds other than Deployments that own public `services`
/// (labelled `ebb.dev/target-kind`, owned by their target), each with its kind as `RESOURCE.GROUP`; and a
/// line for each kind that could not be read (say, the user may not list it).
async fn other_targets<S: Borrow<Service>>(
    client: &kube::Client,
    namespace: Option<&str>,
    services: &[S],
) -> (Vec<(String, DynamicObject)>, Vec<String>) {
    let kinds: std::collections::BTreeSet<(String, String)> = services
        .iter()
        .filter_map(|s| {
            let meta = &s.borrow().metadata;
            let kind = meta.labels.as_ref()?.get(ebb_config::names::LABEL_TARGET_KIND)?;
            let owner = meta.owner_references.as_ref()?.iter().find(|o| &o.kind == kind)?;
            Some((owner.api_version.clone(), owner.kind.clone()))
        })
        .collect();
    let (mut objects, mut problems) = (Vec::new(), Vec::new());
    for (api_version, kind) in kinds {
        match list_kind(client, &api_version, &kind, namespace).await {
            Ok((name, items)) => objects.extend(items.into_iter().map(|o| (name.clone(), o))),
            Err(err) => problems.push(format!("kind: {kind} ({api_version}): {err}")),
        }
    }
    (objects, problems)
}

/// The objects of `kind` in `api_version` labelled `ebb.dev/service`, with the kind's `RESOURCE.GROUP`.
async fn list_kind(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
) -> Result<(String, Vec<DynamicObject>), String> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (resource, _) = discovery::pinned_kind(client, &gvk).await.map_err(|e| format!("not served: {e}"))?;
    let name = TargetKind { resource: resource.plural.clone(), group: resource.group.clone() }.to_string();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let labelled = ListParams::default().labels(ebb_config::names::LABEL_SERVICE);
    match api.list(&labelled).await {
        Ok(list) => Ok((name, list.items)),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            Err(format!("you may not list {name} (docs/rbac.md: grant get and list on it beside ebb-status)"))
        }
        Err(err) => Err(format!("cannot list {name}: {err}")),
    }
}

/// `-w`: watches the Deployments and the public Services, and draws the rows again whenever they change,
/// until interrupted. Exit 1 when the first listing fails.
async fn watch(client: kube::Client, namespace: Option<&str>, format: Format, server: &str) -> ExitCode {
    let (deployments, services) = apis(client.clone(), namespace);
    let (deployment_store, deployment_writer) = reflector::store::<Deployment>();
    let (service_store, service_writer) = reflector::store::<Service>();
    let labelled = watcher::Config::default().labels(ebb_config::names::LABEL_SERVICE);
    let managed = watcher::Config::default().labels(&managed_by_ebb());
    // Each event says which list it belongs to and whether that list is complete (the end of a listing).
    fn complete<K>(event: &watcher::Event<K>) -> bool {
        matches!(event, watcher::Event::InitDone)
    }
    let deployment_events = reflector(deployment_writer, watcher(deployments, labelled))
        .default_backoff()
        .map(move |e| e.map(|event| (0, complete(&event))));
    let service_events = reflector(service_writer, watcher(services, managed))
        .default_backoff()
        .map(move |e| e.map(|event| (1, complete(&event))));
    // The other kinds have no watch here (their kinds come and go with the Services): read every 2 s.
    let reread = futures::stream::unfold((), |()| async {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        Some((Ok((2, true)), ()))
    });
    let mut events = std::pin::pin!(futures::stream::select(
        futures::stream::select(deployment_events, service_events),
        reread
    ));
    let mut listed = [false, false];
    let (mut others, mut problems) = (Vec::new(), Vec::new());
    let mut screen = Screen::new(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let mut drawn_once = false;
    let mut failed_before_drawing = false;
    while let Some(event) = events.next().await {
        match event {
            Ok((2, _)) => {
                (others, problems) = other_targets(&client, namespace, &service_store.state()).await
            }
            Ok((list, done)) => listed[list] |= done,
            Err(err) => {
                eprintln!("ebb status: watching {server}: {err}");
                // Give up only when the very first listing fails twice: a wrong server or no rights.
                if !drawn_once && failed_before_drawing {
                    return ExitCode::FAILURE;
                }
                failed_before_drawing = true;
                continue;
            }
        }
        // Draw once both lists have arrived, then on every change.
        if listed != [true, true] {
            continue;
        }
        let rows = rows_of(&deployment_store.state(), &others, &service_store.state());
        if let Err(err) = screen.draw(show(&rows, &problems, format), format) {
            // stdout closed (`| head`): nothing more to show.
            return if err.kind() == std::io::ErrorKind::BrokenPipe {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        drawn_once = true;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use ebb_config::names::{
        STATUS_DESIRED, STATUS_MODE, STATUS_PANIC, STATUS_PHASE, STATUS_REASON, STATUS_SIDECAR,
    };
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_read_what_the_autoscaler_writes() {
        let deployment = |name: &str, annotations: serde_json::Value| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "models", "annotations": annotations},
                "spec": {"replicas": 3, "selector": {}, "template": {}},
                "status": {"readyReplicas": 2},
            }))
            .unwrap()
        };
        let deployments = [
            deployment(
                "chat",
                json!({STATUS_DESIRED: "3", STATUS_MODE: "proxy", STATUS_REASON: "panic: 30 concurrent over target 7 x 1 pod -> 3 pods"}),
            ),
            deployment("batch", json!({})),
            deployment(
                "embed",
                json!({STATUS_DESIRED: "2", STATUS_PANIC: "true", STATUS_REASON: "stable: 2 pods"}),
            ),
        ];
        let service = |labels: serde_json::Value| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": "chat", "namespace": "models", "labels": labels,
                             "annotations": {STATUS_MODE: "serve", STATUS_PHASE: "active"}},
            }))
            .unwrap()
        };
        let rows = rows_of(&deployments, &[], &[service(json!({"app.kubernetes.io/managed-by": "ebb"}))]);
        assert_eq!(rows[0].service, "models/batch");
        assert_eq!((rows[0].desired.as_deref(), rows[0].mode.as_deref(), rows[0].panic), (None, None, None));
        let chat = &rows[1];
        assert_eq!((chat.desired.as_deref(), chat.replicas, chat.ready), (Some("3"), Some(3), 2));
        assert_eq!(
            (chat.mode.as_deref(), chat.phase.as_deref(), chat.panic),
            (Some("serve"), Some("active"), Some(true))
        );
        let table = cluster_table(&rows, false);
        assert!(
            table.starts_with("SERVICE       DESIRED  REPLICAS  READY  MODE   PHASE   PANIC  LAST REASON\n"),
            "{table}"
        );
        assert!(
            table.contains("models/chat   3        3         2      serve  active  yes    panic: 30"),
            "{table}"
        );
        // The live flag wins over the last change's reason.
        assert_eq!((rows[2].service.as_str(), rows[2].panic), ("models/embed", Some(true)));
        assert_eq!(cluster_notes(&rows, Timestamp::now()), "");
        // A Service ebb does not own says nothing about the mode: the Deployment's annotation is used.
        let rows = rows_of(&deployments, &[], &[service(json!({}))]);
        assert_eq!((rows[1].mode.as_deref(), rows[1].phase.as_deref()), (Some("proxy"), None));
    }

    #[test]
    fn pods_without_the_sidecar_or_with_outdated_settings_are_shown_under_the_table() {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "chat", "namespace": "models",
                         "annotations": {STATUS_SIDECAR: "1 of 2 pods with outdated queue-proxy settings: restart"}},
            "spec": {"selector": {}, "template": {}},
        }))
        .unwrap();
        let rows = rows_of(&[deployment], &[], &[] as &[Service]);
        assert_eq!(
            cluster_notes(&rows, Timestamp::now()),
            "sidecar: models/chat: 1 of 2 pods with outdated queue-proxy settings: restart\n"
        );
    }

    #[test]
    fn a_refused_role_group_is_shown_under_the_table() {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "ml",
                         "annotations": {ebb_config::names::STATUS_GROUP: "group \"two\" is invalid"}},
            "spec": {"selector": {}, "template": {}},
        }))
        .unwrap();
        let rows = rows_of(&[deployment], &[], &[] as &[Service]);
        assert_eq!(cluster_notes(&rows, Timestamp::now()), "group: ml/a: group \"two\" is invalid\n");
    }

    #[test]
    fn objects_of_other_kinds_are_rows_and_a_long_start_is_shown_with_its_age() {
        let set: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "llm", "namespace": "ml", "annotations": {
                STATUS_DESIRED: "2", ebb_config::names::STATUS_STARTING_SINCE: "2026-12-05T10:00:00Z"}},
            "spec": {"replicas": 2}, "status": {"readyReplicas": 1},
        }))
        .unwrap();
        let rows = rows_of(&[] as &[Deployment], &[("statefulsets.apps".to_owned(), set)], &[] as &[Service]);
        let llm = &rows[0];
        assert_eq!((llm.service.as_str(), llm.kind.as_str()), ("ml/llm", "statefulsets.apps"));
        assert_eq!((llm.desired.as_deref(), llm.replicas, llm.ready), (Some("2"), Some(2), 1));
        let now: Timestamp = "2026-12-05T10:04:10Z".parse().unwrap();
        assert_eq!(cluster_notes(&rows, now), "starting: ml/llm: pods starting for 4m10s, not blocked\n");
        let later: Timestamp = "2026-12-05T11:05:00Z".parse().unwrap();
        assert!(cluster_notes(&rows, later).contains("for 1h05m"));
        assert!(cluster_table(&rows, true).contains("statefulsets.apps"));
    }
}
