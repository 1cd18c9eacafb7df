"""SIGTERM as schedulers send it before they take a node back (SLURM at a time limit or a
preemption, Kubernetes on eviction, AWS Batch on a spot reclaim, torchrun forwarding either):
the run finishes its step, writes a checkpoint and exits 0, so the scheduler's retry resumes
from it (``resume=true``) instead of losing the steps since the last periodic checkpoint.

The handler only records the request; the loop acts on it between steps. Ranks must stop at
the same step or one waits forever in a collective the others have left, so with several
ranks the request is agreed (one scalar all-reduce) every ``AGREE_EVERY_STEPS`` steps — a
sync that a step per second pays once every 10 s, well inside the 30 s a scheduler grants.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import torch

from training.distributed import agreed_max

AGREE_EVERY_STEPS = 10
log = logging.getLogger(__name__)


class StopRequest:
    """Whether SIGTERM arrived; ``install`` in the main thread before the loop."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.warning("SIGTERM: the run stops after this step, with a checkpoint")
        self.requested = True

    def due(self, step: int, world_size: int, device: torch.device) -> bool:
        """Whether every rank stops after ``step`` (the same answer on every rank)."""
        if world_size == 1:
            return self.requested
        if step % AGREE_EVERY_STEPS:
            return False
        return agreed_max(float(self.requested), device) > 0
