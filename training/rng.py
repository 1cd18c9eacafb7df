"""Random state per rank: FLIP removes patches independently per sample, so each rank draws its
own masks, and a resumed run continues every rank's own generators.

All ranks build the model from the run's seed (the same initial weights); then each rank reseeds
its generators from (seed, rank); rank 0 from the run's seed itself. Checkpoints hold every
rank's state, gathered in rank order.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

RANK_SEED_STRIDE = 104_729  # a prime: rank seeds never meet another run's small seeds


def rank_seed(seed: int, rank: int) -> int:
    return seed + RANK_SEED_STRIDE * rank


def seed_rank(seed: int, rank: int) -> None:
    """Seed this process's generators (Python, NumPy, torch CPU and its CUDA device)."""
    value = rank_seed(seed, rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def local_state() -> dict[str, Any]:
    """This process's generators as tensors and plain values only, so a checkpoint holding
    them loads with ``torch.load(weights_only=True)``: no code runs from storage."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),  # (version, tuple of ints, None)
        "numpy": {
            "bit_generator": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        # this rank's own device only: every rank saves and restores its own
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def gather_states() -> list[dict[str, Any]]:
    """Every rank's state, in rank order (a collective: every rank must call it)."""
    state = local_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore(saved: list[dict[str, Any]] | dict[str, Any], rank: int, world_size: int) -> bool:
    """Restore this rank's saved state; False (generators left as seeded) when the checkpoint
    was written by a different number of ranks, so there is no state of this rank to continue."""
    states = saved if isinstance(saved, list) else [saved]  # one-process checkpoints: a dict
    if len(states) != world_size:
        log.warning(
            "checkpoint holds the random state of %d rank(s), this run has %d: each rank "
            "continues from a fresh seed, so the resumed run is not bit-exact",
            len(states),
            world_size,
        )
        return False
    state = states[rank]
    random.setstate(state["python"])
    saved_numpy = state["numpy"]
    np.random.set_state(
        (
            saved_numpy["bit_generator"],
            saved_numpy["keys"].numpy().astype(np.uint32),
            saved_numpy["position"],
            saved_numpy["has_gauss"],
            saved_numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # written by an earlier version: all devices of rank 0
        cuda = cuda[torch.cuda.current_device()] if cuda and torch.cuda.is_available() else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    return True
