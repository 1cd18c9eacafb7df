"""torch.distributed set-up from torchrun's environment (any number of nodes)."""

from __future__ import annotations

import datetime
import glob
import itertools
import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from flipcommon.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# Waits on storage (the other ranks waiting while rank 0 writes or reads a checkpoint) go
# through the process group's key-value store with a timeout of their own, so the training
# collectives' timeout can be a few minutes: a dead or hung rank then stops the run in minutes,
# not an hour. The store (torchrun's TCP store) needs no second communicator: no extra NCCL
# memory, no gloo mesh of sockets that must find a network interface of its own.
_storage_timeout = datetime.timedelta(hours=1)
_storage_waits = itertools.count()


def init_distributed(
    device_kind: str, timeout_s: float = 600.0, storage_timeout_s: float = 3600.0
) -> Dist:
    """Join torchrun's process group. ``timeout_s`` bounds every training collective (a step
    waiting on a rank that died or hangs); ``storage_timeout_s`` the waits on storage
    (``barrier(storage=True)``, ``share_from_main``): long enough for rank 0 to write or read
    a ViT-H/14 checkpoint (~16 GB) on slow storage while the others wait."""
    global _storage_timeout
    _storage_timeout = datetime.timedelta(seconds=storage_timeout_s)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = datetime.timedelta(seconds=timeout_s)
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
        # device_id binds the group to this rank's GPU at once (no guessing at first use)
        device = torch.device("cuda", local_rank)
        dist.init_process_group(backend="nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group(backend="gloo", timeout=timeout)
    return Dist(dist.get_rank(), world_size, local_rank)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier(storage: bool = False) -> None:
    """All ranks meet here. ``storage``: some rank may still be writing or reading storage
    (a checkpoint), so the wait may take up to the storage timeout. Every rank must make the
    same sequence of storage waits (the keys are numbered)."""
    if not _distributed():
        return
    if not storage:
        dist.barrier()
        return
    store = dist.distributed_c10d._get_default_store()
    key = f"flip/storage-wait/{next(_storage_waits)}"
    if store.add(key, 1) == dist.get_world_size():
        store.set(f"{key}/all", b"1")
    store.wait([f"{key}/all"], _storage_timeout)


def share_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank, while the others may wait on rank 0's storage (its
    reading a checkpoint): through the store, under the storage timeout. Small values only
    (the store holds it); every rank must call it in the same order."""
    if not _distributed():
        return value
    store = dist.distributed_c10d._get_default_store()
    key = f"flip/storage-share/{next(_storage_waits)}"
    if dist.get_rank() == 0:
        store.set(key, pickle.dumps(value))
        return value
    store.wait([key], _storage_timeout)
    return pickle.loads(store.get(key))  # noqa: S301 - written by rank 0 of this job


def close_distributed() -> None:
    """Leave the process group (torch warns, and NCCL may leak, when a process exits in it)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class CudaUnusable(UserError):
    pass


def nvidia_devices(dev: str = "/dev") -> list[str]:
    """The NVIDIA GPU device nodes this machine (or container) exposes."""
    return sorted(glob.glob(os.path.join(dev, "nvidia[0-9]*")))


def resolve_device(choice: str, local_rank: int = 0, dev: str = "/dev") -> torch.device:
    """``auto``: CUDA where torch can use it, else the CPU — but a machine that shows GPUs
    torch cannot use is a broken install, not a CPU machine: a run there would train on the
    CPU at a fraction of the speed, or exit 0 after a smoke run. Stop with one line instead."""
    if choice in ("auto", "cuda") and not torch.cuda.is_available():
        gpus = nvidia_devices(dev)
        if gpus or choice == "cuda":
            seen = f"{len(gpus)} GPU device(s) ({', '.join(gpus[:2])}…)" if gpus else "device=cuda"
            raise CudaUnusable(
                f"{seen} but this torch cannot use CUDA (torch {torch.__version__}, built for "
                f"CUDA {torch.version.cuda or 'none'}): install a torch build that matches the "
                "driver, or pass device=cpu to train on the CPU on purpose"
            )
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(choice)


def agreed_max(value: float, device: torch.device) -> float:
    """The largest of the ranks' values, the same on every rank (one scalar all-reduce): ranks
    that decide by a clock must decide alike, or one waits forever in a collective the others
    have left."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())
