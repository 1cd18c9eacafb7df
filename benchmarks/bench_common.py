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


def seconds_per_step(model, optimizer, images, tokens, steps: int, loss_fn=None) -> float:
    """Mean wall time of ``steps`` full training steps (forward, loss, backward, update).

    ``loss_fn(image_features, text_features, exp_scale)``: default, ours."""
    start = time.perf_counter()
    for _ in range(steps):
        image_features, text_features, scale = model(images, tokens)
        if loss_fn is None:
            loss = contrastive_loss(image_features, text_features, model.logit_scale)
        else:
            loss = loss_fn(image_features, text_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if images.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def demo_caption_tokens(tokenizer) -> torch.Tensor:
    """Token rows of the demo corpus's training captions (OpenClipart titles, keywords and
    descriptions; emoji names): real caption lengths (11.5 tokens on average, 0.1% cut at the
    77-token context), made from installed packages only. Takes ~15 s (parses the SVGs)."""
    from pipeline.demo.corpus import plan_tasks

    return tokenizer([task.caption for task in plan_tasks(0) if task.split == "train"])


def sample_rows(rows: torch.Tensor, batch: int, seed: int = 0) -> torch.Tensor:
    """``batch`` rows drawn at random (with replacement once ``batch`` exceeds the rows)."""
    generator = torch.Generator().manual_seed(seed)
    if batch <= len(rows):
        return rows[torch.randperm(len(rows), generator=generator)[:batch]]
    return rows[torch.randint(len(rows), (batch,), generator=generator)]


def open_clip_optimizer(model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW as open_clip's trainer builds it: no decay on gains, biases and the temperature."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def exclude(n: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    return torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2},
        ],
        lr=1e-5,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
