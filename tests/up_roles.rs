//! `ebb up` with a service of roles (2 prefill pods and 1 decode pod per instance, `ebb demo-model --role`):
//! the real binary, real pod processes on their own loopback addresses, real sockets. The decode pod asks
//! both prefill pods of its instance for every request and names them in its answer, so an answer proves
//! that the request reached a whole instance. Prefill starts slower than decode, so a request released
//! before the whole instance is ready would meet a refusing prefill pod and fail. Every wait is a poll with
//! a deadline; no timing is asserted.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_test_support as support;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::ebb;
use support::up::{RolePod, chat_load, processes_with, role_pods, start, write_yaml};

/// A unique name per test (a DNS label): service name, model name, and the marker found in process lists.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// `ebb.yaml` for a 2p1d demo service `name`: prefill pods take 1.5 s to start, the decode pod 100 ms. The
/// decode's model is `name` (its requests' model), the prefill's `name-prefill` (the marker of its processes).
fn yaml(name: &str, annotations: &[(&str, &str)]) -> String {
    let ebb = ebb().display();
    let mut text = format!(
        "config:\n  scale-to-zero-grace-period: 1s\nservices:\n  - name: {name}\n    port: 8080\n    annotations:\n      \
         autoscaling.knative.dev/window: 6s\n"
    );
    for (k, v) in annotations {
        text.push_str(&format!("      {k}: \"{v}\"\n"));
    }
    text.push_str(&format!(
        "    roles:\n      - name: prefill\n        count: 2\n        command: [{ebb}, demo-model, --role, prefill, \
         --model, {name}-prefill, --startup-delay, 1500ms, --time-to-first-token, 5ms]\n      - name: decode\n        \
         entry: true\n        command: [{ebb}, demo-model, --role, decode, --model, {name}, --startup-delay, 100ms, \
         --time-to-first-token, 10ms, --tokens-per-second, '200']\n"
    ));
    text
}

/// The service's pods by role: `(role, instance) -> (pods, ready pods)`, draining pods left out.
fn by_role(pods: &[RolePod]) -> BTreeMap<(String, u64), (usize, usize)> {
    let mut roles: BTreeMap<(String, u64), (usize, usize)> = BTreeMap::new();
    for pod in pods.iter().filter(|p| !p.terminating) {
        let entry = roles.entry((pod.role.clone(), pod.instance)).or_default();
        entry.0 += 1;
        entry.1 += usize::from(pod.ready);
    }
    roles
}

/// The instance in a pod's name, `SERVICE-INSTANCE-ROLE-N`.
fn instance_of(service: &str, pod: &str) -> u64 {
    let rest =
        pod.strip_prefix(&format!("{service}-")).unwrap_or_else(|| panic!("{pod} is not of {service}"));
    rest.split('-').next().unwrap().parse().unwrap_or_else(|_| panic!("no instance in {pod}"))
}

/// Asserts that an answer came through both prefill pods of one instance.
fn assert_whole_instance(service: &str, prefill: &[String]) {
    assert_eq!(prefill.len(), 2, "the decode pod asks both prefill pods of its instance: {prefill:?}");
    assert_ne!(prefill[0], prefill[1], "{prefill:?}");
    assert!(prefill.iter().all(|p| p.contains("-prefill-")), "{prefill:?}");
    let instances: Vec<u64> = prefill.iter().map(|p| instance_of(service, p)).collect();
    assert_eq!(instances[0], instances[1], "prefill pods of two instances answered one request: {prefill:?}");
}

/// The index of the first log line holding every one of `parts`.
fn line_of(log: &str, parts: &[&str]) -> Option<usize> {
    log.lines().position(|line| parts.iter().all(|p| line.contains(p)))
}

