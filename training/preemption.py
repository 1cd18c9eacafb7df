"""SIGTERM as schedulers send it before they take a node back (SLURM at a time limit or a
preemption, Kubernetes on eviction, AWS Batch on a spot reclaim, torchrun forwarding either):
the run finishes its step, writes a checkpoint and exits with ``PREEMPTED_EXIT`` (75,
EX_TEMPFAIL), so the scheduler's retry resumes from it (``resume=true``) instead of losing the
steps since the last periodic checkpoint. Not 0: Kubernetes Jobs, PyTorchJobs and the
experiment runner read 0 as a finished run and would never retry it.

The handler only records the request; the loop acts on it between steps. Ranks must stop at
the same step or one waits forever in a collective the others have left, so with several
ranks the request is agreed (one all-reduce of two scalars: the flag and the slowest step's
time) about every ``CHECK_EVERY_S`` seconds of steps — a scheduler grants ~30 s, and the
checkpoint's write must fit in it too. Loader workers ignore SIGTERM (``training.data``): the
main process stops them when it is done, so a signal to the whole process group does not kill
them mid-step.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

CHECK_EVERY_S = 5.0
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped on request, resumable
log = logging.getLogger(__name__)


class Preempted(Exception):
    """The run stopped on SIGTERM after writing ``checkpoint``."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    """Whether SIGTERM arrived. ``install`` in the main thread before the loop, ``uninstall``
    after it (SIGTERM then kills again, as a stuck process must be killable)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._next_check = 0

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.warning("SIGTERM: the run stops after this step, with a checkpoint")
        self.requested = True

    def due(self, step: int, step_seconds: float, device: torch.device) -> bool:
        """Whether every rank stops after ``step`` (the same answer on every rank)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        if step < self._next_check:
            return False
        agreed = torch.tensor([float(self.requested), step_seconds], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        requested, slowest = agreed.tolist()
        # every rank computes the same next check from the same agreed values
        self._next_check = step + max(1, int(CHECK_EVERY_S / max(slowest, 1e-3)))
        return requested > 0

    def due_now(self, device: torch.device) -> bool:
        """Whether any rank has been asked to stop, agreed at once (a collective: every rank
        calls it at the same step) — after a checkpoint, so a SIGTERM that came while it was
        written stops the run there instead of after another step and another checkpoint."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        agreed = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        return bool(agreed.item() > 0)


def ignore_sigterm(worker_id: int) -> None:
    """A loader worker's init: SIGTERM is the main process's to act on."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
