#!/usr/bin/env bash
# The data plane under an external load generator: Debian's `wrk` (one thread, keep-alive connections,
# saturated), against the queue-proxy (no concurrency limit), the activator in front of it (proxy mode) and nginx
# (one worker, upstream keepalive 64), all on one CPU, with wrk and `bench-upstream` on another. Reports
# requests/s and each proxy's CPU time per request (utime + stime from /proc/PID/stat over the run, divided by
# the requests wrk completed; nginx: master + worker), and its ratio to nginx's within the same round. Variants
# of the ebb binaries are measured interleaved (round 1: every variant and nginx, round 2: again, ...), so that
# the machine's drift moves them together; the summary is the median over rounds. Not part of `cargo test`.
#
#   benches/load/wrk.sh                                        # builds the release binaries; RUNS=3 DURATION=5
#   VARIANTS="before=/dir/a after=/dir/b" benches/load/wrk.sh  # dirs holding queue-proxy, activator-bench,
#                                                              # bench-upstream (the first one's upstream is used)
#   KINDS="small 4k sse" PATHS="qp activator nginx" CONNECTIONS=50 THREADS=1 benches/load/wrk.sh
#
# Placement: wrk and the upstreams on LOAD_CPU (0), every proxy on SUT_CPU (1).
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
KINDS=${KINDS:-small 4k sse}
PATHS=${PATHS:-qp activator nginx}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ebb-wrk.XXXXXX)}
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
: > "$RESULTS"

for tool in wrk python3; do
    command -v $tool >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $tool >/dev/null \
        || { echo "$tool is missing and could not be installed" >&2; exit 2; }
done
if [[ " $PATHS " == *" nginx "* ]] && ! command -v nginx >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null \
        || { echo "nginx is missing; run with PATHS=\"qp activator\"" >&2; exit 2; }
fi
ulimit -n 65536 2>/dev/null || true

if [ -z "${VARIANTS:-}" ]; then
    cargo build --release -q --locked -p ebb-benches --bin bench-upstream --bin activator-bench \
        -p ebb-queue-proxy --bin queue-proxy
    VARIANTS="ebb=$(realpath "${CARGO_TARGET_DIR:-target}")/release"
