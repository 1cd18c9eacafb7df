#!/usr/bin/env bash
# Run ON the GPU machine, from a copy of the checkout with .device_inputs/ beside it (allow
# 540 s), after benchmarks/gpu/prepare_device_inputs.sh on a machine with package access.
# Installs the carried wheels beside the image's torch, then measures: the training step
# (train_step_mfu.py: ViT-B/16 and L/14, 0/50/75%, ours and open_clip, on the demo corpus's
# caption lengths), the linear probe against clip_benchmark's, unmodified, on CUDA, and a DDP,
# an FSDP and an FSDP bf16-policy step on 2 GPUs (1 process per GPU) with the per-rank mask
# check, or on one rank with one GPU. Tables, raw figures and logs land in $OUT.
set -euo pipefail
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .device_inputs/wheels/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 OUT=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
if [ -f .device_inputs/probe_features.pt ]; then
    "$PYTHON" benchmarks/linear_probe_vs_clip_benchmark.py \
        --features .device_inputs/probe_features.pt --rounds 3 2>&1 | tee "$OUT/linear_probe.log"
fi
GPUS=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 0)
if [ "$GPUS" -ge 2 ]; then
    "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node=2 \
        benchmarks/gpu/distributed_step_check.py --model vit_b16 --batch 128 2>&1 \
        | tee "$OUT/distributed_step_check.log"
else  # one GPU: the same modes on one rank (no cross-rank checks)
    "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node=1 \
        benchmarks/gpu/distributed_step_check.py --model vit_b16 --batch 128 2>&1 \
        | tee "$OUT/distributed_step_check.log"
fi
CAPTIONS=()
if [ -f .device_inputs/caption_tokens.pt ]; then CAPTIONS=(--captions .device_inputs/caption_tokens.pt); fi
"$PYTHON" benchmarks/gpu/train_step_mfu.py "${CAPTIONS[@]}" "$@" 2>&1 | tee "$OUT/train_step_mfu.log"
