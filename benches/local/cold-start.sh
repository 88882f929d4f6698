#!/usr/bin/env bash
# Local cold start, split into phases (see cold_start.py). Usage: benches/local/cold-start.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin ebb
exec python3 benches/local/cold_start.py "$(realpath "${CARGO_TARGET_DIR:-target}")/release/ebb" "${1:-5}"
