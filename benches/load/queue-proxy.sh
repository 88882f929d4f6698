#!/usr/bin/env bash
# Data-plane benchmark of the queue-proxy on loopback: direct to the upstream vs through the queue-proxy vs
# through nginx (plain reverse proxy, upstream keep-alive, one worker), at a fixed 1000 rps and saturated,
# with small (13 B) and 4 KiB responses. Reports latency, throughput, CPU time per proxied request (utime +
# stime from /proc/PID/stat) and resident memory (/proc/PID/status: idle, and with 1000 open connections).
# Medians of RUNS runs. Prints a markdown table; raw results stay in $OUT_DIR.
#
#   benches/load/queue-proxy.sh            # RUNS=5 RATE=1000 DURATION=10 SAT_DURATION=5 CONNECTIONS=32
#   MODES=rate SUT_CPU=0 benches/load/queue-proxy.sh   # fixed rate only, proxy on the generator's CPU
#
# Placement: the load generator and the upstream share CPU 0; the proxy under test (queue-proxy or nginx)
# runs alone on CPU 1 (taskset; LOAD_CPU and SUT_CPU change it). Requires: cargo, python3, nginx (installed with apt-get if missing).
# Not part of `cargo test`.
set -euo pipefail

RUNS=${RUNS:-5}
RATE=${RATE:-1000}
DURATION=${DURATION:-10}
SAT_DURATION=${SAT_DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
HOLD=${HOLD:-1000}
MODES=${MODES:-rate saturate}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ebb-qp-bench.XXXXXX)}
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
: > "$RESULTS"

command -v python3 >/dev/null || { echo "python3 is needed to summarise results" >&2; exit 2; }
if ! command -v nginx >/dev/null; then
    echo "installing nginx (Debian package) ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
fi
if [ "$(nproc)" -lt 2 ]; then LOAD_CPU=0; SUT_CPU=0; fi
ulimit -n 65536 2>/dev/null || true