/// From zero, a burst of concurrent requests waits for a whole instance (both prefill pods, which start
/// last, and the decode pod) and every request succeeds through it; under load the service grows to 2
/// instances, 6 pods; without load it goes back to zero, every role with it, each instance's decode pod
/// draining before its prefill pods stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_2p1d_service_wakes_as_a_whole_instance_scales_in_instances_and_returns_to_zero() {
    let name = unique("roles");
    let annotations = [
        ("ebb.dev/container-concurrency", "10"),
        ("autoscaling.knative.dev/max-scale", "2"),
        ("autoscaling.knative.dev/target-burst-capacity", "0"),
    ];
    let up = Arc::new(start(&name, &yaml(&name, &annotations)));
    let s = up.service(&name).await;
    assert_eq!((s["desired"].as_u64(), s["ready"].as_u64()), (Some(0), Some(0)), "{s}");
    assert!(role_pods(&s).is_empty(), "{s}");

    // A burst at zero: fewer requests than one instance takes at its target, so one instance wakes.
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let (up, name) = (up.clone(), name.clone());
            tokio::spawn(async move { up.chat_through_roles(&name).await })
        })
        .collect();
    for request in burst {
        let prefill =
            request.await.unwrap().unwrap_or_else(|e| panic!("a request of the burst: {e}\n{}", up.log()));
        assert_whole_instance(&name, &prefill);
    }
    let s = up.service(&name).await;
    let roles = by_role(&role_pods(&s));
    assert_eq!(roles.get(&("prefill".to_owned(), 1)), Some(&(2, 2)), "{s}");
    assert_eq!(roles.get(&("decode".to_owned(), 1)), Some(&(1, 1)), "{s}");
    // Only the entry has a queue-proxy: one data address per instance.
    assert_eq!(s["pod_addresses"].as_array().map(Vec::len), Some(1), "{s}");

    // The order of events: the decode model listened before the prefill pods were ready, and the instance
    // joined the rotation only after both were.
    let log = up.log();
    let decode_listening =
        line_of(&log, &[&format!("serving \"{name}\" on")]).expect("the decode model's line");
    let whole = line_of(&log, &["instance ready", "\"instance\":1,"]).expect("instance 1 ready");
    let prefill = format!("\"{name}-1-prefill-");
    let ready_before: Vec<(usize, &str)> = log
        .lines()
        .take(whole)
        .enumerate()
        .filter(|(_, l)| l.contains("role pod ready") && l.contains(&prefill))
        .map(|(i, l)| (i, l.split(&prefill).nth(1).unwrap_or_default()))
        .collect();
    assert_eq!(ready_before.len(), 2, "instance 1 joined before both prefill pods were ready:\n{log}");
    assert_ne!(ready_before[0].1, ready_before[1].1, "{log}");
    assert!(decode_listening < ready_before[0].0, "the decode pod was not the faster one:\n{log}");

    // Under load: 2 instances, 6 pods, every request through a whole instance.
    let load = chat_load(&up, &name, 24);
    let s = up
        .wait_for(&name, "two ready instances under load", Duration::from_secs(40), |s| {
            let roles = by_role(&role_pods(s));
            s["ready"].as_u64() == Some(2)
                && roles.iter().filter(|((role, _), counts)| role == "prefill" && **counts == (2, 2)).count()
                    == 2
                && roles.iter().filter(|((role, _), counts)| role == "decode" && **counts == (1, 1)).count()
                    == 2
        })
        .await;
    assert_eq!(s["desired"].as_u64(), Some(2), "{s}");
    assert_eq!(role_pods(&s).iter().filter(|p| !p.terminating).count(), 6, "{s}");
    let prefill = up.chat_through_roles(&name).await.unwrap();
    assert_whole_instance(&name, &prefill);
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "{} of {} failed under load: {:?}", failures.len(), ok, failures.first());

    // Back to zero: no pod of any role is left.
    up.wait_for(&name, "scale to zero", Duration::from_secs(60), |s| {
        s["desired"].as_u64() == Some(0) && s["pods"].as_u64() == Some(0) && role_pods(s).is_empty()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&format!("--model\0{name}")).is_empty() {
        assert!(Instant::now() < deadline, "model processes outlived their instances\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each instance's decode pod stopped before its prefill pods were told to stop.
    let log = up.log();
    for instance in 1..=2 {
        let decode_stopped = line_of(&log, &["pod stopped", &format!("\"{name}-{instance}-decode-")])
            .unwrap_or_else(|| panic!("instance {instance}'s decode pod never stopped:\n{log}"));
        let prefill_told = line_of(&log, &["pod terminating", &format!("\"{name}-{instance}-prefill-")])
            .unwrap_or_else(|| panic!("instance {instance}'s prefill pods never stopped:\n{log}"));
        assert!(
            decode_stopped < prefill_told,
            "instance {instance}: prefill stopped before decode drained:\n{log}"
        );
    }
}

/// A prefill pod that dies takes its instance out of the rotation: the pod is replaced at the same address
/// (where its decode peer's `EBB_PEERS_PREFILL` points), requests meanwhile wait, and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_prefill_pod_is_replaced_at_its_address_and_requests_wait_for_the_whole_instance() {
    let name = unique("rolekill");
    let up = Arc::new(start(&name, &yaml(&name, &[("autoscaling.knative.dev/min-scale", "1")])));
    let s = up
        .wait_for(&name, "a ready instance", Duration::from_secs(30), |s| s["ready"].as_u64() == Some(1))
        .await;
    assert_whole_instance(&name, &up.chat_through_roles(&name).await.unwrap());
    let before: Vec<RolePod> = role_pods(&s).into_iter().filter(|p| p.role == "prefill").collect();
    assert_eq!(before.len(), 2, "{s}");

    let victims = processes_with(&format!("--model\0{name}-prefill\0"));
    assert_eq!(victims.len(), 2, "two prefill model processes: {victims:?}");
    kill(Pid::from_raw(victims[0]), Signal::SIGKILL).unwrap();
    // (A request that reached the decode pod before the death was noticed would fail: it needs that peer.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while line_of(&up.log(), &["instance not ready", "\"instance\":1,"]).is_none() {
        assert!(Instant::now() < deadline, "the instance stayed in the rotation:\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Requests sent from now on wait for the replacement, then go through both prefill pods.
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let (up, name) = (up.clone(), name.clone());
            tokio::spawn(async move { up.chat_through_roles(&name).await })
        })
        .collect();
    for request in requests {
        let prefill = request.await.unwrap().unwrap_or_else(|e| panic!("after the kill: {e}\n{}", up.log()));
        assert_whole_instance(&name, &prefill);
    }
    let s = up
        .wait_for(&name, "the replacement prefill pod", Duration::from_secs(30), |s| {
            s["restarts"].as_u64() == Some(1) && s["ready"].as_u64() == Some(1)
        })
        .await;
    let after: Vec<RolePod> = role_pods(&s).into_iter().filter(|p| p.role == "prefill").collect();
    assert_eq!(after.len(), 2, "{s}");
    let addresses = |pods: &[RolePod]| {
        let mut a: Vec<String> = pods.iter().map(|p| p.address.clone()).collect();
        a.sort();
        a
    };
    assert_eq!(addresses(&after), addresses(&before), "a replaced pod keeps its instance's address");
    assert_ne!(
        after.iter().map(|p| &p.name).collect::<Vec<_>>(),
        before.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    let log = up.log();
    assert!(line_of(&log, &["pod died; replacing it", &format!("\"{name}-1-prefill-")]).is_some(), "{log}");
    let out = line_of(&log, &["instance not ready"]).expect("the instance left the rotation");
    assert!(log.lines().skip(out).any(|l| l.contains("instance ready")), "it never came back:\n{log}");
}

/// Bad roles stop `ebb up` with exit code 2, one line per problem naming the line and the rule.
#[test]
fn bad_roles_exit_2_naming_line_and_rule() {
    let name = unique("badroles");
    let text = "services:\n  - name: none\n    roles:\n      - name: prefill\n        command: x\n  - name: two\n    \
                roles:\n      - name: a\n        command: x\n        entry: true\n      - name: b\n        command: x\n        \
                entry: true\n  - name: zero\n    roles:\n      - name: prefill\n        command: x\n        count: 0\n      \
                - name: decode\n        command: x\n        entry: true\n  - name: twice\n    roles:\n      - name: d\n        \
                command: x\n        entry: true\n      - name: d\n        command: y\n  - name: both\n    command: x\n    \
                roles:\n      - name: d\n        command: y\n        entry: true\n";
    let path = write_yaml(&name, text);
    let output = Command::new(ebb())
        .args(["up", "--port", "0", "--metrics-port", "0", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let expected = [
        "line 3: services[0] (none): roles: no entry",
        "line 7: services[1] (two): roles: 2 entries (\"a\", \"b\")",
        "line 18: services[2] (zero): roles[0] (prefill): count: 0: must be a whole number from 1",
        "line 27: services[3] (twice): roles[1] (d): name: \"d\" is used twice",
        "line 31: services[4] (both): roles: a service has either a command or roles, not both",
    ];
    for line in expected {
        assert!(stderr.contains(line), "no {line:?} in:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), expected.len(), "{stderr}");
}
