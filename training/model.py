"""Build FLIP models through open_clip from JSON shape configs in ``model_configs/``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import open_clip
from torch import nn

from flipcommon.checkpoints import register_model_config
from flipcommon.errors import UserError
from training.masking import PatchRemoval

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


def model_cfg(name: str, variant: str = "openclip") -> dict:
    """The open_clip model config for ``name``, adjusted for the chosen variant."""
    path = MODEL_CONFIG_DIR / f"{name}.json"
    if path.exists():
        cfg = json.loads(path.read_text())
    else:
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
            raise UserError(f"unknown model {name!r}; ours: {known}, or an open_clip model name")
    cfg = copy.deepcopy(cfg)
    if variant == "paper":
        # FLIP paper (Table 9 / App. A): global average pooling, 32 text tokens.
        cfg["vision_cfg"]["pool_type"] = "avg"
        cfg["text_cfg"]["context_length"] = 32
    elif variant != "openclip":
        raise UserError(f"model variant must be 'openclip' or 'paper', got {variant!r}")
    cfg["vision_cfg"].pop("patch_dropout", None)  # masking is ours, set per phase
    return cfg


def registered_name(name: str, variant: str) -> str:
    return f"{name}-{variant}"


def build_model(name: str, variant: str = "openclip") -> tuple[nn.Module, dict, str]:
    cfg = model_cfg(name, variant)
    reg_name = registered_name(name, variant)
    register_model_config(reg_name, cfg)
    model = open_clip.create_model(reg_name, pretrained=None)
    model.visual.patch_dropout = PatchRemoval()
    return model, cfg, reg_name


def preprocess_cfg(model: nn.Module) -> dict:
    return dict(open_clip.get_model_preprocess_cfg(model))
