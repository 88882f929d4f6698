#!/usr/bin/env bash
# Saturating throughput of the queue-proxy and the activator on a many-core machine (the GPU machine's 16
# cores): closed loop, 13 B responses, LOADGENS load generators of 32 keep-alive connections each, their rates
# summed. Paths: direct to bench-upstream (one thread: the ceiling every proxied path shares), a queue-proxy
# with 1, 2 and 4 worker threads, and the activator (activator-bench serve, 2 worker threads, proxy mode)
# in front of the 4-worker queue-proxy. CPU per request is the proxy's utime + stime over the requests.
# Placement: upstream on CPU 0, load generators on CPUs 1..LOADGENS, proxies on the CPUs after them.
#
#   benches/gpu/saturate.sh      # BIN=.device-bin (ebb, loadgen, bench-upstream, activator-bench) SECONDS=5
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
BIN=${BIN:-.device-bin}
DURATION=${DURATION:-5}
LOADGENS=${LOADGENS:-6}
OUT=${OUT:-$(mktemp -d /tmp/ebb-saturate.XXXXXX)}
mkdir -p "$OUT"
for b in ebb loadgen bench-upstream activator-bench; do
    [ -x "$BIN/$b" ] || { echo "saturate.sh: $BIN/$b missing (cargo build --release -p ebb-benches; ebb)" >&2; exit 2; }
done
ncpu=$(nproc)
[ "$ncpu" -ge $((LOADGENS + 3)) ] || { echo "saturate.sh: needs at least $((LOADGENS + 3)) CPUs" >&2; exit 2; }
sut_cpus="$((LOADGENS + 1))-$((ncpu - 1))"
ulimit -n 65536 2>/dev/null || true
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

start() { # NAME CPUS COMMAND...: starts it, waits for its first output line, prints that line
  local name=$1 cpus=$2; shift 2
  taskset -c "$cpus" "$@" > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
  echo $! > "$work/$name.pid"
  for _ in $(seq 200); do [ -s "$work/$name.out" ] && { head -n1 "$work/$name.out"; return; }; sleep 0.05; done
  echo "$name did not start:" >&2; cat "$work/$name.err" >&2; exit 1
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

upstream=$(field "$(start upstream 0 "$BIN/bench-upstream")" addr)
declare -A target sut
target[direct]=$upstream
for w in 1 2 4; do
  target[qp-$w]=$(field "$(start qp$w "$sut_cpus" "$BIN/ebb" queue-proxy --upstream "$upstream" --bind-address 127.0.0.1 \
    --data-port 0 --admin-port 0 --stats-port 0 --metrics-port 0 --pod-name bench --worker-threads "$w" \
    --log-format json)" data)
  sut[qp-$w]=$(cat "$work/qp$w.pid")
done
sleep 0.5
target[activator]=$(field "$(start activator "$sut_cpus" "$BIN/activator-bench" serve --pod "${target[qp-4]}")" addr)
sut[activator]=$(cat "$work/activator.pid")

results="$OUT/saturate.jsonl"
: > "$results"
for path in direct qp-1 qp-2 qp-4 activator; do
  pid=${sut[$path]:-}
  before=$([ -n "$pid" ] && ticks "$pid" || echo 0)
  qpb=$(ticks "${sut[qp-4]}")
  lg=()
  for i in $(seq 1 "$LOADGENS"); do
    taskset -c "$i" "$BIN/loadgen" --target "${target[$path]}" --connections 32 --duration "$DURATION" \
      --warmup 1 > "$work/lg-$path-$i.json" &
    lg+=($!)
  done
  wait "${lg[@]}"
  after=$([ -n "$pid" ] && ticks "$pid" || echo 0)
  qpa=$(ticks "${sut[qp-4]}")
  python3 - "$path" "$((after - before))" "$((qpa - qpb))" "$(getconf CLK_TCK)" "$work"/lg-"$path"-*.json >> "$results" <<'PY'
import json, sys
path, t, qpt, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runs = [json.load(open(f)) for f in sys.argv[5:]]
total = sum(r["total"] for r in runs)
print(json.dumps({"path": path, "rps": sum(r["rps"] for r in runs), "errors": sum(r["errors"] for r in runs),
                  "p50_us": max(r["p50_us"] for r in runs), "p99_us": max(r["p99_us"] for r in runs),
                  "cpu_us_per_req": t / hz * 1e6 / total if total and t else None,
                  "qp4_cpu_us_per_req": qpt / hz * 1e6 / total if total and path == "activator" else None,
                  "total": total}))
PY
done
python3 - "$results" "$ncpu" "$LOADGENS" "$sut_cpus" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nSaturated, {sys.argv[3]} load generators x 32 connections, 13 B responses, {sys.argv[2]} CPUs "
      f"(proxies on CPUs {sys.argv[4]}):\n")
print("| path | requests/s | p50 µs (worst generator) | p99 µs (worst generator) | proxy CPU µs/req | errors |")
print("|---|---:|---:|---:|---:|---:|")
names = {"direct": "direct (bench-upstream, 1 thread)", "qp-1": "queue-proxy, 1 worker", "qp-2": "queue-proxy, 2 workers",
         "qp-4": "queue-proxy, 4 workers", "activator": "activator (2 workers) + queue-proxy (4 workers)"}
for r in rows:
    cpu = "-" if r["cpu_us_per_req"] is None else f"{r['cpu_us_per_req']:.1f}"
    if r["qp4_cpu_us_per_req"] is not None:
        cpu += f" (+ qp {r['qp4_cpu_us_per_req']:.1f})"
    print(f"| {names[r['path']]} | {r['rps']:.0f} | {r['p50_us']} | {r['p99_us']} | {cpu} | {r['errors']} |")
PY
