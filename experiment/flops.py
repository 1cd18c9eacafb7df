"""Compute per training sample by mask ratio and image size, counted (not estimated) on the real
model."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.loss import contrastive_loss
from training.masking import set_mask_ratio
from training.model import build_model
from training.resolution import enable_any_resolution

# how an image is fed: (mask ratio, image size in pixels; 0 = the model's own size)
Setting = tuple[float, int]


def train_flops_per_sample(
    model_name: str, variant: str, settings: list[Setting], batch: int = 4, device: str = "cpu"
) -> dict[Setting, dict[str, float]]:
    """FLOPs of one training sample's forward and backward pass, image tower and whole model,
    for each (mask ratio, image size). Counted by torch's FLOP counter (matrix products and
    attention, which are nearly all of a ViT's compute) on a batch of random inputs."""
    torch.manual_seed(0)
    model, cfg, _ = build_model(model_name, variant)
    model.to(device).train()
    if any(size for _, size in settings):
        enable_any_resolution(model)
    tokens = torch.randint(1, 49407, (batch, cfg["text_cfg"]["context_length"]), device=device)
    counts = {}
    for ratio, size in settings:
        side = size or cfg["vision_cfg"]["image_size"]
        images = torch.randn(batch, 3, side, side, device=device)
        set_mask_ratio(model, ratio)
        counter = FlopCounterMode(display=False)
        with counter:
            image_features, text_features, scale = model(images, tokens)
            contrastive_loss(image_features, text_features, scale).backward()
        model.zero_grad(set_to_none=True)
        by_module = counter.get_flop_counts()
        # the image tower's module path: "<model class>.visual"
        image = sum(
            sum(v.values())
            for k, v in by_module.items()
            if k.count(".") == 1 and k.endswith(".visual")
        )
        counts[(ratio, size)] = {"image": image / batch, "total": counter.get_total_flops() / batch}
    return counts
