//! The `cluster` driver: the whole controller (`ClusterController`, in this process) against the real v1.20
//! control plane of the test harness. N paused Deployments (so the controller manager makes no pods of its
//! own) and N x M pods created through the API and marked Ready with their farm addresses; every watch, pass,
//! scale patch, Service and EndpointSlice write is real. A load step is timed until the API server shows the
//! new replica count.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ebb_autoscaler::cluster::{ClusterController, Options};
use ebb_autoscaler::engine::controller::unix_ms_now;
use ebb_benches::scale::addresses::{Fleet, pod_name, service_name};
use ebb_benches::scale::driver::{
    ANNOTATIONS, DriverArgs, FarmChild, REST_LOAD, STEP_LOAD, fleet, metric_sum, note_fd_limit, scrape_errors,
};
use ebb_benches::scale::measure::{cpu_time, ms, quantile, status_kib};
use ebb_config::{GlobalConfig, ServiceId};
use ebb_inject::{SIDECAR, Service, inject_pod};
use ebb_test_support::autoscaler::{metrics_text, token_of};
use ebb_test_support::{TestNamespace, require};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// API requests in flight while the fleet is created.
const CREATING: usize = 32;

pub async fn run(args: DriverArgs) -> Result<()> {
    let shape = &args.shape;
    let fleet = fleet(shape);
    note_fd_limit(fleet);
    let me = std::process::id();
    let Some(cp) = require::control_plane() else { bail!("no control plane to run on (see above)") };
    let admin = cp.client().await;
    let ns = TestNamespace::create(&admin, "scale").await;
    let token = token_of(&cp.service_account_kubeconfig(&admin, &ns, "ebb-activator").await);
    let dir = std::env::temp_dir().join(format!("ebb-autoscaler-scale-{me}"));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token)?;

    let began = Instant::now();
    create_fleet(&admin, &ns, fleet).await?;
    eprintln!(
        "{} Deployments and {} Ready pods created in {:.1?}",
        fleet.services,
        fleet.total_pods(),
        began.elapsed()
    );

    // The ingest's port is chosen first: the farm pushes to it, and the controller scrapes the farm.
    let ingest_addr = {
        let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        probe.local_addr()?
    };
    let mut farm = FarmChild::start(shape, &[ingest_addr], &token_file)?;
    let mut options = Options::new(ns.name(), "bench-0");
    options.watch_namespaces = vec![ns.name().to_owned()];
    options.ingest_addr = ingest_addr;
    options.metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    options.pod_stats_port = farm.port;
    let rss_empty = status_kib(me, "VmRSS").unwrap_or(0);
    let started = Instant::now();
    let controller = ClusterController::start(admin.clone(), options).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(controller.is_leader() && controller.autoscaler().status().len() == fleet.services) {
        if Instant::now() > deadline {
            bail!("the controller did not take on every service within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("leading with every service after {:.1?}; warming up {} s", started.elapsed(), args.warmup);
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    let measure_from = Instant::now();
    let cpu_from = cpu_time(me).context("cpu time")?;
    // One read of the page, as a Prometheus scrape makes: the controller's copies while it writes the page are
    // part of the memory measured, the driver's (the scraper's) is not, so only its figures are kept.
    let page_from = metrics_text(controller.metrics_addr).await;
    let errors_from = scrape_errors(&page_from);
    let ticks_from = tick_histogram(&page_from);
    let passes_from = histogram(&page_from, "ebb_autoscaler_reconcile_pass_seconds");
    let per_second_names =
        ["ebb_autoscaler_reconcile_passes_total", "ebb_autoscaler_reconcile_services_total"];
    let sums_from = per_second_names.map(|name| metric_sum(&page_from, name));
    drop(page_from);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let mut steps = Vec::new();
    // Per step: from the load step to the engine's decision (the tick that saw it), and on to the patch.
    let mut decisions: Vec<(Option<f64>, Option<f64>)> = Vec::new();
    let step_every = Duration::from_secs(args.measure) / (args.steps as u32 + 1);
    for k in 0..args.steps {
        tokio::time::sleep(step_every).await;
        let service = 1 + k * (fleet.services / args.steps.max(1));
        let name = service_name(service);
        let stepped = Instant::now();
        let stepped_unix_ms = unix_ms_now();
        farm.set_load(service, STEP_LOAD)?;
        let scaled = loop {
            let replicas = deployments.get_scale(&name).await?.spec.and_then(|s| s.replicas).unwrap_or(0);
            if replicas > fleet.pods as i32 {
                break Some(stepped.elapsed());
            }
            if stepped.elapsed() > Duration::from_secs(20) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        farm.set_load(service, REST_LOAD)?;
        let id = ServiceId::new(ns.name(), name.as_str());
        let decided = controller
            .autoscaler()
            .decisions(&id)
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.unix_ms >= stepped_unix_ms && d.changed && d.desired > fleet.pods as u32);
        let to_decision = decided.map(|d| (d.unix_ms - stepped_unix_ms) as f64);
        let to_patch = scaled.zip(to_decision).map(|(took, decided)| ms(took) - decided);
        decisions.push((to_decision, to_patch));
        match scaled {
            Some(took) => steps.push(took),
            None => {
                eprintln!("step on {name}: no scale patch within 20 s (decided after {to_decision:?} ms)")
            }
        }
    }
    let remaining = Duration::from_secs(args.measure).saturating_sub(measure_from.elapsed());
    tokio::time::sleep(remaining).await;
    let elapsed = measure_from.elapsed();
    let cpu = cpu_time(me).context("cpu time")? - cpu_from;
    let rss = status_kib(me, "VmRSS").unwrap_or(0);
    let page = metrics_text(controller.metrics_addr).await;
    let ticks = tick_histogram(&page).since(&ticks_from);
    let passes = histogram(&page, "ebb_autoscaler_reconcile_pass_seconds").since(&passes_from);
    let pass_bound = |q: f64| (passes.count > 0.0).then(|| passes.quantile_bound(q) * 1000.0);
    let per_second = |k: usize| {
        let moved = metric_sum(&page, per_second_names[k])? - sums_from[k]?;
        Some(moved / elapsed.as_secs_f64())
    };
    let q = |s: &[Duration], p: f64| quantile(s, p).map_or(f64::NAN, ms);
    let result = json!({
        "mode": "cluster",
        // The allocator's settings (the manifest's are in benches/README.md): they move resident memory.
        "glibc_tunables": std::env::var("GLIBC_TUNABLES").ok(),
        "services": fleet.services,
        "pods_per_service": fleet.pods,
        "activators": shape.activators,
        "activator_every": shape.activator_every,
        "measured_s": elapsed.as_secs_f64(),
        "cpu_cores": cpu.as_secs_f64() / elapsed.as_secs_f64(),
        "rss_mib": rss as f64 / 1024.0,
        "kib_per_service": rss.saturating_sub(rss_empty) as f64 / fleet.services as f64,
        "ticks": ticks.count,
        "tick_p50_le_ms": ticks.quantile_bound(0.5) * 1000.0,
        "tick_p99_le_ms": ticks.quantile_bound(0.99) * 1000.0,
        "steps": steps.len(),
        "step_to_patch_ms": steps.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "step_to_patch_max_ms": q(&steps, 1.0),
        "step_to_decision_ms": decisions.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
        "decision_to_patch_ms": decisions.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        "scrape_errors_measured": scrape_errors(&page) - errors_from,
        "scrape_connections_kept": metric_sum(&page, "ebb_autoscaler_scrape_connections_kept"),
        "scrape_connections_limit": metric_sum(&page, "ebb_autoscaler_scrape_connections_limit"),
        "reconcile_passes_per_s": per_second(0),
        "reconcile_services_per_s": per_second(1),
        "reconcile_pass_p50_le_ms": pass_bound(0.5),
        "reconcile_pass_p99_le_ms": pass_bound(0.99),
        "reconcile_unsettled_at_end": metric_sum(&page, "ebb_autoscaler_reconcile_unsettled"),
    });
    println!("{result}");
    controller.shutdown().await;
    drop(farm);
    ns.delete(&admin).await;
    let _ = std::fs::remove_dir_all(&dir);
    if steps.len() < args.steps {
        bail!("{} of {} load steps never scaled", args.steps - steps.len(), args.steps);
    }
    Ok(())
}

/// Creates the fleet: paused Deployments of `M` replicas and their pods, Ready at their farm addresses.
async fn create_fleet(admin: &Client, ns: &str, fleet: Fleet) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let annotations: serde_json::Map<String, serde_json::Value> =
        ANNOTATIONS.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let creates = (0..fleet.services).map(|s| {
        let (deployments, annotations) = (deployments.clone(), annotations.clone());
        async move {
            let name = service_name(s);
            let deployment: Deployment = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"ebb.dev/service": name}, "annotations": annotations},
                "spec": {
                    "replicas": fleet.pods,
                    // Paused: the controller manager makes no ReplicaSet, so the only pods are the farm's.
                    "paused": true,
                    "selector": {"matchLabels": {"bench.ebb.dev/template": name}},
                    "template": {
                        "metadata": {"labels": {"bench.ebb.dev/template": name}},
                        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
                    },
                },
            }))?;
            deployments.create(&PostParams::default(), &deployment).await?;
            anyhow::Ok(())
        }
    });
    for result in futures::stream::iter(creates).buffer_unordered(CREATING).collect::<Vec<_>>().await {
        result?;
    }
    let started =
        json!(k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(600));
    let annotations: BTreeMap<String, String> =
        ANNOTATIONS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let global = GlobalConfig::default();
    let creates = (0..fleet.services).flat_map(|s| (0..fleet.pods).map(move |p| (s, p))).map(|(s, p)| {
        let (pods, started) = (pods.clone(), started.clone());
        let pod = fleet_pod(s, p, &annotations, &global);
        async move {
            let name = pod_name(s, p);
            pods.create(&PostParams::default(), &serde_json::from_value::<Pod>(pod?)?).await?;
            // As a kubelet reports a running pod of two ready containers.
            let since = started.clone();
            let condition = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": since});
            let running = |container: &str| {
                json!({"name": container, "ready": true, "started": true, "restartCount": 0,
                       "image": "example.invalid/app:1", "imageID": "example.invalid/app@sha256:0",
                       "containerID": "containerd://0", "state": {"running": {"startedAt": since}}})
            };
            let conditions = ["Initialized", "Ready", "ContainersReady", "PodScheduled"].map(condition);
            let status = json!({"status": {
                "phase": "Running",
                "podIP": fleet.address(s, p).to_string(),
                "podIPs": [{"ip": fleet.address(s, p).to_string()}],
                "hostIP": "10.255.0.1",
                "qosClass": "Burstable",
                "startTime": started,
                "conditions": conditions,
                "containerStatuses": [running("app"), running(SIDECAR)],
            }});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
            anyhow::Ok(())
        }
    });
    for result in futures::stream::iter(creates).buffer_unordered(CREATING).collect::<Vec<_>>().await {
        result?;
    }
    Ok(())
}

