#!/usr/bin/env bash
# Benchmark: resident memory of an activator holding 10,000 queued requests (goal <= 100 MiB).
# The activator's one service never gets a pod; loadgen, a separate process, opens N connections with one
# request each and holds them. Prints the activator's RSS idle and while holding, and its peak.
# Usage: benches/activator/hold.sh [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
requests=${1:-10000}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet -p ebb-benches --bin activator-bench --bin loadgen
ulimit -n "$(ulimit -Hn)"
fifo=$(mktemp -u); mkfifo "$fifo"
"$target/release/activator-bench" hold --max-queued $((requests * 2)) > "$fifo" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$fifo"' EXIT
read -r line < "$fifo"
addr=$(echo "$line" | sed 's/.*"addr":"\([^"]*\)".*/\1/')
metrics=$(echo "$line" | sed 's/.*"metrics":"\([^"]*\)".*/\1/')
rss() { awk "/^$1:/ {print \$2}" "/proc/$server/status"; }
queued() { curl -s "http://$metrics/metrics" | awk '/^ebb_activator_queued\{/ {print $2}'; }
idle=$(rss VmRSS)
# Opening 10,000 connections can take over 30 s on a busy 2-core machine: generous bounds, left early.
"$target/release/loadgen" --target "$addr" --hold "$requests" --duration 150 > /dev/null 2>&1 &
client=$!
for _ in $(seq 1200); do
  [ "$(queued)" -ge "$requests" ] 2>/dev/null && break
  sleep 0.1
done
held=$(queued)
holding=$(rss VmRSS)
peak=$(rss VmHWM)
kill $client 2>/dev/null || true
[ "$held" -ge "$requests" ] || { echo "only $held of $requests requests were queued" >&2; exit 1; }
mib() { awk "BEGIN {printf \"%.1f\", $1 / 1024}"; }
echo "| activator holding $held queued requests | idle $(mib "$idle") MiB | holding $(mib "$holding") MiB | peak $(mib "$peak") MiB | goal <= 100 MiB |"
