"""``python -m training CONFIG [key=value ...]``: train a FLIP model from a shard set."""

from __future__ import annotations

import argparse
import logging
import math

from flipcommon.cli import run_stage, stage_parser
from training.config import TrainConfig

log = logging.getLogger("training")

HELP = """\
Train a CLIP model the FLIP way: random removal of a share of image patches (phase
mask_ratio 0.5 or 0.75) during pre-training, then a short unmasked-tuning phase (mask_ratio 0).

Reads a shard set (data.shards: a folder with sizes.json, any fsspec URL). Writes into run_dir:
checkpoints/step_XXXXXXXX/ (open_clip_config.json + open_clip_model.safetensors, loadable by
open_clip, and train_state.pt), checkpoints/LATEST, tensorboard/, metrics.jsonl,
training_curves.png; with wandb.enabled=true also wandb/ (an offline W&B run: upload it with
`wandb sync`; wandb.mode=online logs live). For a remote run_dir the TensorBoard events are
copied there every tensorboard_sync_s seconds (30) and at every checkpoint.

Scale out: torchrun --nnodes N --nproc-per-node G -m training CONFIG (DDP; the contrastive loss
gathers features across all ranks; batch_size is the global batch, micro_batch what one process
runs per forward pass: each step accumulates batch_size / (processes x micro_batch) of them, so
one config runs on 8 or 256 GPUs unchanged; a phase may set its own). parallelism=fsdp shards
weights, gradients and optimizer state across ranks (ViT-H/14 and larger). A phase with
seconds=S instead of samples runs for S seconds of training time (equal-compute comparisons).

Memory: --plan prints what the config needs per GPU, by part (parameters, gradients, optimizer
state under DDP or FSDP at --world-size ranks; activations at each phase's mask ratio; the
loss's logits), the largest micro-batch that fits a --gpu-gib GPU, and the loader's shared and
pinned memory per node; it trains nothing.

Preemption: on SIGTERM (a scheduler's time limit, eviction, spot reclaim) the run finishes its
step, writes a checkpoint and exits with status 75; rerun with resume=true to continue.

Examples:
  python -m training configs/train/flip_tiny.yaml
  python -m training configs/train/vit_b16.yaml data.shards=s3://bucket/shards resume=true
  python -m training configs/train/vit_h14.yaml --plan --world-size 64 --gpu-gib 80
"""


def _run(config: TrainConfig, args) -> None:
    if args.plan:
        from training.memory_plan import render

        print(render(config, args.world_size, args.gpu_gib, args.ranks_per_node))
        return
    from training.preemption import PREEMPTED_EXIT, Preempted
    from training.trainer import train

    if args.resume:
        config.resume = True
    try:
        train(config)
    except Preempted as stop:
        log.warning("%s: rerun with resume=true to continue", stop)
        raise SystemExit(PREEMPTED_EXIT) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _gpu_gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU memory size in GiB (> 0)")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("python -m training", HELP, "batch_size=64")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's LATEST checkpoint"
    )
    planning = parser.add_argument_group("memory plan (--plan: print it, train nothing)")
    planning.add_argument("--plan", action="store_true", help="print memory per GPU and exit")
    planning.add_argument("--world-size", type=_positive_int, default=8, help="ranks (8)")
    planning.add_argument("--gpu-gib", type=_gpu_gib, default=80.0, help="GPU memory, GiB (80)")
    planning.add_argument(
        "--ranks-per-node", type=_positive_int, default=8, help="ranks per node (8)"
    )
    from flipcommon.checkpoints import CheckpointError
    from training.batching import BatchSplitError

    user_errors = (CheckpointError, FileNotFoundError, BatchSplitError)
    run_stage(parser, TrainConfig, _run, argv, user_errors=user_errors)


if __name__ == "__main__":  # DataLoader workers spawn processes: keep the entry point guarded
    main()
