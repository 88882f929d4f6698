//! `ebb up` end to end: the real binary, real pod processes on their own loopback addresses, real sockets.
//! Windows are shortened through `ebb.yaml` (a 6 s stable window, a 1 s scale-to-zero grace period); every
//! wait is a poll with a deadline. Each test's `ebb up` is stopped (and its pods with it) when the test ends,
//! pass or fail.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_test_support as support;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::ebb;
use support::up::{Up, chat_load, processes_with, start, write_yaml};

/// A unique name per test (a DNS label): service name, model name, and the marker found in process lists.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// `ebb.yaml` for one demo-model service named `name` (also its model name, the marker in process lists).
fn yaml(name: &str, annotations: &[(&str, &str)]) -> String {
    let ebb = ebb().display();
    let mut text = format!(
        "config:\n  scale-to-zero-grace-period: 1s\nservices:\n  - name: {name}\n    command: [{ebb}, demo-model, \
         --model, {name}, --startup-delay, 100ms, --time-to-first-token, 10ms, --tokens-per-second, '200']\n    \
         port: 8080\n    annotations:\n      autoscaling.knative.dev/window: 6s\n"
    );
    for (k, v) in annotations {
        text.push_str(&format!("      {k}: \"{v}\"\n"));
    }
    text
}

/// `ebb up` with one demo-model service `name` kept at one pod (min-scale 1), once that pod is ready.
async fn start_warm(name: &str) -> Up {
    let up = start(name, &yaml(name, &[("autoscaling.knative.dev/min-scale", "1")]));
    up.wait_for(name, "the min-scale pod", Duration::from_secs(20), |s| s["ready"].as_u64() == Some(1)).await;
    up
}

/// Whether `pid` is a live process (a zombie's command line is empty: it is dead).
fn alive(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// From zero: a burst of 200 concurrent streaming requests all succeed; sustained load scales above 1; a
/// lighter load keeps running, without a failure, while pods drain away; with no load it goes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scales_from_zero_up_down_and_back_to_zero_without_failures() {
    let name = unique("burst");
    let up = Arc::new(start(
        &name,
        &yaml(
            &name,
            &[
                ("ebb.dev/container-concurrency", "10"),
                ("autoscaling.knative.dev/max-scale", "4"),
                ("autoscaling.knative.dev/target-burst-capacity", "0"),
            ],
        ),
    ));
    let s = up.service(&name).await;
    assert_eq!((s["desired"].as_u64(), s["ready"].as_u64()), (Some(0), Some(0)), "{s}");

    let started = Instant::now();
    let burst: Vec<_> = (0..200)
        .map(|_| {
            let (up, name) = (up.clone(), name.clone());
            tokio::spawn(async move { up.chat(&name).await })
        })
        .collect();
    let mut failed = Vec::new();
    for r in burst {
        if let Err(e) = r.await.unwrap() {
            failed.push(e);
        }
    }
    assert!(failed.is_empty(), "{} of 200 failed, first: {:?}\n{}", failed.len(), failed.first(), up.log());
    eprintln!("burst of 200 from zero done in {:?}", started.elapsed());

    let heavy = chat_load(&up, &name, 40);
    up.wait_for(&name, "more than one ready pod under load", Duration::from_secs(30), |s| {
        s["desired"].as_u64() > Some(1) && s["ready"].as_u64() > Some(1)
    })
    .await;
    // The activator passes requests through uncounted in serve mode: in flight is what the pods measure.
    up.wait_for(&name, "requests in flight in serve mode", Duration::from_secs(20), |s| {
        s["mode"] == "serve" && s["in_flight"].as_u64() > Some(0)
    })
    .await;
    let (ok, failures) = heavy.finish().await;
    assert!(failures.is_empty(), "{} failed under load: {:?}", failures.len(), failures.first());
    eprintln!("{ok} requests under sustained load");

    // A light load while the service scales down: pods drain, nothing fails.
    let light = chat_load(&up, &name, 2);
    up.wait_for(&name, "a scale-down under light load", Duration::from_secs(40), |s| {
        s["desired"].as_u64() == Some(1) && s["terminating"].as_u64() == Some(0)
    })
    .await;
    let (ok, failures) = light.finish().await;
    assert!(failures.is_empty(), "{} failed during scale-down: {:?}", failures.len(), failures.first());
    assert!(ok > 0);

    up.wait_for(&name, "scale to zero", Duration::from_secs(40), |s| {
        s["desired"].as_u64() == Some(0) && s["pods"].as_u64() == Some(0)
    })
    .await;
    assert!(up.log().contains("scaled to zero"), "{}", up.log());

    // The whole story, as `ebb status --service` tells it: decisions up and back to zero, and a plot of them
    // with the cold start's phases.
    let svg = std::env::temp_dir().join(format!("{name}.svg"));
    let url = format!("http://{}", up.metrics);
    let output = Command::new(ebb())
        .args(["status", "--url", &url, "--service", &name, "--plot"])
        .arg(&svg)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}{}", String::from_utf8_lossy(&output.stderr));
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    assert!(table.lines().any(|l| l.contains("proxy") && l.contains("activating")), "{table}");
    assert!(table.lines().last().is_some_and(|l| l.contains("zero")), "{table}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains(&format!("ebb: default/{name}")), "{plot}");
    for phase in ["decision", "scale-up until a pod exists", "pod start", "first byte"] {
        assert!(plot.contains(&format!(">{phase} ")), "no {phase} phase in the plot");
    }
    std::fs::remove_file(&svg).unwrap();
}

