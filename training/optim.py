"""AdamW with FLIP's weight-decay exclusions, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from training.sharding import replicated_params

NO_DECAY_NAMES = ("positional_embedding", "class_embedding", "logit_scale", "logit_bias")


def decays(name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to weight matrices only: not biases, norms, position embeddings,
    or the temperature."""
    return param.ndim >= 2 and not any(n in name for n in NO_DECAY_NAMES)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    allow_fused: bool = True,
) -> torch.optim.AdamW:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # The temperature (and bias) in a group of their own: under FSDP they are the only plain
    # tensors among sharded ones, and the multi-tensor and fused kernels batch a group's
    # tensors together. Checkpoints key optimizer state by name, so any grouping resumes.
    replicated = {id(p) for p in replicated_params(model)}
    sharded = [(n, p) for n, p in named if id(p) not in replicated]
    groups = [
        {"params": [p for n, p in sharded if decays(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in sharded if not decays(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if id(p) in replicated], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [group for group in groups if group["params"]],
        lr=lr,
        betas=betas,
        eps=1e-8,
        fused=(allow_fused and fusable(named)) or None,
    )


def fusable(named: list[tuple[str, nn.Parameter]]) -> bool:
    """Whether AdamW's fused kernel can update these parameters: floating tensors on the CPU or
    a GPU, sharded (FSDP's DTensors) or not. It is one pass over each tensor instead of the
    multi-tensor path's several (3.5x faster for ViT-B/16's update on the CPU,
    docs/benchmarks.md)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for _, p in named)


def scaled_lr(base_lr: float, global_batch: int) -> float:
    return base_lr * global_batch / 256


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Linear warmup to ``peak_lr``, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * peak_lr * (1.0 + math.cos(math.pi * progress))


def lr_at_time(elapsed_s: float, total_s: float, warmup_s: float, peak_lr: float) -> float:
    """The same schedule on a clock: linear warmup over ``warmup_s``, cosine decay to 0 at
    ``total_s``."""
    if warmup_s > 0 and elapsed_s < warmup_s:
        return peak_lr * elapsed_s / warmup_s
    progress = min(1.0, (elapsed_s - warmup_s) / max(total_s - warmup_s, 1e-9))
    return 0.5 * peak_lr * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
