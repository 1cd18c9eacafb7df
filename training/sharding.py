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

A step of several micro-batches runs every unit 3 times per micro-batch (the features' pass
without gradients, then forward and backward with them): gathered afresh each time, that is
3 × micro-batches all-gathers of the whole model per step. Within such a step the units stay
gathered instead (``gathered_for_the_step``): one all-gather of the model per step, for the
memory of the whole model in the gathered dtype (ViT-H/14 in bf16: ~2 GB).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered_for_the_step(model: nn.Module) -> Iterator[Callable[[], None]]:
    """Within the context, an FSDP model's units stay gathered after each forward and backward
    (no re-gather for the next pass of the step); the context yields ``last_backward``, to be
    called before the step's last backward so that it reshards the units as it reduces their
    gradients. No effect on a model that is not sharded."""
    units = _fsdp_units(model)
    if not units:
        yield lambda: None
        return
    # each unit's own setting, restored after: a block reshards after its forward, the root
    # (whose parameters the backward needs at once) does not (torch sets the root's at its
    # first forward, which may be this step's)
    after_forward = {unit: unit is not model and _reshards_after_forward(unit) for unit in units}
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.set_reshard_after_backward(False, recurse=False)

    def last_backward() -> None:
        for unit in units:
            unit.set_reshard_after_backward(True, recurse=False)

    try:
        yield last_backward
    except BaseException:
        # a pass stopped half-way: torch's own recovery reshards every unit and drops the
        # step's trackers (a unit still in its forward would not reshard by itself)
        model.reset_iter_state()
        raise
    finally:
        for unit in units:
            unit.set_reshard_after_forward(after_forward[unit], recurse=False)
            unit.set_reshard_after_backward(True, recurse=False)


def _reshards_after_forward(unit: nn.Module) -> bool:
    """Whether the FSDP unit frees its gathered parameters after its forward (torch keeps the
    setting per parameter group as the mesh it reshards to, None for none)."""
    groups = unit._get_fsdp_state()._fsdp_param_groups
    return any(group.post_forward_mesh_info is not None for group in groups)


def average_replicated_grads(model: nn.Module) -> None:
    """All-reduce the gradients FSDP does not manage (it ignores these parameters)."""
    world = dist.get_world_size()
    for param in replicated_params(model):
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world)
