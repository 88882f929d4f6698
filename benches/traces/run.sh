#!/usr/bin/env bash
# Cost vs latency on seeded traces: builds ebb, generates the traces, replays each through `ebb up` under each
# configuration and through `ebb simulate`, and prints a markdown table (see benches/traces/README.md).
# Usage: benches/traces/run.sh [OUT_DIR] [SEED]   (REPLAY_ARGS="--traces idle --configs defaults" to run fewer)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-target/traces}"
seed="${2:-1}"
cargo build --release --locked --bin ebb
ebb="$(realpath "${CARGO_TARGET_DIR:-target}")/release/ebb"
python3 benches/traces/generate.py "$out/traces" "$seed"
# shellcheck disable=SC2086
exec python3 benches/traces/replay.py "$ebb" "$out/traces" "$out" ${REPLAY_ARGS:-}
