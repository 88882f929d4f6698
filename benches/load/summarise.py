#!/usr/bin/env python3
"""Summarises benches/load/data-plane.sh results (JSON lines) as markdown tables.

Every figure is a median over runs; added latency (against direct) and CPU ratios (against nginx) are taken
within each run first, then their median, so that a noisy run moves both sides of a comparison together.
Usage: summarise.py RESULTS.jsonl MACHINE [PLACEMENT]
"""

import json
import statistics
import sys
from collections import defaultdict

results_path, machine = sys.argv[1], sys.argv[2]
placement = sys.argv[3] if len(sys.argv) > 3 else ""
records = [json.loads(line) for line in open(results_path) if line.strip()]

PATHS = {"direct": "direct", "qp": "queue-proxy", "activator": "activator+queue-proxy", "nginx": "nginx"}
RESPONSES = {"small": "13 B", "4k": "4 KiB", "sse": "SSE 16 events"}
COMPONENTS = {"qp": "queue-proxy", "activator": "activator", "nginx": "nginx"}

# (path, response, mode) -> {run: record}
load = defaultdict(dict)
for r in records:
    if r["kind"] == "load":
        load[(r["path"], r["response"], r["load"]["mode"])][r["run"]] = r


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    return "-" if v is None else f"{v:.{digits}f}"


def cpu_us(r, component=None):
    """CPU microseconds per request of one component (or all of the path's proxies) in one run."""
    if not r or r["load"]["total"] == 0:
        return None
    ticks = r["cpu_ticks"]
    if not ticks or (component is not None and component not in ticks):
        return None
    spent = ticks[component] if component else sum(ticks.values())
    return spent / r["tck"] * 1e6 / r["load"]["total"]


def per_run(key, f):
    return med([f(r, run) for run, r in load.get(key, {}).items()])


def field(key, name):
    return per_run(key, lambda r, _run: r["load"][name])


def added(key, direct, name):
    """Median over runs of (this path - direct) for a latency field, within each run."""
    return per_run(key, lambda r, run: r["load"][name] - direct[run]["load"][name] if run in direct else None)


def vs_nginx(key, nginx):
    def ratio(r, run):
        base = cpu_us(nginx.get(run))
        mine = cpu_us(r)
        return None if base in (None, 0) or mine is None else mine / base
    return per_run(key, ratio)


def rows(mode):
    for response in RESPONSES:
        direct = load.get(("direct", response, mode), {})
        nginx = load.get(("nginx", response, mode), {})
        for path in PATHS:
            key = (path, response, mode)
            if key in load:
                yield response, path, key, direct, nginx


def cpu_cells(key):
    return " | ".join(fmt(per_run(key, lambda r, _run, c=c: cpu_us(r, c)), 1) for c in COMPONENTS)


print(f"Machine: {machine}. Medians of {max((r['run'] for r in records if r['kind'] == 'load'), default=0)} "
      f"runs. {placement}\n")
print("CPU columns: CPU time of that proxy per request in µs (= ms per 1000 requests); `vs nginx` is the path's "
      "proxies together over nginx's, in the same run. Latency is to the end of the response; first byte is "
      "to its first body byte (an SSE stream's first event); added latency is the first byte's, over direct in "
      "the same run (a stream's end is paced by the upstream).\n")

print("Fixed rate (open loop, latency from each request's due time):\n")
print("| response | path | p50 µs | p99 µs | p99.9 µs | first byte p50 µs | first byte p99 µs | added p50 µs | "
      "added p99 µs | queue-proxy CPU | activator CPU | nginx CPU | vs nginx |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for response, path, key, direct, nginx in rows("rate"):
    a50 = None if path == "direct" else added(key, direct, "ttfb_p50_us")
    a99 = None if path == "direct" else added(key, direct, "ttfb_p99_us")
    print(f"| {RESPONSES[response]} | {PATHS[path]} | {fmt(field(key, 'p50_us'))} | {fmt(field(key, 'p99_us'))} | "
          f"{fmt(field(key, 'p999_us'))} | {fmt(field(key, 'ttfb_p50_us'))} | {fmt(field(key, 'ttfb_p99_us'))} | "
          f"{fmt(a50)} | {fmt(a99)} | {cpu_cells(key)} | {fmt(vs_nginx(key, nginx), 2)} |")

print("\nSaturated (closed loop):\n")
print("| response | path | requests/s | vs direct | p50 µs | p99 µs | p99.9 µs | queue-proxy CPU | activator CPU | "
      "nginx CPU | vs nginx |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for response, path, key, direct, nginx in rows("saturate"):
    throughput = per_run(key, lambda r, run: r["load"]["rps"] / direct[run]["load"]["rps"]
                         if run in direct and direct[run]["load"]["rps"] else None)
    print(f"| {RESPONSES[response]} | {PATHS[path]} | {fmt(field(key, 'rps'))} | {fmt(throughput, 2)} | "
          f"{fmt(field(key, 'p50_us'))} | {fmt(field(key, 'p99_us'))} | {fmt(field(key, 'p999_us'))} | "
          f"{cpu_cells(key)} | {fmt(vs_nginx(key, nginx), 2)} |")

print("\nResident memory, MiB (nginx: master + worker; one process per response kind for ebb's proxies, the "
      "largest shown):\n")
print("| process | idle | peak under load (VmHWM) | with 1000 open connections |")
print("|---|---:|---:|---:|")
mem = defaultdict(dict)
for r in records:
    if r["kind"] in ("idle", "peak"):
        c = mem[r["component"]]
        c[r["kind"]] = max(c.get(r["kind"], 0), r["rss_kib"] if r["kind"] == "idle" else r["hwm_kib"])
    elif r["kind"] == "held" and r["component"] == r["path"]:
        mem[r["component"]]["held"] = r["rss_kib"]
for component in COMPONENTS:
    if component in mem:
        c = mem[component]
        mib = lambda k: None if c.get(k) is None else c[k] / 1024  # noqa: E731
        print(f"| {COMPONENTS[component]} | {fmt(mib('idle'), 1)} | {fmt(mib('peak'), 1)} | "
              f"{fmt(mib('held'), 1)} |")
errors = sum(r["load"]["errors"] for r in records if r["kind"] == "load")
print(f"\nLoad-generator errors over all runs: {errors}.")
