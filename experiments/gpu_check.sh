#!/usr/bin/env bash
# The GPU half of `make bench`, for a machine with a CUDA GPU (never needed by tests or CI).
#
#   bash experiments/gpu_check.sh [OUT]        # OUT defaults to results/bench/cuda
#
# Uses the python3 that already holds a CUDA build of torch (it never installs torch, so a CUDA
# wheel is not replaced by the CPU pin of the Makefile), installs the suite without its
# dependencies' torch, and within about 8 minutes runs on CUDA: every algorithm's training
# step (fp32 and bf16, Diffusion-QL compiled), EDP's approximation against the chain at T = 5,
# 20 and 50, 5 seeds batched against one, and peak GPU memory. Reports: OUT/bench.{md,json}.
# Offline machines: carry the missing wheels (gymnasium, mujoco, minari, tyro, rliable, ...)
# and install them first with `pip install --no-index --find-links WHEELS ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/bench/cuda}"
PY="${PYTHON:-python3}"

"$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch.cuda.is_available() is False: run this on a machine with a CUDA GPU")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
EOF
# the suite itself; its dependencies only where missing (torch is already there)
"$PY" -m pip install -q --no-deps -e . || true
"$PY" -c "import dql, gymnasium, minari, tyro" 2>/dev/null || "$PY" -m pip install -q -e .

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
# 8 minutes in all: 2 s per timed side, 3 A/B rounds; evaluation is a CPU measurement (skipped)
timeout 480 "$PY" experiments/bench.py --device cuda --seconds 2 --rounds 3 --no-eval --out "$OUT"
echo "gpu_check: wrote $OUT/bench.md"
