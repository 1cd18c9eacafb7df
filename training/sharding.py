"""FSDP (fully sharded data parallel, torch's ``fully_shard``) for models too large to hold
whole on every GPU: ViT-H/14 and up.

Every transformer block of both towers is its own shard unit (gathered just before it runs,
freed just after), and the root unit holds the rest: embeddings, projections, final norms. The
temperature (and a SigLIP-style bias, when present) stays a plain, replicated parameter: it is
a scalar, and the trainer clamps it in place after each step. Its gradient is averaged across
ranks by hand, as DDP would.

Under bf16 the shards stay fp32 (what the optimizer updates), and each unit is gathered and
computed in bf16 (half the all-gather traffic and memory of fp32) while gradients are reduced
in fp32 (a sum over hundreds of ranks in bf16 would lose the small ones).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

REPLICATED_NAMES = ("logit_scale", "logit_bias")


def replicated_params(model: nn.Module) -> list[nn.Parameter]:
    return [
        getattr(model, n)
        for n in REPLICATED_NAMES
        if isinstance(getattr(model, n, None), nn.Parameter)
    ]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of the image and text towers (open_clip's layout)."""
    towers = [model.visual.transformer, getattr(model, "transformer", None)]
    blocks = [block for tower in towers if tower is not None for block in tower.resblocks]
    if not blocks:
        raise ValueError("fsdp: the model has no transformer blocks to shard")
    return blocks


def shard_model(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """Shard ``model`` in place across the default process group; returns it."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    for block in transformer_blocks(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, ignored_params=set(replicated_params(model)), mp_policy=policy)
    return model


def skip_gradient_sync(train_model: nn.Module) -> contextlib.AbstractContextManager:
    """A context in which backward passes accumulate gradients locally, without the collective
    that reduces them across ranks: for every micro-batch of a step but the last. DDP has
    ``no_sync``; an FSDP model keeps its unsharded gradients (in fp32) until sync is back on."""
    if hasattr(train_model, "no_sync"):
        return train_model.no_sync()
    if hasattr(train_model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(train_model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def average_replicated_grads(model: nn.Module) -> None:
    """All-reduce the gradients FSDP does not manage (it ignores these parameters)."""
    world = dist.get_world_size()
    for param in replicated_params(model):
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world)
