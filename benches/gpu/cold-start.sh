#!/usr/bin/env bash
# GPU cold start behind `ebb up`, by phase, and warm streaming throughput (benches/gpu/cold_start.py says what
# is measured). Runs on the GPU machine from the repository root; prints a markdown table and leaves raw JSON,
# the table and the logs in $OUT.
#
#   benches/gpu/cold-start.sh        # ROUNDS=5 PRESET=small CONCURRENCY=1,8,32 DURATION=8 TOKENS=64
#
# EBB: the ebb binary (default .device-bin/ebb, else target/release/ebb, built with cargo if missing).
# PY: the Python with torch, transformers and aiohttp (default /opt/torch/.venv/bin/python3, else python3).
# DROP_CACHES=1 (default when root) adds one round after dropping the page cache. EXTRA: more driver options.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$(mktemp -d /tmp/ebb-gpu-out.XXXXXX)}
mkdir -p "$OUT"
ROUNDS=${ROUNDS:-5}
PRESET=${PRESET:-small}
MODEL_DIR=${MODEL_DIR:-/tmp/ebb-gpu-model-$PRESET}
WORKDIR=${WORKDIR:-/tmp/ebb-gpu-cold-start}
if [ -z "${PY:-}" ]; then
    if [ -x /opt/torch/.venv/bin/python3 ]; then PY=/opt/torch/.venv/bin/python3; else PY=python3; fi
fi
if [ -z "${EBB:-}" ]; then
    if [ -x .device-bin/ebb ]; then EBB=$ROOT/.device-bin/ebb; else
        [ -x target/release/ebb ] || cargo build --release --locked --bin ebb
        EBB=$ROOT/target/release/ebb
    fi
fi
if [ -z "${DROP_CACHES:-}" ]; then
    if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then DROP_CACHES=1; else DROP_CACHES=0; fi
fi

"$PY" - <<'PYEOF' || { echo "cold-start.sh: $PY lacks torch, transformers, aiohttp or safetensors" >&2; exit 2; }
import torch, transformers, aiohttp, safetensors, sys
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"aiohttp {aiohttp.__version__}, safetensors {safetensors.__version__}, cuda {torch.cuda.is_available()}")
PYEOF
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo none)"
    echo "cpus: $(nproc), kernel: $(uname -r), memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "ebb: $("$EBB" --version 2>/dev/null || echo "$EBB")"
} | tee "$OUT/device.txt"

"$PY" benches/gpu/server.py prepare --model-dir "$MODEL_DIR" --preset "$PRESET"
rm -rf "$WORKDIR"
set +e
PYTHONUNBUFFERED=1 "$PY" benches/gpu/cold_start.py --ebb "$EBB" --python "$PY" --model-dir "$MODEL_DIR" \
    --out "$OUT" --workdir "$WORKDIR" --rounds "$ROUNDS" $([ "$DROP_CACHES" = 1 ] && echo --drop-caches) \
    --concurrency "${CONCURRENCY:-1,8,32}" --duration "${DURATION:-8}" --warm-tokens "${TOKENS:-64}" ${EXTRA:-}
status=$?
set -e
cp "$MODEL_DIR/params.json" "$OUT/model-params.json" 2>/dev/null || true
tar czf "$OUT/logs.tar.gz" -C "$WORKDIR" . 2>/dev/null || true
exit $status
