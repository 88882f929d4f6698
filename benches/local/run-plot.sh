#!/usr/bin/env bash
# The README's picture of a real ebb up run (docs/ebb-up-run.svg). Usage: benches/local/run-plot.sh [OUT.svg]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin ebb
exec python3 benches/local/run_plot.py "$(realpath "${CARGO_TARGET_DIR:-target}")/release/ebb" "${1:-docs/ebb-up-run.svg}"
