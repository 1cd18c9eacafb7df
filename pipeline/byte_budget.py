"""The bytes of response bodies a download task holds at once, bounded.

A task's threads fetch while its main thread decodes, one image at a time; without a bound,
``2 × threads`` bodies of up to ``fetch.max_bytes`` each (64 × 2 × 32 MiB = 4 GiB) could wait
at once. Every body's bytes are taken from one ``ByteBudget`` per task before they are read
(a declared ``Content-Length`` all at once, so a thread waiting holds nothing; a body of
unknown length chunk by chunk) and given back when the sample is finished. A thread that
cannot get them by its attempt's deadline fails the URL as retryable.
"""

from __future__ import annotations

import math
import threading
import time

WAITED_FOR_MEMORY = "waited for memory"


class ByteBudget:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a byte budget needs a positive limit, not {limit}")
        self.limit = limit
        self.held = 0
        self.peak = 0  # the most held at once (the tests' and the task stats' figure)
        self._changed = threading.Condition()

    def acquire(self, count: int, until: float = math.inf) -> bool:
        """Take ``count`` bytes, waiting until ``until`` (monotonic) for them to be free;
        False if they were not (or can never be: more than the whole budget)."""
        if count > self.limit:
            return False
        with self._changed:
            while self.held + count > self.limit:
                left = until - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(None if math.isinf(left) else left)
            self.held += count
            self.peak = max(self.peak, self.held)
            return True

    def release(self, count: int) -> None:
        if count <= 0:
            return
        with self._changed:
            self.held -= count
            if self.held < 0:
                raise RuntimeError("released more bytes than were taken")
            self._changed.notify_all()
