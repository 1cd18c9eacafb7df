#!/usr/bin/env bash
# Run ON the device machine (device `run`, carry [".whl"], timeout_s 540): installs the carried
# wheels beside the image's torch, then measures; the table and raw figures land in $OUT.
#   here:   bash benchmarks/gpu/fetch_wheels.sh
#   device: bash benchmarks/gpu/run_on_device.sh [extra train_step_mfu.py arguments]
set -euo pipefail
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 OUT=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
"$PYTHON" benchmarks/gpu/train_step_mfu.py "$@" 2>&1 | tee "$OUT/train_step_mfu.log"
