#!/usr/bin/env bash
# Run ON the GPU machine, from a copy of the checkout with .device_inputs/ beside it (allow
# 540 s), after benchmarks/gpu/prepare_device_inputs.sh on a machine with package access.
# Installs the carried wheels beside the image's torch, then measures: the training step
# (train_step_mfu.py: ViT-B/16 and L/14, 0/50/75%, ours and open_clip, on the demo corpus's
# caption lengths), the linear probe against clip_benchmark's, unmodified, on CUDA, and a DDP,
# an FSDP and an FSDP bf16-policy step on 2 GPUs (1 process per GPU) with the per-rank mask
# check, or on one rank with one GPU. Tables, raw figures and logs land in $OUT.
# DEVICE_CHECK_TOY=1 runs the same commands on the CPU at toy size with the environment's own
# packages (the probe on a random-init micro model's features): make test does, so the script
# cannot rot between the rare GPU runs.
set -euo pipefail
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OUT=${OUT:-.}
if [ -n "${DEVICE_CHECK_TOY:-}" ]; then
    STEP_CHECK=(--model flip_micro --batch 8 --steps 1 --warmup 1 --device cpu)
    MFU=(--models flip_micro --batches 4 --ratios 0 0.5 --steps 1 --warmup 1 --rounds 1)
    MFU+=(--device cpu)
else
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .device_inputs/wheels/*.whl
    export PYTHONPATH=/tmp/site
    STEP_CHECK=(--model vit_b16 --batch 128)
    MFU=()
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
if [ -n "${DEVICE_CHECK_TOY:-}" ]; then
    # the features of a random-init micro model on a few Fashion-MNIST images, then the same
    # probe-only comparison as on the GPU
    "$PYTHON" benchmarks/linear_probe_vs_clip_benchmark.py random:flip_micro --train 200 \
        --test 100 --batch 50 --save-features "$OUT/probe_features.pt"
    "$PYTHON" benchmarks/linear_probe_vs_clip_benchmark.py --features "$OUT/probe_features.pt" \
        --rounds 1 --epochs 1 2>&1 | tee "$OUT/linear_probe.log"
elif [ -f .device_inputs/probe_features.pt ]; then
    "$PYTHON" benchmarks/linear_probe_vs_clip_benchmark.py \
        --features .device_inputs/probe_features.pt --rounds 3 2>&1 | tee "$OUT/linear_probe.log"
fi
GPUS=$({ nvidia-smi --list-gpus 2>/dev/null || true; } | wc -l)
RANKS=1  # one GPU (or the CPU): the same modes on one rank, no cross-rank checks
if [ -z "${DEVICE_CHECK_TOY:-}" ] && [ "$GPUS" -ge 2 ]; then RANKS=2; fi
"$PYTHON" -m torch.distributed.run --standalone --nproc-per-node=$RANKS \
    benchmarks/gpu/distributed_step_check.py "${STEP_CHECK[@]}" 2>&1 \
    | tee "$OUT/distributed_step_check.log"
CAPTIONS=()
if [ -f .device_inputs/caption_tokens.pt ]; then CAPTIONS=(--captions .device_inputs/caption_tokens.pt); fi
"$PYTHON" benchmarks/gpu/train_step_mfu.py "${CAPTIONS[@]}" "${MFU[@]}" "$@" 2>&1 \
    | tee "$OUT/train_step_mfu.log"
