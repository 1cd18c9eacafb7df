"""robots.txt (RFC 9309) for the downloader: what each site's file says, and a task's bounded
cache of it.

The rules of one origin (scheme, host, port) are fetched the first time a URL of it comes up
(``Fetcher``) and kept for the Python worker's life, up to a day (RFC 9309 §2.4): a worker
runs one task after another, so a site spread over every shard is asked about once per worker
a day, not once per shard (``worker_cache``). They are obeyed for the fetcher's user-agent
token (its own group, else ``*``; the longest matching path rule wins, ``*`` and ``$``
understood). What the status says, as the standard has it:

- 2xx: the file's rules; only its first ``robots_txt_max_bytes`` are read (RFC 9309 asks
  crawlers to read at least 500 KiB);
- 4xx (a site without a robots.txt): everything allowed;
- 5xx, 429, or no answer (timeout, refused, reset): *unreachable*, so nothing is fetched from
  the site ("complete disallow"); the worker asks again after ``robots_txt_unreachable_s``,
  and its URLs fail as retryable (the final pass tries them again, hours later);
- redirects: followed like an image's (guarded, up to ``max_redirects`` hops); more than that
  counts as no robots.txt.

Only the groups that apply to the agent are kept (``rules_for_agent``: its own product token's
groups merged, else ``*``'s), with at most ``MAX_RULES`` rules and ``MAX_WILDCARDS`` wildcards
(a file past them is unreadable: the site is left alone). That keeps parsing linear and a URL's
check bounded, whatever a hostile file holds: Protego files each rule under every agent of its
group, so many agents over many rules cost their product (a 19 KB file took 1.5 s and 90 MB),
and each wildcard is a scan of the URL.

Matching is Protego's (Scrapy's parser, RFC 9309 wildcards and longest match): the standard
library's ``urllib.robotparser`` takes the first matching rule and reads ``*`` and ``$``
literally, which gets 5 of the 14 cases in ``benchmarks/robots_txt_parsers.py`` wrong (Protego
none); Protego checks a URL against a typical 4.6 KB file in ~5 µs.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from protego import Protego

KEEP_S = 24 * 3600.0  # a file's rules are used this long at most (RFC 9309 §2.4)
ROBOTS_DISALLOWS = "robots.txt disallows"
ROBOTS_UNREACHABLE = "robots.txt unreachable"
ROBOTS_UNREADABLE = "robots.txt unreadable"
MAX_RULES = 10_000  # an agent's allow/disallow rules (large sites publish a few hundred)
MAX_WILDCARDS = 4_096  # "*" over those rules: each is a scan of the URL per check
# A group's user-agent names a product token: its leading letters, "_" and "-" (RFC 9309
# §2.2.1); "Googlebot/2.1" names googlebot.
PRODUCT_TOKEN = re.compile(r"[A-Za-z_-]*")
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


def rules_for_agent(text: str, agent: str) -> list[tuple[str, str]]:
    """The allow/disallow rules that apply to ``agent`` (a product token, lower case): those
    of every group naming it, merged, else of every ``*`` group (RFC 9309 §2.2.1); empty if
    none applies. A group is a run of user-agent lines and the rules after them; other lines
    (sitemap, crawl-delay, comments, junk) are skipped."""
    own: list[tuple[str, str]] = []
    star: list[tuple[str, str]] = []
    agents: set[str] = set()
    open_group = False  # the user-agent lines of a group are still coming
    claimed = False  # a group names the agent (one without rules allows it everything)
    for raw in text.splitlines():
        field, sep, value = raw.split("#", 1)[0].partition(":")
        if not sep:
            continue
        field, value = field.strip().lower(), value.strip()
        if field == "user-agent":
            if not open_group:
                agents, open_group = set(), True
            token = "*" if value.startswith("*") else PRODUCT_TOKEN.match(value)[0].lower()
            agents.add(token)
            claimed = claimed or token == agent
        elif field in ("allow", "disallow"):
            open_group = False
            if agent in agents:
                own.append((field, value))
            elif "*" in agents:
                star.append((field, value))
    return own if claimed else star


def parse_rules(body: bytes, agent: str) -> SiteRules:
    """A robots.txt body's rules for ``agent``. Bytes that are not UTF-8 are replaced (the
    standard's encoding); a file past the caps, or one the parser cannot read, disallows the
    site rather than being ignored."""
    with _parsing:  # the text, its lines and the parsed rules: two files' worth at a time
        text = body.decode("utf-8", errors="replace").lstrip("\ufeff")
        rules = rules_for_agent(text, agent)
        del text
        wildcards = sum(value.count("*") for _, value in rules)
        if len(rules) > MAX_RULES or wildcards > MAX_WILDCARDS:
            return SiteRules(failure=(ROBOTS_UNREADABLE, False))
        if not rules:
            return ALLOW_ALL
        kept = "User-agent: *\n" + "".join(f"{field}: {value}\n" for field, value in rules)
        try:
            parser = Protego.parse(kept)
        except Exception:  # noqa: BLE001 - whatever a hostile file does to the parser
            return SiteRules(failure=(ROBOTS_UNREADABLE, False))
    return SiteRules(parser, held_bytes=HELD_BASE_BYTES + HELD_BYTES_PER_BYTE * len(kept))


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
        # origin -> (set when fetched, the result: for the threads that waited on it)
        self._pending: dict[str, tuple[threading.Event, list[SiteRules]]] = {}
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
                pending = self._pending.get(origin)
                mine = pending is None
                if mine:
                    pending = self._pending[origin] = (threading.Event(), [])
                    self.fetches += 1
            event, result = pending
            if not mine:
                left = wait_until - time.monotonic()
                if not event.wait(None if math.isinf(left) else max(0.0, left)):
                    return None
                if result:  # what the fetch found, kept in the cache or not
                    return result[0]
                continue  # the fetch failed: look again (this thread may fetch)
            try:
                found = fetch()
                result.append(found)
                self._store(origin, found)
                return found
            finally:
                with self._lock:
                    del self._pending[origin]
                event.set()

    def _store(self, origin: str, found: SiteRules) -> None:
        if math.isinf(found.expires_at):
            found = replace(found, expires_at=self._clock() + KEEP_S)
        with self._lock:
            old = self._entries.pop(origin, None)
            if old is not None:
                self._held -= old.held_bytes
            if found.held_bytes > self.max_bytes // 8:
                # a file this large is used by the URLs waiting for it, then dropped: one
                # site's rules never push out most of what the task knows
                return
            self._entries[origin] = found
            self._held += found.held_bytes
            while self._held > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._held -= dropped.held_bytes


_worker_cache: dict[tuple[str, int], RobotsCache] = {}
_worker_cache_lock = threading.Lock()


def worker_cache(max_bytes: int, scope: str) -> RobotsCache:
    """The process's cache for ``scope`` (a job: its output folder), kept across the tasks a
    Python worker runs for it; another job's tasks get a fresh one (a worker keeps one)."""
    with _worker_cache_lock:
        cache = _worker_cache.get((scope, max_bytes))
        if cache is None:
            _worker_cache.clear()
            cache = _worker_cache[(scope, max_bytes)] = RobotsCache(max_bytes)
        return cache
