"""One optimisation step's forward and backward, with optional gradient accumulation that keeps
the full contrastive batch.

Accumulation computes the whole batch's loss once per step (gradient caching): first embed
every micro-batch without gradients and cache the features; then compute the loss over the
whole batch from the cached features and back-propagate it to them alone (each feature's
gradient, and the temperature's); then, micro-batch by micro-batch, re-embed it with gradients
and back-propagate its features' cached gradients into the towers. The summed gradients equal
those of one pass over the whole batch. The RNG state of each micro-batch's first pass is
replayed in its second, so the same patches are removed both times. Re-computing the loss with
each micro-batch spliced in (as open_clip's accum-freq does) would build the local × global
logits and gather the features across ranks once per micro-batch instead of once per step.

Views: with ``views`` > 1 each pair is seen as that many images, each with its own random
patches removed (the batch is repeated before the forward, so DDP and FSDP see one ordinary
forward); the loss is the mean of each view's contrastive loss over the whole batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from training.loss import contrastive_loss
from training.sharding import gathered_for_the_step, skip_gradient_sync
from training.text_lengths import told_caption_lengths


def _features(
    train_model: nn.Module,
    model: nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    lengths: list[int] | None,
):
    with told_caption_lengths(model, lengths):
        image_features, text_features, _ = train_model(images, tokens)
    return image_features.float(), text_features.float()


def _repeat(images: torch.Tensor, tokens: torch.Tensor, lengths: list[int] | None, views: int):
    if views == 1:
        return images, tokens, lengths
    return (
        images.repeat(views, 1, 1, 1),
        tokens.repeat(views, 1),
        None if lengths is None else lengths * views,
    )


def _chunks(lengths: list[int] | None, parts: int) -> list[list[int] | None]:
    """``lengths`` cut as ``Tensor.chunk`` cuts the batch (into equal parts: checked before)."""
    if lengths is None:
        return [None] * parts
    size = len(lengths) // parts
    return [lengths[i * size : (i + 1) * size] for i in range(parts)]


def _views_loss(
    image_chunks: list[torch.Tensor],
    text_chunks: list[torch.Tensor],
    logit_scale: torch.Tensor,
    views: int,
) -> torch.Tensor:
    """Mean over views of the contrastive loss of the whole batch: each chunk's features hold
    its views one after the other; view v of every chunk is put together before the loss."""
    if views == 1:
        images, texts = (c[0] if len(c) == 1 else torch.cat(c) for c in (image_chunks, text_chunks))
        return contrastive_loss(images, texts, logit_scale)
    losses = []
    for v in range(views):
        images = torch.cat([c.chunk(views)[v] for c in image_chunks])
        texts = torch.cat([c.chunk(views)[v] for c in text_chunks])
        losses.append(contrastive_loss(images, texts, logit_scale))
    return torch.stack(losses).mean()


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def forward_backward(
    train_model: nn.Module,
    model: nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    accum_steps: int = 1,
    views: int = 1,
    lengths: list[int] | None = None,
) -> torch.Tensor:
    """Compute the loss of the batch and accumulate its gradients; returns the loss (detached).

    ``train_model`` may be a DDP wrapper of ``model``, or ``model`` sharded; the temperature
    is read from ``model`` (open_clip's forward returns it already exponentiated).
    ``lengths``: the captions' ``caption_lengths``, read on the host (no device sync).
    """
    if accum_steps <= 1:
        with autocast():
            image_features, text_features = _features(
                train_model, model, *_repeat(images, tokens, lengths, views)
            )
            loss = _views_loss([image_features], [text_features], model.logit_scale, views)
        loss.backward()
        return loss.detach()

    if images.shape[0] % accum_steps:
        raise ValueError(f"batch {images.shape[0]} must divide into {accum_steps} micro-batches")
    image_chunks, token_chunks = images.chunk(accum_steps), tokens.chunk(accum_steps)
    length_chunks = _chunks(lengths, accum_steps)
    with gathered_for_the_step(model) as last_backward:  # FSDP: gathered once per step
        return _accumulate(
            train_model,
            model,
            image_chunks,
            token_chunks,
            length_chunks,
            autocast,
            views,
            last_backward,
        )


def _accumulate(
    train_model: nn.Module,
    model: nn.Module,
    image_chunks: tuple[torch.Tensor, ...],
    token_chunks: tuple[torch.Tensor, ...],
    length_chunks: list[list[int] | None],
    autocast: Callable[[], contextlib.AbstractContextManager],
    views: int,
    last_backward: Callable[[], None],
) -> torch.Tensor:
    """The micro-batches' passes of ``forward_backward`` (see the module docstring)."""
    accum_steps, device = len(image_chunks), image_chunks[0].device
    rng_states, cached_images, cached_texts = [], [], []
    with torch.no_grad():
        for micro_images, micro_tokens, micro_lengths in zip(
            image_chunks, token_chunks, length_chunks, strict=True
        ):
            rng_states.append(_rng_state(device))
            with autocast():
                image_features, text_features = _features(
                    train_model, model, *_repeat(micro_images, micro_tokens, micro_lengths, views)
                )
            cached_images.append(image_features)
            cached_texts.append(text_features)
    after_first_pass = _rng_state(device)
    # the whole batch's loss, once, on the cached features: its gradient w.r.t. each of them
    # and the temperature (no tower is in this graph)
    image_leaves = [f.detach().requires_grad_() for f in cached_images]
    text_leaves = [f.detach().requires_grad_() for f in cached_texts]
    scale_leaf = model.logit_scale.detach().requires_grad_()
    with autocast():
        loss = _views_loss(image_leaves, text_leaves, scale_leaf, views)
    loss.backward()
    for j in range(accum_steps):
        _set_rng_state(rng_states[j], device)
        last = j == accum_steps - 1
        with contextlib.nullcontext() if last else skip_gradient_sync(train_model):
            with autocast():
                image_features, text_features = _features(
                    train_model,
                    model,
                    *_repeat(image_chunks[j], token_chunks[j], length_chunks[j], views),
                )
            outputs = [image_features, text_features]
            grads = [image_leaves[j].grad, text_leaves[j].grad]
            if last:  # the temperature's gradient joins the step's synchronised backward
                outputs.append(model.logit_scale)
                grads.append(scale_leaf.grad.to(model.logit_scale.dtype))
                last_backward()
            torch.autograd.backward(outputs, grads)
    _set_rng_state(after_first_pass, device)
    return loss.detach()
