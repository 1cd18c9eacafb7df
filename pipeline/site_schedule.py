"""Which URL a shard task starts next: one of a site whose turn has come, the one with the
most paced time left first.

A task's threads fetch its URLs; a site paced at an interval (``pipeline.fetch.DomainThrottle``)
would make a thread that picked its URL sleep until the site's slot, and a shard holding a
paced site's share would soon have threads asleep on it while its other sites wait; served
round-robin instead, a site with many URLs gets one start per round and ends long after the
rest. So the task's feeder hands out URLs when their site's turn has come, and among the sites
whose turn has come it picks the one with the most time left at its pace (its URLs × its
interval): the site that would otherwise be the shard's tail is served at every turn, the
others fill the time between (round-robin among equals, e.g. every site when nothing is
paced). Only when no site's turn has come does the feeder wait.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from pipeline.domains import domain_of_url


class Throttle(Protocol):
    def next_slot(self, domain: str) -> float: ...

    def interval_for(self, domain: str) -> float: ...


class PacedOrder:
    """(index, url) pairs in the order to start them, each when its site's turn has come (the
    caller books the slot). Ends when nothing is left, or when the earliest turn is past
    ``stop_at``: the URLs left could not start before the deadline. A site's URLs keep their
    order. ``add`` puts a URL back (a retry) to start no earlier than a given time; iterating
    and adding may happen in different threads."""

    def __init__(
        self,
        items: Iterable[tuple[int, str]],
        throttle: Throttle,
        stop_at: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.throttle = throttle
        self.stop_at = stop_at
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._closed = False
        self._queues: dict[str, deque[tuple[int, str]]] = {}
        self._queued = 0  # first attempts not handed out yet
        self._put_back: set[int] = set()  # indices put back and not handed out again
        self._turns: dict[str, float] = {}  # a ready site's turn, which may have just passed
        for item in items:
            self._queues.setdefault(domain_of_url(item[1]), deque()).append(item)
            self._queued += 1
        self._entries = itertools.count()  # ties: the site served longest ago first
        now = clock()
        self._waiting = [(now, next(self._entries), site) for site in self._queues]
        self._ready: list[tuple[float, int, str]] = []  # (-paced time left, entry, site)
        self._later: list[tuple[float, int, tuple[int, str]]] = []  # (not before, entry, item)

    def paced_time_left(self) -> float:
        """The longest any site still holds the task at its pace (queued URLs × interval)."""
        with self._lock:
            return max((self._site_time_left(s) for s in self._queues), default=0.0)

    def site_time_left(self, site: str) -> float:
        """How long ``site``'s queued URLs hold the task at its pace."""
        with self._lock:
            return self._site_time_left(site)

    def queued(self) -> int:
        """URLs not handed out yet, put-back ones not counted (a retry must not justify
        another)."""
        with self._lock:
            return self._queued

    def add(self, item: tuple[int, str], not_before: float) -> bool:
        """Start ``item`` again, not before ``not_before``; False once the order has ended."""
        with self._lock:
            if self._closed:
                return False
            heapq.heappush(self._later, (not_before, next(self._entries), item))
            self._put_back.add(item[0])
            return True

    def __iter__(self) -> Iterator[tuple[int, str]]:
        while True:
            with self._lock:
                item, wait = self._next()
                if item is None and wait is None:
                    self._closed = True
                    return
            if item is not None:
                yield item
            else:
                self._sleep(wait)

    def _site_time_left(self, site: str) -> float:
        return len(self._queues.get(site, ())) * self.throttle.interval_for(site)

    def _next(self) -> tuple[tuple[int, str] | None, float | None]:
        """The URL to start now, or how long to wait; (None, None): the order has ended.
        Under the lock."""
        now = self._clock()
        while self._later and self._later[0][0] <= now:
            _, _, item = heapq.heappop(self._later)
            site = domain_of_url(item[1])
            queue = self._queues.setdefault(site, deque())
            if not queue:  # the site has no turn booked: give it one
                heapq.heappush(self._waiting, (now, next(self._entries), site))
            queue.append(item)
        while self._waiting and self._waiting[0][0] <= now:
            _, _, site = heapq.heappop(self._waiting)
            turn = self.throttle.next_slot(site)  # booked since it was put here (a redirect…)?
            if turn > self._clock():  # read after the throttle's own clock: a free site is ready
                heapq.heappush(self._waiting, (turn, next(self._entries), site))
            else:
                self._turns[site] = turn
                entry = (-self._site_time_left(site), next(self._entries), site)
                heapq.heappush(self._ready, entry)
        if not self._ready:
            turns = [heap[0][0] for heap in (self._waiting, self._later) if heap]
            if not turns or min(turns) > self.stop_at:
                return None, None  # nothing left, or nothing can start before the deadline
            return None, max(0.0, min(turns) - now)
        _, _, site = heapq.heappop(self._ready)
        queue = self._queues[site]
        item = queue.popleft()
        if item[0] in self._put_back:
            self._put_back.discard(item[0])
        else:
            self._queued -= 1
        turn = self._turns.pop(site, now)
        if queue:
            interval = self.throttle.interval_for(site)
            if interval > 0:
                # the next turn follows this one, not the moment it was served: a feeder that
                # wakes late must not fall further behind at every turn (on a shared site's
                # grid, each miss costs a period); served long after its turn, it starts afresh
                late = self._clock() - turn
                after = turn if late <= interval / 2 else self._clock()
                heapq.heappush(self._waiting, (after + interval, next(self._entries), site))
            else:
                heapq.heappush(self._ready, (0.0, next(self._entries), site))
        return item, None


def paced_order(
    items: Iterable[tuple[int, str]],
    throttle: Throttle,
    stop_at: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[tuple[int, str]]:
    """``PacedOrder``'s URLs, when nothing is added."""
    return iter(PacedOrder(items, throttle, stop_at, clock, sleep))
