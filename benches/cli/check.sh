#!/usr/bin/env bash
# Benchmark: `ebb check` on 10,000 Kubernetes objects (goal: under one second on a 2-core machine).
# Usage: benches/cli/check.sh [OBJECTS] [RUNS]. Prints the median wall time of RUNS runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
objects=${1:-10000}
runs=${2:-5}

cargo build --release --quiet --bin ebb
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A realistic mix: autoscaled Deployments (one in ten with a bad annotation), plain Services and ConfigMaps.
awk -v n="$objects" 'BEGIN {
  for (i = 0; i < n; i++) {
    kind = i % 4
    if (kind < 2) {
      bad = (i % 10 == 0) ? "3s" : "30s"
      printf "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: svc-%d\n  namespace: ns-%d\n", i, i % 50
      printf "  labels: {ebb.dev/service: svc-%d, app: svc-%d}\n  annotations:\n", i, i
      printf "    autoscaling.knative.dev/window: \"%s\"\n    autoscaling.knative.dev/max-scale: \"10\"\n", bad
      printf "    ebb.dev/container-concurrency: \"4\"\n    kubectl.kubernetes.io/last-applied-configuration: \"{}\"\n"
      printf "spec:\n  replicas: 1\n  template:\n    metadata:\n      labels: {ebb.dev/service: svc-%d}\n", i
      printf "    spec:\n      containers:\n      - name: model\n        image: example/model:1\n        ports: [{containerPort: 8080}]\n"
    } else if (kind == 2) {
      printf "---\napiVersion: v1\nkind: Service\nmetadata: {name: other-%d, namespace: ns-%d}\nspec:\n  ports: [{port: 80}]\n", i, i % 50
    } else {
      printf "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-%d}\ndata: {key: value}\n", i
    }
  }
}' > "$work/objects.yaml"

times=()
for _ in $(seq "$runs"); do
  start=$(date +%s%N)
  status=0
  "${CARGO_TARGET_DIR:-target}/release/ebb" check "$work/objects.yaml" > /dev/null 2>&1 || status=$?
  end=$(date +%s%N)
  [ "$status" -eq 1 ] || { echo "expected exit 1 (the input has errors), got $status" >&2; exit 1; }
  times+=($(( (end - start) / 1000000 )))
done
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
size=$(du -h "$work/objects.yaml" | cut -f1)
echo "| ebb check, $objects objects ($size of YAML) | median ${median} ms of $runs runs (${times[*]} ms) |"
