"""How a global contrastive batch is split: across processes, then into micro-batches.

Configs state the global batch (the contrastive batch the loss sees) and the micro-batch one
process can hold in a forward pass; how many micro-batches each step accumulates follows from
the world size at start, so one config runs on 8 or 256 GPUs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from flipcommon.errors import UserError


class BatchSplitError(UserError, ValueError):
    """A batch that cannot be split evenly: a config mistake, said before any model is built."""


@dataclass(frozen=True)
class BatchSplit:
    local_batch: int  # per process, per step
    micro_batch: int  # per process, per forward pass
    accum_steps: int  # micro-batches per step


def split_batch(global_batch: int, world_size: int, micro_batch: int = 0) -> BatchSplit:
    """``micro_batch`` 0 (or at least the local batch): one pass over the whole local batch."""
    if global_batch % world_size:
        raise BatchSplitError(
            f"batch_size {global_batch} does not divide among {world_size} processes"
        )
    local = global_batch // world_size
    if micro_batch <= 0 or micro_batch >= local:
        return BatchSplit(local, local, 1)
    if local % micro_batch:
        raise BatchSplitError(
            f"the batch per process, {local} (batch_size {global_batch} / {world_size} "
            f"processes), does not split into micro-batches of {micro_batch}: choose a "
            "micro_batch that divides it"
        )
    return BatchSplit(local, micro_batch, local // micro_batch)
