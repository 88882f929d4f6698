#!/usr/bin/env bash
# Benchmark: the activator's warm-path overhead (goal: p50 <= 100 µs added at 1000 requests/s).
# Direct to an upstream, through a queue-proxy, and through the activator (proxy mode: counted, throttled)
# and the queue-proxy, each at a fixed 1000 requests/s with 32 connections; medians of RUNS runs, and the
# activator's CPU time per request. Load generator and upstream on CPU 0, the proxies on CPU 1 (LOAD_CPU and
# SUT_CPU change it; SUT_CPU=0 puts everything on one CPU, so no idle CPU is woken per request).
# Usage: benches/activator/warm.sh [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
seconds=${2:-10}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet -p ebb-benches --bin activator-bench --bin loadgen --bin bench-upstream
cargo build --release --quiet -p ebb-queue-proxy --bin queue-proxy
bin="$target/release"
load_cpu=${LOAD_CPU:-0}; sut_cpu=${SUT_CPU:-1}
[ "$(nproc)" -ge 2 ] || sut_cpu=0
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

start() { # NAME CPU COMMAND...: starts it, waits for its first output line, prints that line
  local name=$1 cpu=$2; shift 2
  taskset -c "$cpu" "$@" > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
  echo $! > "$work/$name.pid"
  for _ in $(seq 200); do [ -s "$work/$name.out" ] && { head -n1 "$work/$name.out"; return; }; sleep 0.05; done
  echo "$name did not start:" >&2; cat "$work/$name.err" >&2; exit 1
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

upstream=$(field "$(start upstream $load_cpu "$bin/bench-upstream")" addr)
qp=$(field "$(start qp $sut_cpu "$bin/queue-proxy" --upstream "$upstream" --bind-address 127.0.0.1 --data-port 0 \
  --admin-port 0 --stats-port 0 --metrics-port 0 --worker-threads 1 --log-format json)" data)
activator=$(field "$(start activator $sut_cpu "$bin/activator-bench" serve --pod "$qp")" addr)
activator_pid=$(cat "$work/activator.pid")
hz=$(getconf CLK_TCK)

results="$work/results.jsonl"
for run in $(seq "$runs"); do
  for path in direct queue-proxy activator+queue-proxy; do
    case $path in direct) to=$upstream ;; queue-proxy) to=$qp ;; *) to=$activator ;; esac
    before=$(cpu_ticks "$activator_pid")
    line=$(taskset -c $load_cpu "$bin/loadgen" --target "$to" --rate 1000 --connections 32 --duration "$seconds" --warmup 1)
    after=$(cpu_ticks "$activator_pid")
    echo "{\"run\":$run,\"path\":\"$path\",\"activator_ticks\":$((after - before)),\"load\":$line}" >> "$results"
  done
done

python3 - "$results" "$hz" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
hz = int(sys.argv[2])
def med(path, key):
    return statistics.median(r["load"][key] for r in rows if r["path"] == path)
direct = {k: med("direct", k) for k in ("p50_us", "p99_us")}
print("| 1000 requests/s, 13 B | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | errors | activator CPU µs/req |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for path in ("direct", "queue-proxy", "activator+queue-proxy"):
    sel = [r for r in rows if r["path"] == path]
    p50, p99, p999 = med(path, "p50_us"), med(path, "p99_us"), med(path, "p999_us")
    errors = sum(r["load"]["errors"] for r in sel)
    added = "-" if path == "direct" else f"{p50 - direct['p50_us']:.0f}"
    added99 = "-" if path == "direct" else f"{p99 - direct['p99_us']:.0f}"
    cpu = "-"
    if path == "activator+queue-proxy":
        cpu = f"{statistics.median(r['activator_ticks'] / hz * 1e6 / r['load']['total'] for r in sel):.1f}"
    print(f"| {path} | {p50:.0f} | {p99:.0f} | {p999:.0f} | {added} | {added99} | {errors} | {cpu} |")
print(f"\nmedians of {len(rows) // 3} runs; the activator's added p50 is the activator+queue-proxy row minus the queue-proxy row")
PY
