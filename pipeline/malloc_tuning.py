"""glibc's allocator, told to give large buffers back: what keeps a download task's memory
near what it holds.

A task's threads read bodies of up to ``fetch.max_bytes``; glibc by default gives each thread
an arena of its own (up to 8 per core) and, once a large buffer is freed, raises the size from
which it maps buffers straight from the kernel to that buffer's size. Freed bodies then stay
resident in each thread's arena, whatever the byte budget held at once. Two arenas and a fixed
4 MiB mapping threshold: measured on one task (benchmarks/task_memory_peak.py, 8 threads, a
budget of two bodies), 86 MiB of growth against 167 with glibc's defaults for 8 MiB bodies, 55
against 72 for 2 MiB ones; decoding throughput unchanged (a 128 KiB threshold, which maps
every body, cost 25-35% of it: every buffer a fresh mapping and its page faults).

glibc stops honouring an arena limit once a process has more than 8 arenas, so the settings
are made in the executors' daemon (``pipeline.spark_daemon``) before any thread exists; the
workers it forks inherit them. The task's own call covers other launchers.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 4 << 20  # larger buffers are mapped, and given back when freed
ARENAS = 2


@functools.cache
def bound_malloc() -> bool:
    """Once per process; False where the C library is not glibc (nothing to tune)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(M_ARENA_MAX, ARENAS) == 1 and ok
    if not ok:
        log.warning("mallopt refused: a download task may keep more memory than it holds")
    return ok