/// A pod whose process dies stops receiving requests and is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_is_dropped_and_replaced() {
    let name = unique("kill");
    let up = Arc::new(start_warm(&name).await);
    up.chat(&name).await.unwrap();
    let before = up.get("/service-discovery").await;
    assert_eq!(before.as_array().unwrap().len(), 1, "{before}");
    let old_pod = before[0]["labels"]["pod"].as_str().unwrap().to_owned();
    assert_eq!(before[0]["labels"]["service"], name.as_str());

    // Kill the model server (the pod's user process) the hard way.
    let victims: Vec<i32> = processes_with(&format!("--model\0{name}"));
    assert_eq!(victims.len(), 1, "exactly one model process: {victims:?}");
    kill(Pid::from_raw(victims[0]), Signal::SIGKILL).unwrap();

    // The dead pod leaves the lists and a new one takes its place.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let targets = up.get("/service-discovery").await;
        let pods: Vec<String> = targets
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["labels"]["pod"].as_str().unwrap().to_owned())
            .collect();
        let s = up.service(&name).await;
        if pods.len() == 1 && pods[0] != old_pod && s["ready"].as_u64() == Some(1) {
            assert_eq!(s["desired"].as_u64(), Some(1));
            break;
        }
        assert!(Instant::now() < deadline, "no replacement: {pods:?} {s}\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        up.chat(&name).await.unwrap_or_else(|e| panic!("after the replacement: {e}\n{}", up.log()));
    }
    assert!(up.log().contains("pod died; replacing it"), "{}", up.log());
}

/// A pod's supervisor killed with SIGKILL takes its queue-proxy and command with it, and the pod is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_supervisor_leaves_no_process_and_is_replaced() {
    let name = unique("supervisor");
    let up = start_warm(&name).await;
    let targets = up.get("/service-discovery").await;
    let old_pod = targets[0]["labels"]["pod"].as_str().unwrap().to_owned();
    let supervisor: Vec<i32> = processes_with("pod-supervisor\0")
        .into_iter()
        .filter(|p| processes_with(&name).contains(p))
        .collect();
    let proxy = processes_with(&format!("--pod-name\0{old_pod}\0"));
    let model = processes_with(&format!("--model\0{name}"));
    assert_eq!((supervisor.len(), proxy.len(), model.len()), (1, 1, 1), "{supervisor:?} {proxy:?} {model:?}");

    kill(Pid::from_raw(supervisor[0]), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(proxy[0]) || alive(model[0]) {
        assert!(Instant::now() < deadline, "the pod's processes outlived its supervisor\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `ready` may still count the old pod until its death is noticed: wait for the restart as well.
    let s = up
        .wait_for(&name, "a replacement pod", Duration::from_secs(20), |s| {
            s["restarts"].as_u64() >= Some(1) && s["ready"].as_u64() == Some(1)
        })
        .await;
    assert_eq!(s["restarts"].as_u64(), Some(1), "{s}");
    let targets = up.get("/service-discovery").await;
    assert_ne!(targets[0]["labels"]["pod"].as_str(), Some(old_pod.as_str()), "{targets}");
    up.chat(&name).await.unwrap();
}

/// A command that exits at once restarts with a growing delay, not in a loop, and a waiting request gets a 503
/// naming the crash long before its activation timeout; `ebb status` shows the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_command_backs_off_and_requests_fail_fast_naming_it() {
    let name = unique("crash");
    let text = format!(
        "config:\n  scale-to-zero-grace-period: 1s\nservices:\n  - name: {name}\n    command: \"false\"\n    \
         annotations:\n      ebb.dev/activation-timeout: 120s\n"
    );
    let up = start(&name, &text);
    let started = Instant::now();
    let err = up.chat(&name).await.unwrap_err();
    let waited = started.elapsed();
    assert!(err.starts_with("status 503"), "{err}");
    assert!(err.contains("CrashLoopBackOff: `false` exited with status 1"), "{err}");
    assert!(waited < Duration::from_secs(30), "the request waited {waited:?}");
    let s = up.service(&name).await;
    let restarts = s["restarts"].as_u64().unwrap();
    // 3 crashes block the service; a tight loop would have restarted hundreds of times by now.
    assert!((3..=8).contains(&restarts), "{restarts} restarts in {waited:?}: {s}");
    assert!(up.log().contains("pod died; replacing it"), "{}", up.log());

    // Plain `ebb status`: the table of services.
    let output =
        Command::new(ebb()).args(["status", "--url", &format!("http://{}", up.metrics)]).output().unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}{}", String::from_utf8_lossy(&output.stderr));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split("  ").filter(|c| !c.is_empty()).collect();
    assert_eq!(
        header.iter().map(|c| c.trim()).collect::<Vec<_>>(),
        ["SERVICE", "DESIRED", "READY", "MODE", "PHASE", "IN FLIGHT", "QUEUED", "LAST REASON"],
        "{table}"
    );
    assert!(lines.any(|l| l.split_whitespace().next() == Some(name.as_str())), "{table}");
}

