"""Load a model for evaluation: our checkpoints (DESIGN contract), always with full images."""

from __future__ import annotations

import json

import fsspec
import open_clip
from torch import nn

from training import checkpoint as ckpt
from training.model import register


def resolve_checkpoint(checkpoint: str, train_run_dir: str) -> str:
    if checkpoint:
        return checkpoint
    latest = ckpt.latest_checkpoint(train_run_dir)
    if latest is None:
        raise ckpt.CheckpointError(
            f"no checkpoint given and none in {train_run_dir}/checkpoints (run `make train`, "
            "or set checkpoint=PATH)"
        )
    return latest


OPEN_CLIP_PREFIX = "open_clip:"


def resolve_checkpoints(config) -> list[str]:
    """The checkpoints an evaluation covers, oldest first: an open_clip model with local
    weights, an explicit list, every checkpoint of the training run, or one (``checkpoint``,
    else the run's newest)."""
    if config.open_clip_model:
        if not config.open_clip_weights:
            raise ckpt.CheckpointError(
                "open_clip_model needs open_clip_weights=PATH: nothing is downloaded from a hub"
            )
        if config.open_clip_config:
            with fsspec.open(config.open_clip_config, "r") as handle:
                cfg = json.load(handle)
            register(config.open_clip_model, cfg.get("model_cfg", cfg))
        return [f"{OPEN_CLIP_PREFIX}{config.open_clip_model}@{config.open_clip_weights}"]
    if config.checkpoints:
        return list(config.checkpoints)
    if config.every_checkpoint:
        found = ckpt.list_checkpoints(config.train_run_dir)
        if not found:
            raise ckpt.CheckpointError(f"no checkpoints in {config.train_run_dir}/checkpoints")
        return found
    return [resolve_checkpoint(config.checkpoint, config.train_run_dir)]


def load_open_clip(spec: str):
    """``open_clip:NAME@WEIGHTS``: open_clip builds the model and loads the weights itself."""
    name, _, weights = spec.removeprefix(OPEN_CLIP_PREFIX).partition("@")
    if open_clip.get_model_config(name) is None:
        raise ckpt.CheckpointError(
            f"open_clip knows no model {name!r}: give open_clip_config=JSON for a custom one"
        )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights)
    except RuntimeError as exc:  # weights of another shape
        raise ckpt.CheckpointError(f"{weights} does not fit open_clip model {name}: {exc}") from exc
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name), {"flip": {"model_name": name}}


def load_checkpoint(ckpt_dir: str):
    """Return (model in eval mode, preprocess transform, tokenizer, config)."""
    if ckpt_dir.startswith(OPEN_CLIP_PREFIX):
        return load_open_clip(ckpt_dir)
    config = ckpt.read_config(ckpt_dir)
    name = "eval-" + ckpt_dir.rstrip("/").replace("/", "_").replace(":", "_")
    register(name, config["model_cfg"])
    model: nn.Module = open_clip.create_model(name, pretrained=None)
    ckpt.load_weights_into(model, ckpt.read_weights(ckpt_dir), ckpt_dir)
    model.eval()
    pp = config.get("preprocess_cfg") or open_clip.get_model_preprocess_cfg(model)
    preprocess = open_clip.image_transform(
        pp["size"],
        is_train=False,
        mean=pp.get("mean"),
        std=pp.get("std"),
        interpolation=pp.get("interpolation", "bicubic"),
        resize_mode=pp.get("resize_mode", "shortest"),
    )
    return model, preprocess, open_clip.get_tokenizer(name), config