fi
read -ra VARIANT_LIST <<< "$VARIANTS"
FIRST_DIR=${VARIANT_LIST[0]#*=}

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

start() { # NAME CPU COMMAND...: waits for its first output line (JSON) and sets LAST_PID
    local name=$1 cpu=$2; shift 2
    taskset -c "$cpu" "$@" > "$OUT_DIR/$name.out" 2> "$OUT_DIR/$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    for _ in $(seq 1 200); do [ -s "$OUT_DIR/$name.out" ] && return; sleep 0.05; done
    echo "$name did not start:" >&2; cat "$OUT_DIR/$name.err" >&2; exit 1
}
field() { head -n1 "$OUT_DIR/$1.out" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
# shellcheck source=benches/load/nginx.sh
source "$ROOT/benches/load/nginx.sh"
cpu_ticks() { local t=0; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
TCK=$(getconf CLK_TCK)

declare -A UPSTREAM_ARGS=([small]="--size 13" [4k]="--size 4096" [sse]="--sse 16 --sse-interval-ms 1")
declare -A TARGET PIDS_OF
for kind in $KINDS; do
    # shellcheck disable=SC2086
    start "upstream-$kind" "$LOAD_CPU" "$FIRST_DIR/bench-upstream" ${UPSTREAM_ARGS[$kind]}
    TARGET[direct-$kind]=$(field "upstream-$kind" addr)
    for variant in "${VARIANT_LIST[@]}"; do
        name=${variant%%=*} dir=${variant#*=}
        if [[ " $PATHS " == *" qp "* || " $PATHS " == *" activator "* ]]; then
            start "qp-$name-$kind" "$SUT_CPU" "$dir/queue-proxy" --upstream "${TARGET[direct-$kind]}" \
                --bind-address 127.0.0.1 --data-port 0 --admin-port 0 --stats-port 0 --metrics-port 0 \
                --pod-name bench --worker-threads 1 --container-concurrency 0
            PIDS_OF[qp-$name-$kind]=$LAST_PID
            TARGET[qp-$name-$kind]=$(field "qp-$name-$kind" data)
        fi
        if [[ " $PATHS " == *" activator "* ]]; then
            # Waits for its pod (the queue-proxy above) to answer its probe before printing its address.
            start "activator-$name-$kind" "$SUT_CPU" "$dir/activator-bench" --worker-threads 1 serve \
                --pod "${TARGET[qp-$name-$kind]}"
            PIDS_OF[activator-$name-$kind]=$LAST_PID
            TARGET[activator-$name-$kind]=$(field "activator-$name-$kind" addr)
        fi
    done
done

if [[ " $PATHS " == *" nginx "* ]]; then
    start_nginx "$SUT_CPU" "$OUT_DIR/nginx"
    for kind in $KINDS; do PIDS_OF[nginx-$kind]="$NGINX_MASTER $NGINX_WORKER"; done
fi

# Every target answers 200 before any load (a queue-proxy once it has probed its upstream).
for key in "${!TARGET[@]}"; do
    for _ in $(seq 1 200); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://${TARGET[$key]}/" || true)
        [ "$code" = 200 ] && break
        sleep 0.05
    done
    [ "$code" = 200 ] || { echo "$key does not answer 200 (last: $code); logs in $OUT_DIR" >&2; exit 1; }
done

measure() { # RUN KIND PATH VARIANT
    local run=$1 kind=$2 path=$3 variant=$4 key pids cpu=() before=() out requests errors comp i
    case $path in
        nginx) key=nginx-$kind; comps=(nginx) ;;
        qp) key=qp-$variant-$kind; comps=(qp) ;;
        activator) key=activator-$variant-$kind; comps=(activator qp) ;;
    esac
    for comp in "${comps[@]}"; do
        case $comp in nginx) pids=${PIDS_OF[nginx-$kind]} ;; *) pids=${PIDS_OF[$comp-$variant-$kind]} ;; esac
        # shellcheck disable=SC2086
        before+=("$(cpu_ticks $pids)")
    done
    # A second of warm-up, unmeasured.
    taskset -c "$LOAD_CPU" wrk -t1 -c "$CONNECTIONS" -d1s "http://${TARGET[$key]}/" > /dev/null
    for i in "${!comps[@]}"; do
        comp=${comps[$i]}
        case $comp in nginx) pids=${PIDS_OF[nginx-$kind]} ;; *) pids=${PIDS_OF[$comp-$variant-$kind]} ;; esac
        # shellcheck disable=SC2086
        before[$i]=$(cpu_ticks $pids)
    done
    out=$(taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c "$CONNECTIONS" -d"${DURATION}s" --latency "http://${TARGET[$key]}/")
    for i in "${!comps[@]}"; do
        comp=${comps[$i]}
        case $comp in nginx) pids=${PIDS_OF[nginx-$kind]} ;; *) pids=${PIDS_OF[$comp-$variant-$kind]} ;; esac
        # shellcheck disable=SC2086
        cpu+=("\"$comp\":$(( $(cpu_ticks $pids) - before[i] ))")
    done
    requests=$(awk '/requests in/ {print $1}' <<< "$out")
    errors=$(awk '/Non-2xx|Socket errors/ {n++} END {print n+0}' <<< "$out")
    p50=$(awk '$1 == "50%" {print $2}' <<< "$out")
    p99=$(awk '$1 == "99%" {print $2}' <<< "$out")
    local cpus; cpus=$(IFS=,; echo "${cpu[*]}")
    echo "{\"run\":$run,\"kind\":\"$kind\",\"path\":\"$path\",\"variant\":\"$variant\",\"requests\":$requests,\"seconds\":$DURATION,\"errors\":$errors,\"p50\":\"$p50\",\"p99\":\"$p99\",\"cpu_ticks\":{$cpus},\"tck\":$TCK}" >> "$RESULTS"
    echo "run $run $kind $path $variant: $requests requests, cpu {$cpus}, p50 $p50, p99 $p99" >&2
    [ "$errors" = 0 ] || { echo "wrk reported errors:" >&2; echo "$out" >&2; }
}

for run in $(seq 1 "$RUNS"); do
    for kind in $KINDS; do
        for path in $PATHS; do
            if [ "$path" = nginx ]; then
                measure "$run" "$kind" nginx nginx
            else
                for variant in "${VARIANT_LIST[@]}"; do measure "$run" "$kind" "$path" "${variant%%=*}"; done
            fi
        done
    done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
names = {"small": "13 B", "4k": "4 KiB", "sse": "SSE"}
by = defaultdict(dict)
for r in rows:
    by[(r["kind"], r["path"], r["variant"])][r["run"]] = r
def us(r, comp=None):
    t = r["cpu_ticks"]
    spent = t[comp] if comp else sum(t.values())
    return spent / r["tck"] * 1e6 / r["requests"]
print("| response | path | variant | requests/s | CPU µs/request | vs nginx (same round) | activator alone µs | activator vs nginx |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for (kind, path, variant), runs in sorted(by.items(), key=lambda k: (list(names).index(k[0][0]), k[0][1], k[0][2])):
    nginx = by.get((kind, "nginx", "nginx"), {})
    rps = statistics.median(r["requests"] / r["seconds"] for r in runs.values())
    cpu = statistics.median(us(r) for r in runs.values())
    ratio = [us(r) / us(nginx[n]) for n, r in runs.items() if n in nginx]
    act = [us(r, "activator") for r in runs.values() if "activator" in r["cpu_ticks"]]
    act_ratio = [us(r, "activator") / us(nginx[n]) for n, r in runs.items() if n in nginx and "activator" in r["cpu_ticks"]]
    f = lambda v, d=2: f"{v:.{d}f}" if v is not None else "-"
    print(f"| {names[kind]} | {path} | {variant} | {rps:.0f} | {cpu:.2f} | {f(statistics.median(ratio)) if ratio else '-'} | "
          f"{f(statistics.median(act)) if act else '-'} | {f(statistics.median(act_ratio)) if act_ratio else '-'} |")
PY
echo "raw results: $RESULTS" >&2
