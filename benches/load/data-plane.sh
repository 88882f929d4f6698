#!/usr/bin/env bash
# The data-plane benchmark on loopback: direct to the upstream vs through the queue-proxy vs through the
# activator (proxy mode: counted and throttled, as when it stays in the path) and that queue-proxy vs through
# nginx (plain reverse proxy, upstream keep-alive, one worker); at a fixed 1000 requests/s and saturated; small
# (13 B), 4 KiB and streamed (SSE: 16 token events 1 ms apart, then `data: [DONE]`; 200 streams/s) responses. Reports latency
# to the end and to the first byte, throughput, CPU time per request of each proxy (utime + stime from
# /proc/PID/stat) and resident memory (/proc/PID/status: idle, peak under load, with 1000 open connections).
# Medians of RUNS runs; every ratio (added latency against direct, CPU against nginx) is taken within a run.
# Prints markdown tables; raw results stay in $OUT_DIR. Not part of `cargo test`.
#
#   benches/load/data-plane.sh    # RUNS=5 RATE=1000 SSE_RATE=200 DURATION=10 SAT_DURATION=3 CONNECTIONS=32
#   MODES=rate SUT_CPU=0 benches/load/data-plane.sh  # fixed rate only, proxies on the generator's CPU
#   KINDS=sse PATHS="direct qp activator" RUNS=3 benches/load/data-plane.sh
#
# Placement: the load generator and the upstreams share CPU LOAD_CPU (0); the proxies under test run on
# SUT_CPU (1), one worker thread each. Requires cargo, python3 and nginx (installed with apt-get if
# missing; without root or network, PATHS without nginx).
set -euo pipefail

RUNS=${RUNS:-5}
RATE=${RATE:-1000}
# A stream takes about 32 ms (17 writes paced by a 1 ms timer that fires late), so 32 connections carry at most
# about 1000 streams/s: the fixed rate for streams is lower, to measure latency below saturation.
SSE_RATE=${SSE_RATE:-200}
DURATION=${DURATION:-10}
SAT_DURATION=${SAT_DURATION:-3}
CONNECTIONS=${CONNECTIONS:-32}
HOLD=${HOLD:-1000}
MODES=${MODES:-rate saturate}
KINDS=${KINDS:-small 4k sse}
PATHS=${PATHS:-direct qp activator nginx}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ebb-data-plane.XXXXXX)}
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
: > "$RESULTS"

command -v python3 >/dev/null || { echo "python3 is needed to summarise results" >&2; exit 2; }
if [[ " $PATHS " == *" nginx "* ]] && ! command -v nginx >/dev/null; then
    echo "installing nginx (Debian package) ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; } \
        || { echo "nginx is missing and could not be installed; run with PATHS=\"direct qp activator\"" >&2; exit 2; }
fi
if [ "$(nproc)" -lt 2 ]; then LOAD_CPU=0; SUT_CPU=0; fi
ulimit -n 65536 2>/dev/null || true

if [ -z "${BIN:-}" ]; then
    cargo build --release -q --locked -p ebb-benches --bin loadgen --bin bench-upstream --bin activator-bench \
        -p ebb-queue-proxy --bin queue-proxy
    BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/release"
fi

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Starts NAME on CPU with COMMAND..., waits for its first output line (a JSON object) and sets LAST_PID.
start() { # NAME CPU COMMAND...
    local name=$1 cpu=$2; shift 2
    taskset -c "$cpu" "$@" > "$OUT_DIR/$name.out" 2> "$OUT_DIR/$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    for _ in $(seq 1 200); do [ -s "$OUT_DIR/$name.out" ] && return; sleep 0.05; done
    echo "$name did not start:" >&2; cat "$OUT_DIR/$name.err" >&2; exit 1
}
field() { head -n1 "$OUT_DIR/$1.out" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
http_status() { python3 - "$1" <<'PY'
import sys, urllib.request
try:
    print(urllib.request.urlopen(f"http://{sys.argv[1]}/", timeout=2).status)
except Exception as e:
    print(getattr(e, "code", 0))
PY
}
# shellcheck source=benches/load/nginx.sh
source "$ROOT/benches/load/nginx.sh"
proc_sum() { # FIELD PID...: sums a /proc/PID/status field (kB) over the processes
    local f=$1 t=0; shift
    for pid in "$@"; do t=$((t + $(awk -v f="$f:" '$1 == f {print $2}' "/proc/$pid/status"))); done
    echo "$t"
}
cpu_ticks() { local t=0; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
TCK=$(getconf CLK_TCK)

declare -A UPSTREAM_ARGS=([small]="--size 13" [4k]="--size 4096" [sse]="--sse 16 --sse-interval-ms 1")
declare -A TARGET COMPONENT_PIDS EXPECT
for kind in $KINDS; do
    # shellcheck disable=SC2086
    start "upstream-$kind" "$LOAD_CPU" "$BIN/bench-upstream" ${UPSTREAM_ARGS[$kind]}
    TARGET[direct-$kind]=$(field "upstream-$kind" addr)
    start "qp-$kind" "$SUT_CPU" "$BIN/queue-proxy" --upstream "${TARGET[direct-$kind]}" --bind-address 127.0.0.1 \
        --data-port 0 --admin-port 0 --stats-port 0 --metrics-port 0 --pod-name bench --worker-threads 1
    COMPONENT_PIDS[qp-$kind]=$LAST_PID
    TARGET[qp-$kind]=$(field "qp-$kind" data)
    [ "$kind" = sse ] && EXPECT[$kind]="data: [DONE]"
done

# The activator serves each kind's queue-proxy as its one ready pod, once that pod answers its probe.
for kind in $KINDS; do
    [[ " $PATHS " == *" activator "* ]] || break
    start "activator-$kind" "$SUT_CPU" "$BIN/activator-bench" --worker-threads 1 serve --pod "${TARGET[qp-$kind]}"
    COMPONENT_PIDS[activator-$kind]=$LAST_PID
    TARGET[activator-$kind]=$(field "activator-$kind" addr)
done

# nginx: the benchmark's own instance with a generated config (never the system service); buffering off for
# the event stream, as an SSE route is configured.
if [[ " $PATHS " == *" nginx "* ]]; then
    start_nginx "$SUT_CPU" "$OUT_DIR/nginx"
    for kind in $KINDS; do COMPONENT_PIDS[nginx-$kind]="$NGINX_MASTER $NGINX_WORKER"; done
fi

# Every path answers before any load (the queue-proxy once it has probed its upstream).
for kind in $KINDS; do
    for path in $PATHS; do
        for _ in $(seq 1 200); do
            code=$(http_status "${TARGET[$path-$kind]}")
            [ "$code" = 200 ] && break
            sleep 0.05
        done
        [ "$code" = 200 ] || { echo "$path ($kind) does not answer 200 (last: $code); logs in $OUT_DIR" >&2; exit 1; }
    done
done

# The processes whose CPU a request through PATH costs, by component.
components() { # PATH KIND -> "component=pids;..."
    case $1 in
        direct) echo "" ;;
        qp) echo "qp=${COMPONENT_PIDS[qp-$2]}" ;;
        activator) echo "activator=${COMPONENT_PIDS[activator-$2]};qp=${COMPONENT_PIDS[qp-$2]}" ;;
        nginx) echo "nginx=${COMPONENT_PIDS[nginx-$2]}" ;;
    esac
}

