"""``python -m training CONFIG [key=value ...]``: train a FLIP model from a shard set."""

from __future__ import annotations

import argparse
import logging

from flipcommon.config import load_config
from training.config import TrainConfig

HELP = """\
Train a CLIP model the FLIP way: random removal of a share of image patches (phase
mask_ratio 0.5 or 0.75) during pre-training, then a short unmasked-tuning phase (mask_ratio 0).

Reads a shard set (data.shards: a folder with sizes.json, any fsspec URL). Writes into run_dir:
checkpoints/step_XXXXXXXX/ (open_clip_config.json + open_clip_model.safetensors, loadable by
open_clip, and train_state.pt), checkpoints/LATEST, tensorboard/, metrics.jsonl,
training_curves.png.

Scale out: torchrun --nnodes N --nproc-per-node G -m training CONFIG (DDP; the contrastive loss
gathers features across all ranks; batch_size is the global batch).

Examples:
  python -m training configs/train/flip_tiny.yaml
  python -m training configs/train/vit_b16.yaml data.shards=s3://bucket/shards resume=true
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config (see configs/train/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. batch_size=64")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's LATEST checkpoint"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = load_config(TrainConfig, args.config, args.overrides)
    if args.resume:
        config.resume = True

    from training.trainer import train

    train(config)


if __name__ == "__main__":  # DataLoader workers spawn processes: keep the entry point guarded
    main()
