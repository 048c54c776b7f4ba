#!/usr/bin/env bash
# The GPU benchmark in one command, on a machine with a CUDA GPU, torch, transformers
# and Debian's fortunes: builds the full-size random-weight model, then runs
# `python -m bench.gpu` (peak, parity, agreement, throughput sweep, pipeline ratio,
# torch.compile) and leaves gpu.md, gpu.json and gpu.log in OUT_DIR.
#
#   bench/gpu.sh OUT_DIR [options of python -m bench.gpu]
#   PYTHON=.venv/bin/python bench/gpu.sh /tmp/gpu --device cpu --quick --model-size tiny
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bench/gpu.sh OUT_DIR [options of python -m bench.gpu]" >&2
  exit 2
fi
out="$1"
shift
mkdir -p "$out"
python="${PYTHON:-python3}"
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  PYTHONUNBUFFERED=1 "$python" -m bench.gpu --out "$out" --compile "$@"
} 2>&1 | tee "$out/gpu.log"
