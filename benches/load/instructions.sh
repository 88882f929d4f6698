#!/usr/bin/env bash
# Instructions per request of the queue-proxy and of the activator in front of it, counted by valgrind's
# callgrind: deterministic where CPU time on this machine moves by 20 %, so it compares builds (BIN_A, BIN_B)
# without interleaving many timed runs. Each proxy runs under callgrind; counters are zeroed after a warm-up,
# then wrk sends REQUESTS-ish requests (DURATION seconds, CONNECTIONS connections, 13 B answers) and the count
# is dumped; instructions / requests is the figure. Timer wake-ups while idle are included (a few hundred
# per second at most, under 1 % here). Not part of `cargo test`.
#
#   BIN_A=/path/before BIN_B=/path/after benches/load/instructions.sh
#   BIN_A=target/release benches/load/instructions.sh        # one build
#
# Each BIN holds queue-proxy, activator-bench and bench-upstream (cargo build --release -p ebb-benches
# -p ebb-queue-proxy). Requires valgrind and wrk (Debian packages).
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-8}
for tool in valgrind callgrind_control wrk python3; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install valgrind wrk python3)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/ebb-instructions.XXXXXX)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() { # NAME COMMAND...: starts it, waits for its first output line (JSON) and sets LAST_PID
    local name=$1; shift
    "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    for _ in $(seq 1 600); do [ -s "$WORK/$name.out" ] && return; sleep 0.1; done
    echo "$name did not start:" >&2; cat "$WORK/$name.err" >&2; exit 1
}
field() { head -n1 "$WORK/$1.out" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
grind() { # NAME: the callgrind command prefix for a proxy
    echo valgrind --tool=callgrind --callgrind-out-file="$WORK/$1.%p.cg" --dump-instr=no --collect-atstart=yes
}
# Total instructions in the newest dump of PID.
instructions() {
    local pid=$1 file
    file=$(ls -t "$WORK"/*."$pid".cg* | head -n1)
    awk '/^summary:/ {print $2}' "$file"
}
requests_of() { awk '/requests in/ {print $1}' "$1"; }

measure() { # LABEL BIN
    local label=$1 bin=$2
    start "up-$label" "$bin/bench-upstream" --size 13
    local upstream
    upstream=$(field "up-$label" addr)
    # shellcheck disable=SC2046
    start "qp-$label" $(grind "qp-$label") "$bin/queue-proxy" --upstream "$upstream" --bind-address 127.0.0.1 \
        --data-port 0 --admin-port 0 --stats-port 0 --metrics-port 0 --pod-name bench --worker-threads 1
    local qp_pid=$LAST_PID qp
    qp=$(field "qp-$label" data)
    # shellcheck disable=SC2046
    start "act-$label" $(grind "act-$label") "$bin/activator-bench" --worker-threads 1 serve --pod "$qp"
    local act_pid=$LAST_PID act
    act=$(field "act-$label" addr)
    for _ in $(seq 1 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$act/")" = 200 ] && break; sleep 0.2
    done

    for path in qp activator; do
        local target=$qp; [ "$path" = activator ] && target=$act
        wrk -t1 -c"$CONNECTIONS" -d2s "http://$target/" > /dev/null                     # warm-up
        callgrind_control -z "$qp_pid" "$act_pid" > /dev/null 2>&1
        wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://$target/" > "$WORK/wrk-$label-$path"
        callgrind_control -d "$qp_pid" "$act_pid" > /dev/null 2>&1
        local n qp_ir act_ir
        n=$(requests_of "$WORK/wrk-$label-$path")
        qp_ir=$(instructions "$qp_pid"); act_ir=$(instructions "$act_pid")
        if [ "$path" = qp ]; then
            printf '| %s | queue-proxy | %s | %s |\n' "$label" "$n" "$((qp_ir / n))"
        else
            printf '| %s | activator -> queue-proxy | %s | %s + %s |\n' "$label" "$n" "$((act_ir / n))" "$((qp_ir / n))"
        fi
    done
    cleanup; PIDS=()
}

echo "| build | path | requests | instructions per request |"
echo "|---|---|---:|---:|"
measure A "${BIN_A:?BIN_A names a directory of release binaries}"
[ -n "${BIN_B:-}" ] && measure B "$BIN_B"
echo
echo "raw: $WORK"
