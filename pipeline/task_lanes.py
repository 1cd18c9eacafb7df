"""A download task's lane: its place on every shared site's grid (``fetch.DomainThrottle``).

The grid keeps a site that many tasks share at one request per interval from the whole cluster
only if the tasks running at once hold distinct, evenly spread places. A task's shard id does
not give that: Spark starts the next pending task in whatever slot frees, so after the first
wave the running ids are not consecutive (a long shard of the first wave runs beside the
second's) and their places bunch — 1.054 × the allowance in 1-s windows at 2,048 task slots
(the download simulation). A lane leased per executor slot does: the first wave's tasks
(consecutive ids, evenly spread) each register their id as a lane, and every later task takes
a lane a finished task of its executor gave back, so the places in use stay the first wave's.

A lane is a file ``<lane>.lane`` in a folder of the executor's own (Spark's per-application
files folder), held by an exclusive ``flock`` for as long as the task runs: the kernel gives it
back when the task ends, however it ends (a worker killed with -9 included), so no lane leaks.
Leases are taken under a lock on the folder's registry file, so two tasks starting together
never take the same lane. A task's own lane is its partition in the Spark job (consecutive
whatever shards the job holds: a rerun's leftovers, several small shards per task). An
executor that joins later, or a task whose executor has no free lane, registers its own lane;
nothing fails for want of a lane (a folder that cannot be used gives the task its own,
unregistered). Known limit: executors that join after the first wave register later
partitions, whose places are less even beside the first wave's."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import IO

LANES_FOLDER = "flip-download-lanes"
LANE_SUFFIX = ".lane"
REGISTRY = "registry.lock"

log = logging.getLogger(__name__)


class LaneLease:
    """A lane held until ``release`` (or the end of a ``with`` block)."""

    def __init__(self, lane: int, handle: IO[bytes] | None = None):
        self.lane = lane
        self._handle = handle

    @property
    def registered(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file gives the lock back
            self._handle = None

    def __enter__(self) -> int:
        return self.lane

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


def _open_lock_file(path: Path) -> IO[bytes]:
    """``path`` opened for locking, created if new; never through a symbolic link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "ab")


def _locked(path: Path) -> IO[bytes] | None:
    """``path`` opened (created if new) and exclusively locked, or None if another holds it."""
    handle = _open_lock_file(path)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    return handle


def registered_lanes(folder: Path) -> list[int]:
    """The lanes registered in ``folder``, ascending (names that are not a lane are ignored)."""
    lanes = []
    for entry in os.scandir(folder):
        stem = entry.name.removesuffix(LANE_SUFFIX)
        if entry.name.endswith(LANE_SUFFIX) and stem.isascii() and stem.isdigit():
            lanes.append(int(stem))
    return sorted(lanes)


def lease_lane(folder: Path | None, own: int) -> LaneLease:
    """A free lane of ``folder`` (given back by a finished task), else ``own`` (the task's
    partition in its job), registered there for the tasks that follow. Without a folder, or
    where it cannot be used, ``own`` unregistered."""
    if own < 0:
        raise ValueError(f"a lane is a partition index, not {own}")
    if folder is None:
        return LaneLease(own)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _open_lock_file(folder / REGISTRY) as registry:
            fcntl.flock(registry.fileno(), fcntl.LOCK_EX)  # one lease at a time; closing frees it
            for lane in registered_lanes(folder):
                handle = _locked(folder / f"{lane}{LANE_SUFFIX}")
                if handle is not None:
                    return LaneLease(lane, handle)
            # every lane is held: this slot is new (the first wave, or a new executor)
            return LaneLease(own, _locked(folder / f"{own}{LANE_SUFFIX}"))
    except OSError as err:
        _warn_once(folder, err)
        return LaneLease(own)


_warned: set[Path] = set()


def _warn_once(folder: Path, err: OSError) -> None:
    if folder not in _warned:  # one line per worker process, not one per task
        _warned.add(folder)
        log.warning("lanes folder %s unusable (%s): tasks keep their own lanes", folder, err)


def executor_lanes_folder() -> Path | None:
    """This executor's lanes folder, inside a Spark task; None outside one."""
    from pyspark import SparkFiles, TaskContext

    if TaskContext.get() is None:
        return None
    return Path(SparkFiles.getRootDirectory()) / LANES_FOLDER


def task_partition(default: int) -> int:
    """The running Spark task's partition in its job; ``default`` outside a task."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return default if context is None else context.partitionId()
