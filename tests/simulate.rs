//! `ebb simulate` end to end: the built binary on trace files written to a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const HEADER: &str = "t,ready,stable,panic,desired,replicas,ebc,panic_mode,mode,reason";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ebb-simulate-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn simulate(trace: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ebb"))
        .arg("simulate")
        .arg("--trace")
        .arg(trace)
        .args(extra)
        .output()
        .expect("run ebb")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// The output row for time `t`.
fn row<'a>(csv: &'a str, t: &str) -> &'a str {
    csv.lines()
        .find(|l| l.split(',').next() == Some(t))
        .unwrap_or_else(|| panic!("no row for t={t} in\n{csv}"))
}

/// Load 150 concurrent from t=10, 20 from t=40, nothing from t=60 to t=250; defaults (target 70, TBC 211).
const SPIKE: &str = "t,concurrency\n0,0\n10,150\n40,20\n60,0\n250,0\n";

#[test]
fn load_trace_panics_on_the_spike_and_goes_back_to_zero() {
    let dir = TempDir::new();
    let out = simulate(&dir.file("spike.csv", SPIKE), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = stdout(&out);
    assert_eq!(csv.lines().next(), Some(HEADER));
    // A tick every 2 s from t=0 to t=250: 126 rows.
    assert_eq!(csv.lines().count(), 1 + 126);
    // t=0: a new service, its initial pod starting: the decider wants 0, the policy keeps the replica.
    assert!(row(&csv, "0").starts_with("0,0,0,0,0,1,-211,false,proxy,"));
    // t=12, one pod ready since t=2. Stable: seconds 0..=12 hold 150 x 3 = 450, /13 = 34.615384.
    // Panic (6 s): seconds 7..=12 = 450/6 = 75 -> ceil(75/70) = 2 pods, 2/1 >= 200%: panic, desired 2.
    // EBC = floor(1 x 100 - 211 - 75) = -186: the activator stays in the path.
    let r = row(&csv, "12");
    assert!(
        r.starts_with("12,1,34.615384,75,2,2,-186,true,proxy,panic: 75 concurrent over target 70"),
        "{r}"
    );
    // The last tick over the threshold was t=12: panic ends on the first tick after 12 + 60 = 72, at t=74.
    assert!(row(&csv, "72").contains(",true,"));
    assert!(row(&csv, "74").contains(",false,"));
    // The stable window is empty of load at 60 + 60 = 120: marked inactive; the single pod has been behind
    // the activator (EBC < 0) for longer than the 30 s grace period, so replicas go to 0 on the next tick.
    assert!(row(&csv, "120").contains("inactive, putting the activator in the path"));
    assert!(row(&csv, "122").starts_with("122,1,0,0,0,0,"), "{}", row(&csv, "122"));
    let summary = stderr(&out);
    assert!(summary.contains("peak pods: 3\n"), "{summary}");
    assert!(summary.contains("scale-from-zero events: 0\n"), "{summary}");
    assert!(
        summary.contains("time to zero after load stopped: 62s (load stopped at t=60, zero at t=122)"),
        "{summary}"
    );
    assert!(summary.contains("pod-seconds used: "), "{summary}");
    assert!(summary.contains("seconds under capacity: "), "{summary}");
}

#[test]
fn load_at_zero_is_decided_at_once_and_counted_as_a_scale_from_zero() {
    let dir = TempDir::new();
    // Idle until t=201 (an odd second, between two regular ticks), 10 concurrent until 210.
    let trace = dir.file("cold.csv", "t,concurrency\n0,0\n201,10\n211,0\n230,0\n");
    let out = simulate(&trace, &["--pod-startup", "5s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = stdout(&out);
    // Zero long before: active since t=2 (pod-startup 5 s: ready at 5, active at the t=6 tick); idle, so
    // inactive at 6 + 60 = 66 and, proxying since t=0, at zero on the next tick.
    assert!(row(&csv, "66").contains("inactive, putting the activator in the path"), "{}", row(&csv, "66"));
    assert!(row(&csv, "68").starts_with("68,1,0,0,0,0,"), "{}", row(&csv, "68"));
    // The first load at zero is decided at once, at t=201: stable = 10/60 -> 1 pod.
    assert!(row(&csv, "201").starts_with("201,0,0.166666,1.666666,1,1,"), "{}", row(&csv, "201"));
    // Ready 5 s later: the t=206 tick sees it.
    assert!(row(&csv, "204").starts_with("204,0,"));
    assert!(row(&csv, "206").starts_with("206,1,"));
    assert!(stderr(&out).contains("scale-from-zero events: 1\n"), "{}", stderr(&out));
}

#[test]
fn decider_trace_starts_in_panic_with_several_ready_pods_and_has_a_row_per_input_row() {
    let dir = TempDir::new();
    let trace =
        dir.file("restart.csv", "t,ready,stable,panic\n0,4,0,0\n2,4,0,0\n30,4,,\n60,4,0,0\n62,4,0,0\n");
    let out = simulate(&trace, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = stdout(&out);
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 5, "{csv}");
    // Created with 4 ready pods at t=0: in panic, holding 4 although the load wants floor(4/2) = 2.
    assert!(
        rows[0].starts_with("0,4,0,0,4,4,189,true,serve,\"panic hold: load wants 2 pods, keeping 4"),
        "{}",
        rows[0]
    );
    // No data at t=30: no decision, replicas left at 4.
    assert!(rows[2].starts_with("30,4,,,,4,,true,serve,\"no data"), "{}", rows[2]);
    // Panic holds until 0 + 60 < now: still at 60, over at 62 (down to 2 by the scale-down rate).
    assert!(rows[3].starts_with("60,4,0,0,4,4,189,true,"), "{}", rows[3]);
    assert!(rows[4].starts_with("62,4,0,0,2,2,189,false,"), "{}", rows[4]);
    // Replicas 4 from t=0 to t=62: 4 x 62 = 248 pod-seconds.
    let summary = stderr(&out);
    assert!(summary.contains("pod-seconds used: 248\n"), "{summary}");
    assert!(summary.contains("peak pods: 4\n"), "{summary}");
    assert!(summary.contains("time to zero after load stopped: n/a (no load in the trace)"), "{summary}");
}

#[test]
fn out_and_plot_write_files_and_leave_stdout_empty() {
    let dir = TempDir::new();
    let (csv_path, svg_path) = (dir.path("out.csv"), dir.path("plot.svg"));
    let out = simulate(
        &dir.file("spike.csv", SPIKE),
        &["--out", csv_path.to_str().unwrap(), "--plot", svg_path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(csv.lines().next(), Some(HEADER));
    assert_eq!(csv.lines().count(), 127);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<title>panic</title>"), "the spike's panic period is drawn");
    assert!(svg.contains("desired pods") && svg.contains("ready pods") && svg.contains("load (concurrency"));
    assert!(stderr(&out).contains("peak pods: 3\n"));
}

#[test]
fn annotations_and_a_config_map_change_the_simulation() {
    let dir = TempDir::new();
    let trace = dir.file("spike.csv", SPIKE);
    // Target 10 at 70% -> 7 per pod. At t=10 the panic window's 150/6 = 25 wants ceil(25/7) = 4 pods, ready
    // at t=12 (2 s start-up), when its 75 wants ceil(75/7) = 11 (11/4 >= 200%: still panic). The target is
    // also the per-pod total: EBC = floor(4 x 10 - 211 - 75) = -246.
    let out = simulate(&trace, &["--annotation", "autoscaling.knative.dev/target=10"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = stdout(&out);
    assert!(row(&csv, "10").starts_with("10,1,13.636363,25,4,4,"), "{}", row(&csv, "10"));
    let r = row(&csv, "12");
    assert!(
        r.starts_with("12,4,34.615384,75,11,11,-246,true,proxy,panic: 75 concurrent over target 7 x 4 pods"),
        "{r}"
    );
    // Scale to zero disabled in the ConfigMap: the load stops but the service never reaches zero.
    let cm = dir.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  enable-scale-to-zero: \"false\"\n",
    );
    let out = simulate(&trace, &["--config-map", cm.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("time to zero after load stopped: not reached"), "{}", stderr(&out));
    assert!(row(&stdout(&out), "250").contains("enable-scale-to-zero is false: keeping 1 pod"));
}

#[test]
fn invalid_configuration_exits_2_with_every_problem() {
    let dir = TempDir::new();
    let trace = dir.file("spike.csv", SPIKE);
    let out = simulate(
        &trace,
        &[
            "--annotation",
            "autoscaling.knative.dev/window=3s",
            "--annotation",
            "autoscaling.knative.dev/min-scale=x",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("autoscaling.knative.dev/window") && err.contains("autoscaling.knative.dev/min-scale"),
        "{err}"
    );
    let cm = dir.file("cm.yaml", "data:\n  stable-window: \"1s\"\n");
    let out = simulate(&trace, &["--config-map", cm.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("stable-window"), "{}", stderr(&out));
    let out = simulate(&trace, &["--annotation", "no-equals-sign"]);
    assert_eq!(out.status.code(), Some(2));
    // A requests-per-second trace for a service said to scale on concurrency.
    let rps = dir.file("rps.csv", "t,rps\n0,5\n");
    let out = simulate(&rps, &["--annotation", "autoscaling.knative.dev/metric=concurrency"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "the trace's header gives rps but --annotation autoscaling.knative.dev/metric=concurrency says the \
             service scales on concurrency; drop the annotation to take the metric from the trace"
        ),
        "{}",
        stderr(&out)
    );
    // An invalid metric is listed like any other invalid annotation.
    let out = simulate(&rps, &["--annotation", "autoscaling.knative.dev/metric=cpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("autoscaling.knative.dev/metric: \"cpu\": must be one of"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_rps_trace_scales_on_rps_without_the_metric_annotation() {
    let dir = TempDir::new();
    // SPIKE's shape in requests per second: 300 rps from t=10, nothing from t=40.
    let trace = dir.file("rps.csv", "t,rps\n0,0\n10,300\n40,0\n100,0\n");
    let out = simulate(&trace, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inferred = stdout(&out);
    // rps defaults: 200 per pod at a fixed 70% = 140. At t=12 the stable window holds 300 x 3 / 13 =
    // 69.230769 and the panic window 900 / 6 = 150: ceil(150/140) = 2 pods (on concurrency's target 70 it
    // would be 3), 2/1 >= 200%: panic. EBC = floor(1 x 200 - 211 - 150) = -161.
    let r = row(&inferred, "12");
    assert!(r.starts_with("12,1,69.230769,150,2,2,-161,true,"), "{r}");
    // The same as saying it.
    let out = simulate(&trace, &["--annotation", "autoscaling.knative.dev/metric=rps"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), inferred);
}

#[test]
fn bad_traces_exit_2_with_the_line_number() {
    let dir = TempDir::new();
    let cases = [
        ("missing header", "0,5\n1,6\n", "line 1: missing header"),
        ("empty file", "", "line 1: missing header"),
        (
            "non-numeric load",
            "t,concurrency\n0,5\n1,five\n",
            "line 3: concurrency must be a non-negative number",
        ),
        (
            "non-numeric ready",
            "t,ready,stable,panic\n0,1,1,1\n\n2,two,1,1\n",
            "line 4: ready must be a whole number",
        ),
        (
            "time going backwards",
            "t,concurrency\n0,5\n10,6\n9,7\n",
            "line 4: time goes backwards: t=9 after t=10",
        ),
        (
            "backwards decider ticks",
            "t,ready,stable,panic\n4,1,1,1\n2,1,1,1\n",
            "line 3: time goes backwards",
        ),
        ("wrong field count", "t,concurrency\n0,5,6\n", "line 2: expected 2 fields"),
    ];
    for (name, text, expected) in cases {
        let out = simulate(&dir.file("bad.csv", text), &[]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{name}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{name}: nothing on stdout");
    }
    let out = simulate(&dir.path("missing.csv"), &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_trace_saved_by_a_spreadsheet_gives_the_same_decisions() {
    let dir = TempDir::new();
    let plain = simulate(&dir.file("spike.csv", SPIKE), &[]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    // As a spreadsheet saves it: a byte-order mark, quoted cells, CRLF, an unused column, an empty row.
    let mut saved = String::from("\u{feff}\"t\",\"concurrency\",\r\n");
    for row in SPIKE.lines().skip(1) {
        let (t, value) = row.split_once(',').unwrap();
        saved.push_str(&format!("{t},\"{value}\",\r\n"));
    }
    saved.push_str(",,\r\n");
    let out = simulate(&dir.file("saved.csv", &saved), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), stdout(&plain));
    // Its errors name the line as the spreadsheet numbers it.
    let out = simulate(&dir.file("bad.csv", "\u{feff}\"t\",\"rps\"\r\n0,1\r\n\"5\",\"lots\"\r\n"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 3: rps must be a non-negative number, got \"lots\""),
        "{}",
        stderr(&out)
    );
}
