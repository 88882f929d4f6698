#!/usr/bin/env python3
"""Summarises benches/load/queue-proxy.sh results (JSON lines) as markdown tables of medians."""

import json
import statistics
import sys
from collections import defaultdict

results_path, machine, runs = sys.argv[1], sys.argv[2], sys.argv[3]
placement = sys.argv[4] if len(sys.argv) > 4 else ""
records = [json.loads(line) for line in open(results_path) if line.strip()]

NAMES = {
    "direct": "direct",
    "qp1": "queue-proxy (1 worker)",
    "qp2": "queue-proxy (2 workers, default)",
    "nginx": "nginx (1 worker)",
}
SIZES = {13: "13 B", 4096: "4 KiB"}

load = defaultdict(list)
for r in records:
    if r["kind"] == "load":
        load[(r["target"], r["size"], r["load"]["mode"])].append(r)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def metric(key, field):
    return med([r["load"][field] for r in load.get(key, [])])


def cpu_us(key):
    per = []
    for r in load.get(key, []):
        if r["cpu_ticks"] is None or r["load"]["total"] == 0:
            continue
        per.append(r["cpu_ticks"] / r["tck"] * 1e6 / r["load"]["total"])
    return med(per)


def fmt(v, digits=0):
    return "-" if v is None else f"{v:.{digits}f}"


print(f"Machine: {machine}. Medians of {runs} runs. {placement}\n")
print("Fixed rate (open loop, latency from each request's due time), 32 connections:\n")
print("| response | path | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | CPU µs/req | CPU vs nginx |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for size in SIZES:
    d50, d99 = metric(("direct", size, "rate"), "p50_us"), metric(("direct", size, "rate"), "p99_us")
    nginx_cpu = cpu_us(("nginx", size, "rate"))
    for target in NAMES:
        key = (target, size, "rate")
        p50, p99, p999 = metric(key, "p50_us"), metric(key, "p99_us"), metric(key, "p999_us")
        cpu = cpu_us(key)
        added50 = None if target == "direct" or p50 is None else p50 - d50
        added99 = None if target == "direct" or p99 is None else p99 - d99
        ratio = None if cpu is None or not nginx_cpu else cpu / nginx_cpu
        print(f"| {SIZES[size]} | {NAMES[target]} | {fmt(p50)} | {fmt(p99)} | {fmt(p999)} | {fmt(added50)} | "
              f"{fmt(added99)} | {fmt(cpu, 1)} | {fmt(ratio, 2)} |")

print("\nSaturated (closed loop, 32 connections):\n")
print("| response | path | requests/s | p50 µs | p99 µs | CPU µs/req | CPU vs nginx |")
print("|---|---|---:|---:|---:|---:|---:|")
for size in SIZES:
    nginx_cpu = cpu_us(("nginx", size, "saturate"))
    for target in NAMES:
        key = (target, size, "saturate")
        cpu = cpu_us(key)
        ratio = None if cpu is None or not nginx_cpu else cpu / nginx_cpu
        print(f"| {SIZES[size]} | {NAMES[target]} | {fmt(metric(key, 'rps'))} | {fmt(metric(key, 'p50_us'))} | "
              f"{fmt(metric(key, 'p99_us'))} | {fmt(cpu, 1)} | {fmt(ratio, 2)} |")

print("\nResident memory (nginx: master + worker):\n")
print("| process | idle RSS MiB | RSS with 1000 open connections MiB | peak (VmHWM) MiB |")
print("|---|---:|---:|---:|")
idle = {r["target"]: r["rss_kib"] for r in records if r["kind"] == "idle"}
held = {r["target"]: r for r in records if r["kind"] == "held"}
for target in ["qp1", "qp2", "nginx"]:
    h = held.get(target, {})
    mib = lambda k: None if k is None else k / 1024  # noqa: E731
    print(f"| {NAMES[target]} | {fmt(mib(idle.get(target)), 1)} | {fmt(mib(h.get('rss_kib')), 1)} | "
          f"{fmt(mib(h.get('hwm_kib')), 1)} |")
errors = sum(r["load"]["errors"] for r in records if r["kind"] == "load")
print(f"\nLoad-generator errors over all runs: {errors}.")