record_memory() { # KIND(idle|peak) -> one line per component process group
    local what=$1 key pids
    for key in "${!COMPONENT_PIDS[@]}"; do
        pids=${COMPONENT_PIDS[$key]}
        # shellcheck disable=SC2086
        echo "{\"kind\":\"$what\",\"component\":\"${key%-*}\",\"response\":\"${key##*-}\",\"rss_kib\":$(proc_sum VmRSS $pids),\"hwm_kib\":$(proc_sum VmHWM $pids)}" >> "$RESULTS"
    done
}
record_memory idle

measure() { # RUN PATH KIND MODE
    local run=$1 path=$2 kind=$3 mode=$4 args=() line cpu="" part name pids before
    local rate=$RATE
    [ "$kind" = sse ] && rate=$SSE_RATE
    if [ "$mode" = rate ]; then args=(--rate "$rate" --duration "$DURATION"); else args=(--duration "$SAT_DURATION"); fi
    [ -n "${EXPECT[$kind]:-}" ] && args+=(--expect-end "${EXPECT[$kind]}")
    declare -A start_ticks=()
    IFS=';' read -ra parts <<< "$(components "$path" "$kind")"
    for part in "${parts[@]}"; do
        # shellcheck disable=SC2086
        start_ticks[${part%%=*}]=$(cpu_ticks ${part#*=})
    done
    line=$(taskset -c "$LOAD_CPU" "$BIN/loadgen" --target "${TARGET[$path-$kind]}" --connections "$CONNECTIONS" \
        --warmup 1 "${args[@]}")
    for part in "${parts[@]}"; do
        name=${part%%=*}; pids=${part#*=}
        # shellcheck disable=SC2086
        cpu+="${cpu:+,}\"$name\":$(( $(cpu_ticks $pids) - ${start_ticks[$name]} ))"
    done
    echo "{\"kind\":\"load\",\"run\":$run,\"path\":\"$path\",\"response\":\"$kind\",\"cpu_ticks\":{$cpu},\"tck\":$TCK,\"load\":$line}" >> "$RESULTS"
    echo "run $run $path $kind $mode: $line cpu_ticks={$cpu}" >&2
}

for run in $(seq 1 "$RUNS"); do
    for kind in $KINDS; do
        for mode in $MODES; do
            for path in $PATHS; do measure "$run" "$path" "$kind" "$mode"; done
        done
    done
done
record_memory peak

# Memory with HOLD open keep-alive connections that have each carried one small request.
hold_kind=${KINDS%% *}
for path in $PATHS; do
    [ "$path" = direct ] && continue
    holdout="$OUT_DIR/hold-$path.json"
    taskset -c "$LOAD_CPU" "$BIN/loadgen" --target "${TARGET[$path-$hold_kind]}" --hold "$HOLD" --duration 3 > "$holdout" &
    hold_pid=$!
    for _ in $(seq 1 400); do [ -s "$holdout" ] && break; sleep 0.05; done
    IFS=';' read -ra parts <<< "$(components "$path" "$hold_kind")"
    for part in "${parts[@]}"; do
        # shellcheck disable=SC2086
        echo "{\"kind\":\"held\",\"path\":\"$path\",\"component\":\"${part%%=*}\",\"connections\":$HOLD,\"rss_kib\":$(proc_sum VmRSS ${part#*=})}" >> "$RESULTS"
    done
    wait "$hold_pid"
done

nginx_version=$(command -v nginx >/dev/null && nginx -v 2>&1 | cut -d/ -f2 || echo "not run")
MACHINE="$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r), nginx $nginx_version"
python3 "$ROOT/benches/load/summarise.py" "$RESULTS" "$MACHINE" \
    "Load generator and upstreams on CPU $LOAD_CPU, proxies on CPU $SUT_CPU (one worker thread each). $RATE requests/s ($SSE_RATE streams/s) for ${DURATION} s, saturated for ${SAT_DURATION} s, $CONNECTIONS connections, 1 s warm-up each."
echo "raw results: $RESULTS" >&2