cargo build --release -q -p ebb-benches --bin loadgen --bin bench-upstream -p ebb-queue-proxy --bin queue-proxy
BIN="$ROOT/target/release"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Reads one JSON field from the first line of a file, waiting for the line to appear.
json_field() { # FILE FIELD
    for _ in $(seq 1 200); do
        if [ -s "$1" ]; then head -n1 "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; return; fi
        sleep 0.05
    done
    echo "no output in $1" >&2; exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { local t=0; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
rss_kib() { local t=0; for pid in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status"))); done; echo "$t"; }
hwm_kib() { local t=0; for pid in "$@"; do t=$((t + $(awk '/^VmHWM/ {print $2}' "/proc/$pid/status"))); done; echo "$t"; }
TCK=$(getconf CLK_TCK)

# Upstreams, one per response size.
declare -A UPSTREAM
for size in 13 4096; do
    taskset -c "$LOAD_CPU" "$BIN/bench-upstream" --size "$size" > "$OUT_DIR/upstream-$size.json" &
    PIDS+=($!)
    UPSTREAM[$size]=$(json_field "$OUT_DIR/upstream-$size.json" addr)
done

# Queue-proxies: one worker thread (like nginx's one worker) and the default two, for each size.
declare -A TARGET SUT_PIDS
for size in 13 4096; do
    for workers in 1 2; do
        out="$OUT_DIR/qp-$workers-$size.json"
        taskset -c "$SUT_CPU" "$BIN/queue-proxy" --upstream "${UPSTREAM[$size]}" --bind-address 127.0.0.1 \
            --data-port 0 --admin-port 0 --stats-port 0 --metrics-port 0 --pod-name bench \
            --worker-threads "$workers" > "$out" 2> "$OUT_DIR/qp-$workers-$size.log" &
        PIDS+=($!)
        SUT_PIDS[qp$workers-$size]=$!
        TARGET[qp$workers-$size]=$(json_field "$out" data)
        TARGET[direct-$size]=${UPSTREAM[$size]}
    done
done

# nginx: the test's own instance with a generated config (never the system service).
NGINX_DIR="$OUT_DIR/nginx"
mkdir -p "$NGINX_DIR"
NGINX_PORT_SMALL=$(free_port)
NGINX_PORT_4K=$(free_port)
cat > "$NGINX_DIR/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $NGINX_DIR/nginx.pid;
error_log $NGINX_DIR/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $NGINX_DIR/body;
    proxy_temp_path $NGINX_DIR/proxy;
    fastcgi_temp_path $NGINX_DIR/fastcgi;
    uwsgi_temp_path $NGINX_DIR/uwsgi;
    scgi_temp_path $NGINX_DIR/scgi;
    keepalive_requests 1000000;
    upstream small { server ${UPSTREAM[13]}; keepalive 64; keepalive_requests 1000000; }
    upstream large { server ${UPSTREAM[4096]}; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NGINX_PORT_SMALL;
        location / { proxy_pass http://small; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    server {
        listen 127.0.0.1:$NGINX_PORT_4K;
        location / { proxy_pass http://large; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
taskset -c "$SUT_CPU" nginx -c "$NGINX_DIR/nginx.conf" -p "$NGINX_DIR" -e "$NGINX_DIR/error.log" &
NGINX_MASTER=$!
PIDS+=("$NGINX_MASTER")
for _ in $(seq 1 100); do NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" || true); [ -n "$NGINX_WORKER" ] && break; sleep 0.05; done
[ -n "$NGINX_WORKER" ] || { echo "nginx did not start; see $NGINX_DIR/error.log" >&2; exit 1; }
TARGET[nginx-13]=127.0.0.1:$NGINX_PORT_SMALL
TARGET[nginx-4096]=127.0.0.1:$NGINX_PORT_4K
SUT_PIDS[nginx-13]="$NGINX_MASTER $NGINX_WORKER"
SUT_PIDS[nginx-4096]="$NGINX_MASTER $NGINX_WORKER"

# Wait until every queue-proxy sees its upstream ready.
for key in qp1-13 qp2-13 qp1-4096 qp2-4096; do
    for _ in $(seq 1 200); do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Ebb-Probe: queue' "http://${TARGET[$key]}/" || true)
        [ "$code" = 200 ] && break
        sleep 0.05
    done
done

# Idle memory, before any load.
for key in qp1-13 qp2-13 nginx-13; do
    # shellcheck disable=SC2086
    echo "{\"kind\":\"idle\",\"target\":\"${key%-13}\",\"rss_kib\":$(rss_kib ${SUT_PIDS[$key]})}" >> "$RESULTS"
done

measure() { # RUN TARGET SIZE MODE
    local run=$1 name=$2 size=$3 mode=$4 key="$2-$3" args=() before after line
    if [ "$mode" = rate ]; then args=(--rate "$RATE" --duration "$DURATION"); else args=(--duration "$SAT_DURATION"); fi
    local pids=${SUT_PIDS[$key]:-}
    # shellcheck disable=SC2086
    [ -n "$pids" ] && before=$(cpu_ticks $pids)
    line=$(taskset -c "$LOAD_CPU" "$BIN/loadgen" --target "${TARGET[$key]}" --connections "$CONNECTIONS" \
        --warmup 1 "${args[@]}")
    local cpu=null
    # shellcheck disable=SC2086
    if [ -n "$pids" ]; then after=$(cpu_ticks $pids); cpu=$(( (after - before) )); fi
    echo "{\"kind\":\"load\",\"run\":$run,\"target\":\"$name\",\"size\":$size,\"cpu_ticks\":$cpu,\"tck\":$TCK,\"load\":$line}" >> "$RESULTS"
    echo "run $run $name $size $mode: $line cpu_ticks=$cpu" >&2
}

for run in $(seq 1 "$RUNS"); do
    for size in 13 4096; do
        for name in direct qp1 qp2 nginx; do
            for mode in $MODES; do measure "$run" "$name" "$size" "$mode"; done
        done
    done
done

# Memory with HOLD open connections (each has carried one request), small responses.
for key in qp1-13 qp2-13 nginx-13; do
    holdout="$OUT_DIR/hold-$key.json"
    taskset -c "$LOAD_CPU" "$BIN/loadgen" --target "${TARGET[$key]}" --hold "$HOLD" --duration 3 > "$holdout" &
    hold_pid=$!
    json_field "$holdout" held > /dev/null
    # shellcheck disable=SC2086
    echo "{\"kind\":\"held\",\"target\":\"${key%-13}\",\"connections\":$HOLD,\"rss_kib\":$(rss_kib ${SUT_PIDS[$key]}),\"hwm_kib\":$(hwm_kib ${SUT_PIDS[$key]})}" >> "$RESULTS"
    wait "$hold_pid"
done

MACHINE="$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -r), nginx $(nginx -v 2>&1 | cut -d/ -f2)"
python3 "$ROOT/benches/load/summarise.py" "$RESULTS" "$MACHINE" "$RUNS" "Load generator and upstreams on CPU $LOAD_CPU, proxy under test on CPU $SUT_CPU."
echo "raw results: $RESULTS" >&2
