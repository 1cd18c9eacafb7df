"""FSDP (fully sharded data parallel, torch's ``fully_shard``) for models too large to hold
whole on every GPU: ViT-H/14 and up.

Every transformer block of both towers is its own shard unit (gathered just before it runs,
freed just after), and the root unit holds the rest: embeddings, projections, final norms. The
temperature (and a SigLIP-style bias, when present) stays a plain, replicated parameter: it is
a scalar, and the trainer clamps it in place after each step. Its gradient is averaged across
ranks by hand, as DDP would.
"""

from __future__ import annotations

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


def shard_model(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place across the default process group; returns it."""
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(model):
        fully_shard(block)
    fully_shard(model, ignored_params=set(replicated_params(model)))
    return model


def average_replicated_grads(model: nn.Module) -> None:
    """All-reduce the gradients FSDP does not manage (it ignores these parameters)."""
    world = dist.get_world_size()
    for param in replicated_params(model):
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world)
