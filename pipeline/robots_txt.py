"""robots.txt (RFC 9309) for the downloader: what each site's file says, and a task's bounded
cache of it.

The rules of one origin (scheme, host, port) are fetched once per download task, the first
time a URL of it comes up (``Fetcher``), and obeyed for the fetcher's user-agent token (its
own group, else ``*``; the longest matching path rule wins, ``*`` and ``$`` understood). What
the status says, as the standard has it:

- 2xx: the file's rules; only its first ``robots_txt_max_bytes`` are read (RFC 9309 asks
  crawlers to read at least 500 KiB);
- 4xx (a site without a robots.txt): everything allowed;
- 5xx, 429, or no answer (timeout, refused, reset): *unreachable*, so nothing is fetched from
  the site ("complete disallow"); the task asks again after ``robots_txt_unreachable_s``, and
  its URLs fail as retryable (the final pass tries them again, hours later);
- redirects: followed like an image's (guarded, up to ``max_redirects`` hops); more than that
  counts as no robots.txt.

Parsing is Protego's (Scrapy's parser, RFC 9309 wildcards and longest match): the standard
library's ``urllib.robotparser`` takes the first matching rule and reads ``*`` and ``$``
literally, which gets 5 of the 14 cases in ``benchmarks/robots_txt_parsers.py`` wrong (Protego
none); Protego checks a URL against a typical 4.6 KB file in ~5 µs.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from protego import Protego

ROBOTS_DISALLOWS = "robots.txt disallows"
ROBOTS_UNREACHABLE = "robots.txt unreachable"
ROBOTS_UNREADABLE = "robots.txt unreadable"
# Memory a parsed file holds, measured with tracemalloc (Protego keeps a compiled pattern per
# rule): ~320 bytes empty, 12-37 bytes per byte of rules (19 for a 500 KiB file of 20,000
# rules). The cache budgets with the upper end.
HELD_BASE_BYTES = 2048
HELD_BYTES_PER_BYTE = 40
# Files parsed at once in a worker: parsing is Python under the GIL (no faster in parallel),
# and each parse of a file at the byte cap holds ~20 MB until the cache takes it.
PARSES_AT_ONCE = 2
_parsing = threading.BoundedSemaphore(PARSES_AT_ONCE)


@dataclass(frozen=True)
class SiteRules:
    """What one origin's robots.txt says: parsed rules (``None``: everything allowed), or a
    failure every URL of the origin ends with (reason, retryable)."""

    parser: Protego | None = None
    failure: tuple[str, bool] | None = None
    held_bytes: int = HELD_BASE_BYTES
    expires_at: float = float("inf")  # on the cache's clock

    def refusal(self, url: str, agent: str) -> tuple[str, bool] | None:
        """(reason, retryable) if ``url`` may not be fetched by ``agent``; None if it may."""
        if self.failure is not None:
            return self.failure
        if self.parser is not None and not self.parser.can_fetch(url, agent):
            return ROBOTS_DISALLOWS, False
        return None


ALLOW_ALL = SiteRules()


def unreachable(until: float) -> SiteRules:
    return SiteRules(failure=(ROBOTS_UNREACHABLE, True), expires_at=until)


def parse_rules(body: bytes) -> SiteRules:
    """A robots.txt body's rules. Bytes that are not UTF-8 are replaced (the standard's
    encoding); a file the parser cannot read disallows the site rather than ignoring it."""
    with _parsing:
        text = body.decode("utf-8", errors="replace").lstrip("\ufeff")
        try:
            parser = Protego.parse(text)
        except Exception:  # noqa: BLE001 - whatever a hostile file does to the parser
            return SiteRules(failure=(ROBOTS_UNREADABLE, False))
    return SiteRules(parser, held_bytes=HELD_BASE_BYTES + HELD_BYTES_PER_BYTE * len(body))


def origin_of(scheme: str, host: str, port: int) -> str:
    """The key robots.txt rules apply to: the scheme, host and port (RFC 9309 §2.3)."""
    return f"{scheme}://{host.lower()}:{port}"


class RobotsCache:
    """The rules of the origins a task has met, least recently used dropped first once their
    estimated memory passes ``max_bytes``. One fetch per origin at a time: threads wanting the
    same origin wait for the one fetching it."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, SiteRules] = OrderedDict()
        self._held = 0
        self._pending: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # robots.txt requests made (a test's and the stats' count)

    @property
    def held_bytes(self) -> int:
        return self._held

    def rules(
        self, origin: str, fetch: Callable[[], SiteRules], wait_until: float
    ) -> SiteRules | None:
        """``origin``'s rules: cached, fetched by ``fetch`` (in this thread), or waited for
        while another thread fetches them. None if that wait would pass ``wait_until``
        (monotonic). An exception from ``fetch`` propagates and caches nothing."""
        while True:
            with self._lock:
                cached = self._entries.get(origin)
                if cached is not None and cached.expires_at > self._clock():
                    self._entries.move_to_end(origin)
                    return cached
                event = self._pending.get(origin)
                mine = event is None
                if mine:
                    event = self._pending[origin] = threading.Event()
                    self.fetches += 1
            if not mine:
                left = wait_until - time.monotonic()
                if not event.wait(None if math.isinf(left) else max(0.0, left)):
                    return None
                continue  # fetched (or failed): look again
            try:
                found = fetch()
                self._store(origin, found)
                return found
            finally:
                with self._lock:
                    del self._pending[origin]
                event.set()

    def _store(self, origin: str, found: SiteRules) -> None:
        with self._lock:
            old = self._entries.pop(origin, None)
            if old is not None:
                self._held -= old.held_bytes
            if found.held_bytes > self.max_bytes:
                return  # bigger than the whole budget: used once, not kept
            self._entries[origin] = found
            self._held += found.held_bytes
            while self._held > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._held -= dropped.held_bytes
