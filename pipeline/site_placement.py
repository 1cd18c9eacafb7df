"""Where a site's URLs go in the URL list: kept together, or spread over the whole list.

A shard task paces a site at ``per_domain_interval_s × min(k, C)`` (I × min(k, C)): k shards
hold the site, C tasks run at once, so together they never exceed one request per I. A site kept
together in k ≤ C shards therefore holds each of them for about (its URLs) × I, whatever k is:
k shards at once, each at 1/k of the rate. That is fine for a small site and ruinous for a large
one — a site of 20M URLs at I = 2 ms would keep its shards busy for 11 hours, far past any
shard's deadline.

So a site whose URLs × I exceed ``site_budget_s`` (1/32 of the shard deadline: ~110 s of a
1-hour deadline, below what a typical 10,000-sample shard takes anyway) is spread
over the whole list instead, each row at its own hashed position: every one of the N shards
holds ~U/N of its URLs, a task paces it at no more than I × C, and a shard spends about
U × I × C / N on it — the site's own politeness bound divided by the number of waves of shards —
while the whole cluster fetches it at the full 1/I from the first wave to the last. Smaller
sites stay in runs of about a quarter shard (DNS answers and the pacing state stay with the task
that uses them, and a dead site costs one task a few timeouts, not every task one).

The fraction comes from ``benchmarks/download_makespan.py``: at LAION-400M on 8 nodes (measured
before the spread rows had a lane of their own), 1/8 of the deadline let kept-together sites
stretch their shards to ~1,160 s (1.39 × the ideal makespan); 1/32 gave 1.07 ×, smaller
fractions little more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.config import DownloadConfig, FetchConfig

LAYOUT_VERSION = 2  # 1: every site in runs; 2: large sites in a spread lane
MAX_DOMAIN_SHARE = 0.25  # a kept-together site's run, as a fraction of a shard
SITE_SHARE_OF_DEADLINE = 1 / 32  # what a shard may spend on one kept-together site


@dataclass(frozen=True)
class SitePlacement:
    """The rule, from the settings it depends on. ``interval_s`` 0: no pacing, every site is
    kept together."""

    samples_per_shard: int
    interval_s: float = 0.0
    shard_deadline_s: float = 3600.0

    @classmethod
    def of(cls, download: DownloadConfig, fetch: FetchConfig) -> SitePlacement:
        return cls(
            download.samples_per_shard, fetch.per_domain_interval_s, download.shard_deadline_s
        )

    @property
    def run_rows(self) -> int:
        return max(1, int(self.samples_per_shard * MAX_DOMAIN_SHARE))

    @property
    def site_budget_s(self) -> float:
        return SITE_SHARE_OF_DEADLINE * self.shard_deadline_s

    def record(self) -> dict:
        """What a URL list records of the rule it was laid out by."""
        return {
            "layout": LAYOUT_VERSION,
            "interval_s": self.interval_s,
            "site_budget_s": self.site_budget_s,
            "run_rows": self.run_rows,
        }

    def spread_over_list(self, urls: int) -> bool:
        """Whether a site of ``urls`` URLs goes over the whole list, row by row."""
        return self.interval_s > 0 and urls * self.interval_s > self.site_budget_s

    def runs(self, urls: int) -> int:
        """How many runs a kept-together site is cut into (each at its own hashed place)."""
        return max(1, math.ceil(urls / self.run_rows))


def seconds_per_shard(urls: int, shards: int, interval_s: float, concurrency: int) -> float:
    """How long a shard holding its share of a site's ``urls`` (over ``shards`` shards) waits
    on that site's pacing, when up to ``concurrency`` tasks run at once."""
    if shards <= 0:
        return 0.0
    return math.ceil(urls / shards) * interval_s * min(shards, concurrency)
