"""What the benchmark scripts share: a synthetic batch for a model config and a timed step."""

from __future__ import annotations

import time

import torch

from training.loss import contrastive_loss


def random_batch(cfg: dict, batch: int, device: str | torch.device = "cpu"):
    size = cfg["vision_cfg"]["image_size"]
    images = torch.randn(batch, 3, size, size, device=device)
    tokens = torch.randint(1, 49407, (batch, cfg["text_cfg"]["context_length"]), device=device)
    return images, tokens


def seconds_per_step(model, optimizer, images, tokens, steps: int) -> float:
    """Mean wall time of ``steps`` full training steps (forward, loss, backward, update)."""
    start = time.perf_counter()
    for _ in range(steps):
        image_features, text_features, _ = model(images, tokens)
        loss = contrastive_loss(image_features, text_features, model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if images.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps
