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
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from pipeline.domains import domain_of_url


class Throttle(Protocol):
    def next_slot(self, domain: str) -> float: ...

    def interval_for(self, domain: str) -> float: ...


def paced_order(
    items: Iterable[tuple[int, str]],
    throttle: Throttle,
    stop_at: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[tuple[int, str]]:
    """(index, url) pairs in the order to start them, each when its site's turn has come (the
    caller books the slot). Stops when the earliest turn is past ``stop_at``: the URLs left
    could not start before the deadline. A site's URLs keep their order."""
    queues: dict[str, deque[tuple[int, str]]] = {}
    for item in items:
        queues.setdefault(domain_of_url(item[1]), deque()).append(item)
    entries = itertools.count()  # ties: the site served longest ago first (round-robin)
    waiting: list[tuple[float, int, str]] = [(clock(), next(entries), site) for site in queues]
    ready: list[tuple[float, int, str]] = []  # (-paced time left, entry, site)

    def paced_time_left(site: str) -> float:
        return len(queues[site]) * throttle.interval_for(site)

    while waiting or ready:
        now = clock()
        while waiting and waiting[0][0] <= now:
            _, _, site = heapq.heappop(waiting)
            turn = throttle.next_slot(site)  # booked since it was put here (a redirect…)?
            if turn > clock():  # read after the throttle's own clock: a free site is ready
                heapq.heappush(waiting, (turn, next(entries), site))
            else:
                heapq.heappush(ready, (-paced_time_left(site), next(entries), site))
        if not ready:
            turn = waiting[0][0]
            if turn > stop_at:
                return  # nothing can start before the deadline
            sleep(turn - now)
            continue
        _, _, site = heapq.heappop(ready)
        queue = queues[site]
        yield queue.popleft()
        if queue:
            interval = throttle.interval_for(site)
            if interval > 0:
                heapq.heappush(waiting, (clock() + interval, next(entries), site))
            else:
                heapq.heappush(ready, (0.0, next(entries), site))
