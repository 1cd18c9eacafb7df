"""The checkpoint contract, read side: a checkpoint's file names and the readers every stage
uses (training resumes, evaluation and the pipeline's CLIP-score filter load models).

``{run_dir}/checkpoints/step_XXXXXXXX/`` holds, in open_clip's hub layout:
  - ``open_clip_config.json``  ``model_cfg`` + ``preprocess_cfg`` (+ our ``flip`` info)
  - ``open_clip_model.safetensors``  the weights: loadable by open_clip without pickle
  - ``train_state.pt``  training runs only: optimizer, step, phase, samples seen, RNG states
``{run_dir}/checkpoints/LATEST`` names the newest complete one; it is written last, so a
checkpoint that a crash cut short is never picked up. Writing is the trainer's
(``training.checkpoint``).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import open_clip
import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from flipcommon.errors import UserError
from flipcommon.storage import url_join

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
STATE_FILE = "train_state.pt"
LATEST_FILE = "LATEST"
CHECKPOINT_NAME = re.compile(r"step_\d{8,}")
# A model spec naming an open_clip model with local weights instead of a checkpoint folder
OPEN_CLIP_PREFIX = "open_clip:"


class CheckpointError(UserError, ValueError):
    pass


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def latest_checkpoint(run_dir: str) -> str | None:
    """URL of the newest complete checkpoint of a run, or None."""
    latest = url_join(run_dir, "checkpoints", LATEST_FILE)
    fs, path = fsspec.core.url_to_fs(latest)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        name = handle.read().strip()
    if not CHECKPOINT_NAME.fullmatch(name):  # joined into a path: never "../elsewhere"
        raise CheckpointError(f"{latest} names {ascii(name)[:80]}, not a checkpoint (step_N)")
    return url_join(run_dir, "checkpoints", name)


def list_checkpoints(run_dir: str) -> list[str]:
    """URLs of a run's complete checkpoints, oldest first (none newer than LATEST: a newer
    folder is one a crash cut short)."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return []
    fs, root = fsspec.core.url_to_fs(url_join(run_dir, "checkpoints"))
    newest = latest.rstrip("/").rsplit("/", 1)[1]
    names = sorted(
        p.rstrip("/").rsplit("/", 1)[1] for p in fs.glob(f"{root}/step_*") if fs.isdir(p)
    )
    return [url_join(run_dir, "checkpoints", n) for n in names if n <= newest]


def read_config(ckpt_dir: str) -> dict[str, Any]:
    url = url_join(ckpt_dir, CONFIG_FILE)
    try:
        with fsspec.open(url, "r") as handle:
            config = json.load(handle)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{ckpt_dir} is not a checkpoint: {CONFIG_FILE} missing") from exc
    if "model_cfg" not in config:
        raise CheckpointError(f"{url} lacks 'model_cfg'")
    return config


def read_weights(ckpt_dir: str) -> dict[str, torch.Tensor]:
    url = url_join(ckpt_dir, WEIGHTS_FILE)
    try:
        with fsspec.open(url, "rb") as handle:
            return load_safetensors(handle.read())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{ckpt_dir} is not a checkpoint: {WEIGHTS_FILE} missing") from exc


def load_weights_into(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load strictly: a checkpoint that does not match its config is an error, never a partial
    load."""
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{where}: weights do not match the model config: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{where}: weights do not match the model config "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


_REGISTRY_DIR: Path | None = None


def register_model_config(name: str, cfg: dict) -> None:
    """Make ``name`` known to open_clip's registry through its public ``add_model_config``.

    open_clip re-reads every registered path on each call, so the file must outlive the call:
    it lives in one temporary folder per process.
    """
    global _REGISTRY_DIR
    if _REGISTRY_DIR is None:
        _REGISTRY_DIR = Path(tempfile.mkdtemp(prefix="flip-model-configs-"))
    path = _REGISTRY_DIR / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)


def load_open_clip(spec: str):
    """``open_clip:NAME@WEIGHTS``: open_clip builds the model and loads the weights itself."""
    name, _, weights = spec.removeprefix(OPEN_CLIP_PREFIX).partition("@")
    if not weights:  # open_clip would build the model with random weights
        raise CheckpointError(f"{spec}: give local weights, open_clip:{name}@/path/to/file")
    if open_clip.get_model_config(name) is None:
        raise CheckpointError(
            f"open_clip knows no model {name!r}: give open_clip_config=JSON for a custom one"
        )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights)
    except RuntimeError as exc:  # weights of another shape
        raise CheckpointError(f"{weights} does not fit open_clip model {name}: {exc}") from exc
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name), {"flip": {"model_name": name}}


def load_model(spec: str):
    """(open_clip model in eval mode, its eval transform, tokenizer, config) of a checkpoint
    folder, or of ``open_clip:NAME@WEIGHTS``."""
    if spec.startswith(OPEN_CLIP_PREFIX):
        return load_open_clip(spec)
    ckpt_dir = spec
    config = read_config(ckpt_dir)
    name = "ckpt-" + ckpt_dir.rstrip("/").replace("/", "_").replace(":", "_")
    register_model_config(name, config["model_cfg"])
    model: nn.Module = open_clip.create_model(name, pretrained=None)
    load_weights_into(model, read_weights(ckpt_dir), ckpt_dir)
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
