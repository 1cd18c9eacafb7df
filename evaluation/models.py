"""Load a model for evaluation: our checkpoints (``flipcommon.checkpoints``) or an open_clip
model with local weights, always with full images."""

from __future__ import annotations

import json

import fsspec

from flipcommon.checkpoints import (
    OPEN_CLIP_PREFIX,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    register_model_config,
)


def resolve_checkpoint(checkpoint: str, train_run_dir: str) -> str:
    if checkpoint:
        return checkpoint
    latest = latest_checkpoint(train_run_dir)
    if latest is None:
        raise CheckpointError(
            f"no checkpoint given and none in {train_run_dir}/checkpoints (run `make train`, "
            "or set checkpoint=PATH)"
        )
    return latest


def resolve_checkpoints(config) -> list[str]:
    """The checkpoints an evaluation covers, oldest first: an open_clip model with local
    weights, an explicit list, every checkpoint of the training run, or one (``checkpoint``,
    else the run's newest)."""
    if config.open_clip_model:
        if not config.open_clip_weights:
            raise CheckpointError(
                "open_clip_model needs open_clip_weights=PATH: nothing is downloaded from a hub"
            )
        if config.open_clip_config:
            with fsspec.open(config.open_clip_config, "r") as handle:
                cfg = json.load(handle)
            register_model_config(config.open_clip_model, cfg.get("model_cfg", cfg))
        return [f"{OPEN_CLIP_PREFIX}{config.open_clip_model}@{config.open_clip_weights}"]
    if config.checkpoints:
        return list(config.checkpoints)
    if config.every_checkpoint:
        found = list_checkpoints(config.train_run_dir)
        if not found:
            raise CheckpointError(f"no checkpoints in {config.train_run_dir}/checkpoints")
        return found
    return [resolve_checkpoint(config.checkpoint, config.train_run_dir)]
