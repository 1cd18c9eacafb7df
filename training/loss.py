"""Symmetric InfoNCE over the global batch, with features gathered across ranks.

Each rank computes the loss of its own rows against all columns (local loss) and gathers the
other ranks' features with gradient; summed over ranks this gives the same loss and gradients as
one process over the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features), dim=0)


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Loss for this rank's rows; features are L2-normalised, ``logit_scale`` is log(1/T).

    Always in fp32, autocast or not: at a temperature of 1/100, bf16 logits (8 bits of
    mantissa) would be off by up to ~0.4, a large error in a softmax over the whole batch.
    """
    with torch.autocast(image_features.device.type, enabled=False):
        image_features, text_features = image_features.float(), text_features.float()
        all_images = gather_with_grad(image_features)
        all_texts = gather_with_grad(text_features)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        n = image_features.shape[0]
        labels = torch.arange(n, device=image_features.device) + rank * n
        scale = logit_scale.float().exp()
        logits_per_image = scale * image_features @ all_texts.T
        logits_per_text = scale * text_features @ all_images.T
        return (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
        ) / 2


@torch.no_grad()
def clamp_logit_scale(logit_scale: torch.Tensor) -> None:
    logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
