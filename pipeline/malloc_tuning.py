"""glibc's allocator, told to give large buffers back: what keeps a download task's memory
near what it holds.

A task's threads read bodies of up to ``fetch.max_bytes``; glibc by default gives each thread
an arena of its own (up to 8 per core) and, once a large buffer is freed, raises the size from
which it maps buffers straight from the kernel to that buffer's size. Freed bodies then stay
resident in each thread's arena: measured on one task (8 threads, 8 MiB bodies, a 16 MiB
budget), 192 MiB of growth against 88 MiB with a fixed 128 KiB mapping threshold and two
arenas (benchmarks/task_memory_peak.py), whatever the byte budget held at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept fixed
ARENAS = 2


@functools.cache
def bound_malloc() -> bool:
    """Once per process; False where the C library is not glibc (nothing to tune)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(M_ARENA_MAX, ARENAS) == 1 and ok
    if not ok:
        log.warning("mallopt refused: a download task may keep more memory than it holds")
    return ok