/// Killing `ebb up` with SIGKILL leaves no pod process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_survives_ebb_up_being_killed() {
    let name = unique("orphan");
    let mut up = start(&name, &yaml(&name, &[("autoscaling.knative.dev/min-scale", "2")]));
    up.wait_for(&name, "two ready pods", Duration::from_secs(20), |s| s["ready"].as_u64() == Some(2)).await;
    // Each pod: its supervisor and the model (both carry the marker); the queue-proxies carry the pod names.
    let pods = processes_with(&format!("--model\0{name}")).len() + processes_with(&format!("{name}-")).len();
    assert!(pods >= 4, "expected the pods' processes, found {pods}");

    up.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<i32> = processes_with(&name);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes survived ebb up: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ctrl-C drains: a token stream in flight when SIGINT arrives is served to its end, then `ebb up` exits 0 and
/// no pod process is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_lets_a_stream_in_flight_finish_then_exits_cleanly() {
    let name = unique("ctrlc");
    let up = Arc::new(start_warm(&name).await);
    // 300 tokens at 200 a second: the stream lasts about 1.5 s; the signal comes well inside it.
    let stream = tokio::spawn({
        let (up, name) = (up.clone(), name.clone());
        async move { up.chat_tokens(&name, 300).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stream.is_finished(), "the stream ended before the signal");
    up.interrupt();
    stream.await.unwrap().unwrap_or_else(|e| panic!("the stream in flight was cut: {e}\n{}", up.log()));
    let mut up = Arc::into_inner(up).expect("the stream's handle is gone");
    let status = up.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}; log:\n{}", up.log());
    assert!(up.log().contains("all pods stopped"), "{}", up.log());
    let left = processes_with(&name);
    assert!(left.is_empty(), "processes survived Ctrl-C: {left:?}");
}

/// A malformed `ebb.yaml` exits with code 2, naming the line and the field of every problem.
#[test]
fn a_malformed_file_exits_2_naming_line_and_field() {
    let name = unique("bad");
    let typo = write_yaml(&format!("{name}-typo"), "services:\n  - name: demo\n    comand: sleep 1\n");
    let output = Command::new(ebb())
        .args(["up", "--port", "0", "--metrics-port", "0", "-f"])
        .arg(&typo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 3") && stderr.contains("comand"), "{stderr}");

    let bad = write_yaml(
        &format!("{name}-values"),
        "services:\n  - name: demo\n    command: sleep 1\n    annotations:\n      \
         autoscaling.knative.dev/window: 2s\n      ebb.dev/container-concurrency: lots\n",
    );
    let output = Command::new(ebb())
        .args(["up", "--port", "0", "--metrics-port", "0", "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 5") && stderr.contains("autoscaling.knative.dev/window"), "{stderr}");
    assert!(stderr.contains("line 6") && stderr.contains("ebb.dev/container-concurrency"), "{stderr}");
}
