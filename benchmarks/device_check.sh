#!/usr/bin/env bash
# One prepared GPU check for issue 24 (items 4 and 6), ~6-8 minutes on an H100 or H200:
# ViT-B/16 at 224 px, bf16 autocast, the model-only step vs the full training loop, eager vs
# compiled towers, MFU from counted FLOPs, and OpenCLIP in the same process where it imports.
#
#   bash benchmarks/device_check.sh [OUT_DIR]          # on the GPU machine, from the repository root
#   SMOKE=1 bash benchmarks/device_check.sh             # CPU: tiny sizes, eager only (is it wired up?)
#
# Needs a Python with CUDA torch and visembed's dependencies (PYTHON=..., default python3). Each group
# of rows has its own time limit, so a slow group still leaves the others' tables; everything is
# written to OUT_DIR/device_check.md as well. Batch 1024 where the GPU has >= 100 GB (H200), else
# 512 (H100: ViT-B/16 at 1024 without activation checkpointing does not fit 80 GB); BATCH=... overrides.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/visembed-device-check}}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
REPORT="$OUT/device_check.md"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TORCHINDUCTOR_CACHE_DIR="$OUT/inductor-cache"  # the loop's compile reuses the step's kernels

run() {  # run LIMIT_S ARGS...: one group of rows, its table appended to the report
  local limit=$1; shift
  echo "## train_speed.py $*" | tee -a "$REPORT"
  timeout "$limit" "$PY" benchmarks/train_speed.py "$@" 2>"$OUT/stderr-$RANDOM.txt" | grep -v '^run finished' \
    | tee -a "$REPORT"
  LAST_RC=${PIPESTATUS[0]}
  [ "$LAST_RC" -eq 0 ] || echo "(exit $LAST_RC: 124 = over its ${limit} s limit; stderr in $OUT)" | tee -a "$REPORT"
}

{ date -u; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)";
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "no nvidia-smi";
  nproc; } | tee "$REPORT"

if [ -n "${SMOKE:-}" ]; then
  run 300 --smoke --no-compile --device cpu
  exit "$LAST_RC"
fi

MEM_MB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
if [ -z "${BATCH:-}" ]; then
  if [ "${MEM_MB:-0}" -ge 100000 ]; then BATCH=1024; else BATCH=512; fi
fi
COMMON=(--preset vit-b16 --batch-size "$BATCH" --device cuda --steps 8 --warmup 3)

run 200 "${COMMON[@]}" --only step                                      # eager + compiled step, FLOPs, MFU
run 200 "${COMMON[@]}" --only loop --images $((2 * BATCH)) --source-size 256 --workers 12   # full loop, both
run 120 "${COMMON[@]}" --only openclip                                  # OpenCLIP eager + compiled, if it imports
date -u | tee -a "$REPORT"
echo "report: $REPORT"