/// Pod `p` of service `s` as the admission webhook lets it be created: labelled for the service and picked by
/// its Deployment's selector, with the queue-proxy that the inject core makes of the service's annotations (so
/// that the controller keeps what it keeps of a real pod, and finds no sidecar to warn about).
fn fleet_pod(
    s: usize,
    p: usize,
    annotations: &BTreeMap<String, String>,
    global: &GlobalConfig,
) -> Result<serde_json::Value> {
    let service = service_name(s);
    let pod = json!({
        "metadata": {"name": pod_name(s, p), "labels": {
            "ebb.dev/service": service, "bench.ebb.dev/template": service, "pod-template-hash": "5d8f7c9b64"}},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1",
            "ports": [{"containerPort": 8080}], "resources": {"requests": {"cpu": "100m"}}}]},
    });
    let target = Service { name: &service, annotations, global };
    let injected = inject_pod(&pod, &target, "example.invalid/ebb:1")
        .map_err(|why| anyhow::anyhow!("cannot inject the bench's pod: {}", why.join("; ")))?;
    Ok(injected.pod)
}

/// The engine's tick-duration histogram: cumulative counts by upper bound (seconds).
#[derive(Debug, Default)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    count: f64,
}

impl Histogram {
    /// The ticks observed since `earlier`.
    fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| (*le, n - earlier.buckets.iter().find(|(l, _)| l == le).map_or(0.0, |(_, m)| *m)))
            .collect();
        Histogram { buckets, count: self.count - earlier.count }
    }

    /// The upper bound of the bucket holding quantile `q`: the histogram's resolution, no finer.
    fn quantile_bound(&self, q: f64) -> f64 {
        let rank = q * self.count;
        self.buckets.iter().find(|(_, n)| *n >= rank).map_or(f64::INFINITY, |(le, _)| *le)
    }
}

fn tick_histogram(metrics: &str) -> Histogram {
    histogram(metrics, "ebb_autoscaler_tick_duration_seconds")
}

/// The unlabelled histogram `name` on a metrics page.
fn histogram(metrics: &str, name: &str) -> Histogram {
    let (bucket, total) = (format!("{name}_bucket{{le=\""), format!("{name}_count "));
    let mut histogram = Histogram::default();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix(&bucket) {
            let Some((le, count)) = rest.split_once("\"} ") else { continue };
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
            histogram.buckets.push((le, count.trim().parse().unwrap_or(0.0)));
        } else if let Some(count) = line.strip_prefix(&total) {
            histogram.count = count.trim().parse().unwrap_or(0.0);
        }
    }
    histogram
}
