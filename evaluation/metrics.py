"""Metrics as pure functions of features and labels (CLIP_benchmark's definitions)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def class_embeddings(per_class_prompt_features: list[torch.Tensor]) -> torch.Tensor:
    """Normalise each prompt's embedding, average over prompts, renormalise: [classes, dim]."""
    rows = [
        F.normalize(F.normalize(f, dim=-1).mean(dim=0), dim=-1) for f in per_class_prompt_features
    ]
    return torch.stack(rows)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1, top-5 (when there are at least 5 classes) and mean per-class recall."""
    num_classes = logits.shape[1]
    pred = logits.argmax(dim=1)
    metrics = {"top1": (pred == labels).float().mean().item()}
    if num_classes >= 5:
        top5 = logits.topk(5, dim=1).indices
        metrics["top5"] = (top5 == labels[:, None]).any(dim=1).float().mean().item()
    recalls = [
        (pred[labels == c] == c).float().mean().item()
        for c in range(num_classes)
        if (labels == c).any()
    ]
    metrics["mean_per_class_recall"] = float(np.mean(recalls))
    return metrics


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    caption_image: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k both ways; a caption belongs to exactly one image, an image may have several.

    image→text: a hit when any of the image's captions is in the top k;
    text→image: a hit when the caption's image is in the top k.
    """
    scores = text_features @ image_features.T  # [texts, images]
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(caption_image)), caption_image] = True
    metrics = {}
    for k in ks:
        k_img = min(k, scores.shape[1])
        top_images = scores.topk(k_img, dim=1).indices
        metrics[f"image_retrieval_recall@{k}"] = (
            positives.gather(1, top_images).any(dim=1).float().mean().item()
        )
        k_txt = min(k, scores.shape[0])
        top_texts = scores.T.topk(k_txt, dim=1).indices
        metrics[f"text_retrieval_recall@{k}"] = (
            positives.T.gather(1, top_texts).any(dim=1).float().mean().item()
        )
    return metrics


def chance_level(
    task: str, metric: str, num_classes: int = 0, num_images: int = 0, num_texts: int = 0
) -> float:
    """The expected value of ``metric`` for a model that ranks at random."""
    if task == "zeroshot_classification":
        k = 5 if metric == "top5" else 1
        return min(1.0, k / num_classes)
    k = int(metric.rsplit("@", 1)[1])
    if metric.startswith("image_retrieval"):  # text → image: one right image among num_images
        return min(1.0, k / num_images)
    captions_per_image = num_texts / num_images  # image → text: any of its captions in top k
    return (
        1.0 - math.comb(num_texts - int(captions_per_image), k) / math.comb(num_texts, k)
        if num_texts > k
        else 1.0
    )


def beats_chance(value: float, chance: float, n: int, z: float = 3.0) -> bool:
    """True when ``value`` exceeds chance by more than ``z`` binomial standard errors."""
    if chance >= 1.0:
        return False
    se = math.sqrt(chance * (1 - chance) / max(1, n))
    return value > chance + z * se
