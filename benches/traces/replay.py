#!/usr/bin/env python3
"""Replays the traces of generate.py through `ebb up` under several configurations, and the same traces through
`ebb simulate`, and prints a markdown table: pod-seconds (measured and simulated), p50/p99 latency, requests that
waited for a cold start, failed requests.

A trace row `t,concurrency` means that many closed-loop clients from `t` on: client i is active while i is below
the trace's value, and an active client sends its next short streaming completion as soon as the last one ends
(a client that becomes inactive finishes its request first). Pods are `ebb demo-model` processes that take 1 s to
start. Pod-seconds integrate /status's `pods` (pods that exist: starting or ready; draining ones are counted
apart) polled every 150 ms over the trace's whole length, idle tail included.

Usage: replay.py EBB_BINARY TRACE_DIR OUT_DIR [--traces bursty,diurnal,idle] [--configs defaults,tuned,fixed]
Standard library only. Writes OUT_DIR/results.json and OUT_DIR/results.md; per run (OUT_DIR/TRACE-CONFIG/) the ebb up
log, the simulator's CSV and status.csv (the polled /status next to the trace's clients).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "local"))
from ebb_up import EbbUp, http_request, percentile  # noqa: E402

SERVICE = "demo"
CC = 4                 # ebb.dev/container-concurrency
UTILIZATION = 0.7      # Knative's default target utilisation, so the per-pod target is CC * 0.7 = 2.8
GRACE = "5s"           # scale-to-zero-grace-period (Knative's default is 30s)
WINDOW = "6s"          # autoscaling.knative.dev/window (default 1m); the shortest allowed
STARTUP = "1s"         # the demo model's start-up, and the simulator's --pod-startup
POLL = 0.15            # seconds between /status polls
BODY = b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true}'

# Per configuration: the extra annotations (beyond window and container concurrency). `fixed` is filled in per
# trace with min-scale = max-scale = the pods the trace's peak needs at the target.
CONFIGS = {
    "defaults": {},
    # Keep pods 15 s after the load falls: bursts that return within 15 s find warm pods (fewer cold starts and
    # panic scale-ups), at the cost of pods idling through the gaps.
    "tuned": {"autoscaling.knative.dev/scale-down-delay": "15s"},
    "fixed": None,
}


def read_trace(path):
    """[(t, clients)] from a `t,concurrency` CSV (comments skipped); the last row marks the end."""
    rows = []
    with open(path) as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    if not lines or lines[0] != "t,concurrency":
        print(f"{path}: expected the header t,concurrency", file=sys.stderr)
        sys.exit(2)
    for n, ln in enumerate(lines[1:], 2):
        try:
            t, c = ln.split(",")
            rows.append((int(t), int(c)))
        except ValueError:
            print(f"{path}: row {n} (not counting comments): expected whole numbers t,concurrency: {ln}",
                  file=sys.stderr)
            sys.exit(2)
    if len(rows) < 2:
        print(f"{path}: a trace needs at least two rows (the last marks its end)", file=sys.stderr)
        sys.exit(2)
    return rows


def clients_at(rows, s):
    c = 0
    for t, v in rows:
        if t <= s:
            c = v
    return c


def peak_pods(rows):
    return math.ceil(max(c for _, c in rows) / (CC * UTILIZATION))


def annotations(config, rows):
    a = {"autoscaling.knative.dev/window": WINDOW, "ebb.dev/container-concurrency": str(CC)}
    if config == "fixed":
        n = str(peak_pods(rows))
        a.update({"autoscaling.knative.dev/min-scale": n, "autoscaling.knative.dev/max-scale": n})
    else:
        a.update(CONFIGS[config])
    return a


def ebb_yaml(ebb, annots):
    lines = [
        "config:", f"  scale-to-zero-grace-period: {GRACE}", "services:", f"  - name: {SERVICE}",
        f"    command: [{ebb}, demo-model, --startup-delay, {STARTUP}, --time-to-first-token, 20ms,"
        " --tokens-per-second, '100']",
        "    annotations:",
    ]
    lines += [f"      {k}: '{v}'" for k, v in annots.items()]
    return "\n".join(lines) + "\n"


def simulate(ebb, trace, config, annots, out_dir):
    """The simulator's pod-seconds for the same trace and configuration. ebb up starts services at zero, so the
    simulation does too (initial-scale 0), except with fixed provisioning, where the replay starts once all
    pods are ready."""
    cm = os.path.join(out_dir, "config-autoscaler.yaml")
    with open(cm, "w") as f:
        f.write("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n"
                f"  scale-to-zero-grace-period: {GRACE}\n  allow-zero-initial-scale: \"true\"\n")
    a = dict(annots)
    if config != "fixed":
        a["autoscaling.knative.dev/initial-scale"] = "0"
    cmd = [ebb, "simulate", "--trace", trace, "--config-map", cm, "--pod-startup", STARTUP,
           "--out", os.path.join(out_dir, "simulate.csv")]
    for k, v in a.items():
        cmd += ["--annotation", f"{k}={v}"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"pod-seconds used: ([0-9.]+)", p.stderr)
    if p.returncode != 0 or not m:
        raise SystemExit(f"ebb simulate failed ({p.returncode}): {p.stderr}")
    return float(m.group(1))


def request(host, port):
    """One streaming completion: (time to first token, total, waited for a cold start, error or None)."""
    t0 = time.time()
    try:
        s, req = http_request(host, port, "POST", "/v1/chat/completions", BODY,
                              [("Content-Type", "application/json")], service=SERVICE)
        s.settimeout(60)
        s.sendall(req)
        data, ttft = b"", None
        while chunk := s.recv(65536):
            data += chunk
            # The headers come before the model's first token; the first SSE event is the first token.
            if ttft is None and b"data:" in data.split(b"\r\n\r\n", 1)[-1] and b"\r\n\r\n" in data:
                ttft = time.time() - t0
        s.close()
    except OSError as e:
        return None, None, False, f"{type(e).__name__}: {e}"
    total = time.time() - t0
    head = data.split(b"\r\n\r\n", 1)[0]
    cold = b"ebb-cold-start" in head
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        return ttft, total, cold, head.split(b"\r\n", 1)[0].decode(errors="replace")
    if b"[DONE]" not in data:
        return ttft, total, cold, "stream ended without [DONE]"
    return ttft, total, cold, None


def replay(ebb, trace, config, out_dir):
    rows = read_trace(trace)
    end = rows[-1][0]
    annots = annotations(config, rows)
    up = EbbUp(ebb, ebb_yaml(ebb, annots), workdir=out_dir)
    host, port = up.gateway.rsplit(":", 1)
    results, samples, seen = [], [], []
    lock = threading.Lock()
    try:
        if config == "fixed":
            n = int(annots["autoscaling.knative.dev/min-scale"])
            up.wait_for(SERVICE, lambda s: s["ready"] == n, f"{n} ready pods")
        else:
            up.wait_zero(SERVICE)
        t0 = time.time()

        def client(i):
            while (now := time.time()) < t0 + end:
                if i < clients_at(rows, int(now - t0)):
                    r = request(host, port)
                    with lock:
                        results.append(r)
                else:
                    time.sleep(0.02)

        def poll():
            while (now := time.time()) < t0 + end:
                s = up.status(SERVICE)
                samples.append((now - t0, s["pods"], s.get("terminating", 0)))
                # What ebb sees, to compare with the trace's clients and the simulator's input.
                seen.append((round(now - t0, 3), s["pods"], s["ready"], s["desired"], s["in_flight"], s["queued"],
                             s.get("observed_stable")))
                time.sleep(POLL)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(max(c for _, c in rows))]
        threads.append(threading.Thread(target=poll))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        up.stop()
    # Each sample holds until the next one (the first from t = 0, the last until the trace's end).
    pod_s = drain_s = 0.0
    for j, (t, pods, term) in enumerate(samples):
        t_next = samples[j + 1][0] if j + 1 < len(samples) else end
        t_from = 0.0 if j == 0 else t
        pod_s += pods * (t_next - t_from)
        drain_s += term * (t_next - t_from)
    with open(os.path.join(out_dir, "status.csv"), "w") as f:
        f.write("t,pods,ready,desired,in_flight,queued,observed_stable,clients\n")
        for row in seen:
            f.write(",".join("" if v is None else str(v) for v in row) + f",{clients_at(rows, int(row[0]))}\n")
    ok = [r for r in results if r[3] is None]
    errors = [r[3] for r in results if r[3] is not None]
    sim = simulate(ebb, trace, config, annots, out_dir)
    return {
        "trace": os.path.basename(trace)[:-4], "config": config,
        "annotations": annots, "seconds": end, "requests": len(results), "failed": len(errors),
        "errors": sorted(set(errors))[:5], "cold": sum(1 for r in results if r[2]),
        "cold_ttft_p50": percentile([r[0] for r in ok if r[2]], 50),
        "ttft_max": max((r[0] for r in ok), default=None),
        "ttft_p50": percentile([r[0] for r in ok], 50), "ttft_p99": percentile([r[0] for r in ok], 99),
        "total_p50": percentile([r[1] for r in ok], 50), "total_p99": percentile([r[1] for r in ok], 99),
        "pod_seconds": pod_s, "draining_pod_seconds": drain_s,
        "peak_pods": max((p for _, p, _ in samples), default=0), "sim_pod_seconds": sim,
    }


def table(runs):
    ms = lambda x: "-" if x is None else f"{x * 1000:.0f}"
    out = ["| trace | config | requests | failed | cold-start waits (median first token ms) | "
           "first token p50 / p99 / max ms | response p50 / p99 ms | peak pods | pod-s measured | "
           "pod-s simulated | sim error |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        err = (r["sim_pod_seconds"] - r["pod_seconds"]) / r["pod_seconds"] * 100 if r["pod_seconds"] else 0
        cold = f"{r['cold']} ({ms(r['cold_ttft_p50'])})" if r["cold"] else "0"
        out.append(f"| {r['trace']} | {r['config']} | {r['requests']} | {r['failed']} | {cold} | "
                   f"{ms(r['ttft_p50'])} / {ms(r['ttft_p99'])} / {ms(r['ttft_max'])} | "
                   f"{ms(r['total_p50'])} / {ms(r['total_p99'])} | {r['peak_pods']} | {r['pod_seconds']:.1f} | "
                   f"{r['sim_pod_seconds']:.0f} | {err:+.1f}% |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ebb")
    ap.add_argument("trace_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--traces", default="bursty,diurnal,idle")
    ap.add_argument("--configs", default="defaults,tuned,fixed")
    args = ap.parse_args()
    configs = args.configs.split(",")
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration {bad[0]}; known: {', '.join(CONFIGS)}")
    runs = []
    for name in args.traces.split(","):
        trace = os.path.join(args.trace_dir, f"{name}.csv")
        if not os.path.exists(trace):
            ap.error(f"no trace {trace}; run generate.py first")
        for config in configs:
            out = os.path.join(args.out_dir, f"{name}-{config}")
            os.makedirs(out, exist_ok=True)
            print(f"replaying {name} under {config} ...", file=sys.stderr, flush=True)
            r = replay(args.ebb, trace, config, out)
            print(f"  {json.dumps(r)}", file=sys.stderr, flush=True)
            runs.append(r)
            with open(os.path.join(args.out_dir, "results.json"), "w") as f:
                json.dump(runs, f, indent=1)
    md = table(runs)
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    if any(r["failed"] for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
