"""How long the download of a LAION-sized URL list takes on 8, 32 and 128 nodes, against the
ideal — a simulation on a simulated clock that drives the project's own placement and pacing.

    python benchmarks/download_makespan.py [--nodes 8 32 128] [--json out.json]

What is the project's own code, run as it is:
- ``pipeline.site_placement.SitePlacement``: which sites are kept together in runs (how many
  runs) and which are spread over the whole list, and ``seconds_per_shard``;
- ``pipeline.shard_download.SitePacing``'s rule: a site in k shards is paced at
  I × min(k, C) per task, C the tasks at once;
- ``pipeline.shard_retry.final_pass_samples_per_shard``: how the final pass's list is cut;
- ``pipeline.fetch.DomainThrottle``: every request to the busiest site, in every shard that
  holds it, is booked through the real throttle on the simulated clock (its lane of the
  included); the cluster's request timeline to that site is what the window check reads;
- ``pipeline.url_shards.UrlList.lane_ranks``: each shard's slice of the kept-together lane and
  of the spread lane;

What is modelled:
- the URL list's hashes: runs in a random order, and a spread site's URLs in a shard's slice of
  the spread lane as a binomial draw of its share;
- Spark's task scheduler: FIFO over the shard ids, C slots (nodes × cores), one task per shard
  (optionally jobs of 1,000 shards with a barrier between them, as the code before one-job
  downloading ran);
- a task: ``threads`` requests in flight and one core of decoding; its length is the largest of
  its I/O time (the URLs' thread-seconds ÷ threads), its CPU time and the wait on its slowest
  site's pacing, plus a fixed overhead, cut at ``shard_deadline_s`` (what is left fails as
  retryable and goes to the final pass);
- URL outcomes as rates: success, fast failure (404…), no such host, dead host (holds a thread
  for the attempt's deadline), transient failure (fails once, then succeeds). The retry policy
  decides what a URL costs in each pass.

The ideal for a cluster is the larger of the throughput bound (the fewest requests any policy
needs — every URL once, dead and transient ones once more — as thread-seconds over every task's
threads, or their CPU time over every core) and the politeness bound (the busiest site's URLs ×
I). Goal: every policy-now row ≤ 1.25 × ideal, and the busiest site never above 1/I in a window.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import FetchConfig  # noqa: E402
from pipeline.fetch import DomainThrottle  # noqa: E402
from pipeline.shard_retry import final_pass_samples_per_shard  # noqa: E402
from pipeline.site_placement import SitePlacement  # noqa: E402
from pipeline.task_lanes import LaneLease, lease_lane  # noqa: E402
from pipeline.url_shards import UrlList  # noqa: E402

BACKOFF_MEAN_S = (0.75, 1.5)  # the fetcher's jittered backoff before retry 1, 2 (base 1 s)


@dataclass(frozen=True)
class Population:
    """LAION-like: a few large sites, then a Zipf–Mandelbrot tail, (k + offset) ** -exponent."""

    rows: int = 413_000_000
    head_shares: tuple[float, ...] = (0.05, 0.02, 0.015, 0.015, 0.01)
    tail_sites: int = 1_000_000
    tail_exponent: float = 1.0
    tail_offset: float = 20.0  # the tail's largest site: ~0.4% of rows


@dataclass(frozen=True)
class Outcomes:
    """What a URL costs, by how it ends (rates of rows; the rest succeed)."""

    latency_s: float = 0.5  # a request that gets an answer
    cpu_s: float = 0.012  # decode, resize, encode one image on one core
    fast_failure: float = 0.06  # 404, 403, not an image…
    no_such_host: float = 0.02
    dns_s: float = 0.05  # one failed lookup
    dead_host: float = 0.02
    dead_host_s: float = 20.0  # fetch.deadline_s: a host that never answers
    transient: float = 0.01  # fails once (503, reset), then succeeds

    @property
    def success(self) -> float:
        return 1.0 - self.fast_failure - self.no_such_host - self.dead_host


@dataclass(frozen=True)
class Policy:
    name: str
    spread_large_sites: bool  # SitePlacement with the interval (else every site in runs)
    retries: int  # in-task extra attempts
    no_such_host_final: bool
    negative_dns_cache: bool
    barrier_shards: int = 0  # shards per Spark job, with a barrier between jobs; 0: one job
    # a retryable failure tried again in its task, this long after it failed, when the task
    # waits on a paced site anyway (None: never; it waits for the final pass)
    retry_while_paced_s: float | None = None
    # each task's place on a shared site's grid: a lane leased from its executor's folder
    # (``pipeline.task_lanes``); else its shard id (the code before)
    leased_lanes: bool = False
    # each task asks every site it holds for its robots.txt (fetch.robots_txt): one more
    # request per (shard, site), and one more slot of a paced site's pace. An upper bound: a
    # worker keeps what it learned for its later tasks of the job (pipeline.robots_txt)
    robots_txt: bool = False


POLICIES = [
    Policy("1,000-shard jobs, sites in runs, retries 2", False, 2, False, False, 1000),
    Policy("one job, sites in runs, retries 2", False, 2, False, False),
    Policy("large sites spread, no in-task retries", True, 0, True, True),
    Policy("spread, retried in-task while work is left", True, 0, True, True, 0, 60.0),
    Policy("… and each task at its slot's leased lane", True, 0, True, True, 0, 60.0, True),
    Policy(
        "now: … and robots.txt once per site per task", True, 0, True, True, 0, 60.0, True, True
    ),
]


@dataclass(frozen=True)
class Cluster:
    nodes: int
    cores_per_node: int = 16
    threads: int = 64
    samples_per_shard: int = 10_000
    interval_s: float = 0.002  # fetch.per_domain_interval_s
    shard_deadline_s: float = 3600.0
    task_overhead_s: float = 2.0  # read the part, commit the shard
    clock_skew_s: float = 0.001  # nodes' wall clocks under NTP: ~1 ms apart
    headroom: float = FetchConfig.shared_site_headroom  # fetch.shared_site_headroom

    @property
    def slots(self) -> int:
        return self.nodes * self.cores_per_node


def site_sizes(population: Population) -> np.ndarray:
    """URLs per site, largest head first; sums to ``population.rows``."""
    heads = np.array([round(s * population.rows) for s in population.head_shares], np.int64)
    rest = population.rows - int(heads.sum())
    ranks = np.arange(1, population.tail_sites + 1, dtype=np.float64)
    weights = (ranks + population.tail_offset) ** -population.tail_exponent
    tail = np.floor(weights / weights.sum() * rest).astype(np.int64)
    tail[: rest - int(tail.sum())] += 1
    sizes = np.concatenate([heads, tail])
    return sizes[sizes > 0]


@dataclass
class Layout:
    """The URL list cut into shards: per shard its rows and, per site it holds, how many."""

    shards: int
    rows: np.ndarray  # per shard
    piece_shard: np.ndarray  # (shard, site, urls) for every site in a shard
    piece_site: np.ndarray
    piece_urls: np.ndarray
    spread: np.ndarray  # per site: shards it is in
    busiest: np.ndarray = field(default_factory=lambda: np.zeros(0))  # site 0's URLs per shard


def layout(sizes: np.ndarray, placement: SitePlacement, rng: np.random.Generator) -> Layout:
    """Place every site as ``pipeline.url_shards`` does under ``placement`` and cut the list."""
    per_shard = placement.samples_per_shard
    total = int(sizes.sum())
    shards = math.ceil(total / per_shard)
    distinct, of_size = np.unique(sizes, return_inverse=True)
    spread_mask = np.array([placement.spread_over_list(int(u)) for u in distinct])[of_size]
    runs = np.array([placement.runs(int(u)) for u in distinct], np.int64)[of_size]
    # kept-together sites: runs of near-equal length (a hash of the row modulo the run count)
    together = np.flatnonzero(~spread_mask)
    run_counts = runs[together]
    run_site = np.repeat(together, run_counts)
    first_run = np.repeat(np.cumsum(run_counts) - run_counts, run_counts)
    index_in_site = np.arange(len(run_site)) - first_run
    base = sizes[run_site] // np.repeat(run_counts, run_counts)
    extra = sizes[run_site] % np.repeat(run_counts, run_counts)
    run_len = base + (index_in_site < extra)
    run_place = rng.random(len(run_site))
    order = np.argsort(run_place, kind="stable")
    run_site, run_len = run_site[order], run_len[order]
    # the cut: every shard's ranks in the two lanes, as the URL list computes them
    spread_rows = int(sizes[spread_mask].sum())
    url_list = UrlList("simulated", total, per_shard, spread_rows=spread_rows)
    lanes = [url_list.lane_ranks(i) for i in range(shards)]
    kept_bounds = np.array([kept.start for kept, _ in lanes] + [total - spread_rows], np.int64)
    spread_len = np.array([len(spread) for _, spread in lanes], np.int64)
    # kept-together lane: runs in hash order, each run in the shard(s) its ranks fall in
    run_start = np.cumsum(run_len) - run_len
    first_shard = np.searchsorted(kept_bounds, run_start, side="right") - 1
    last_shard = np.searchsorted(kept_bounds, run_start + run_len - 1, side="right") - 1
    head = np.minimum(run_len, kept_bounds[np.minimum(first_shard + 1, shards)] - run_start)
    crosses = last_shard > first_shard
    if (last_shard - first_shard > 1).any():
        raise RuntimeError("a run spans more than two shards: runs must be under half a shard")
    shard = np.concatenate([first_shard, last_shard[crosses]])
    site = np.concatenate([run_site, run_site[crosses]])
    urls = np.concatenate([head, (run_len - head)[crosses]])
    # spread lane: rows in hash order, so a shard's slice holds each spread site's share
    busiest = np.zeros(shards, np.int64)
    extra_shard, extra_site, extra_urls = [], [], []
    for s in np.flatnonzero(spread_mask):
        counts = rng.binomial(spread_len, sizes[s] / spread_rows)
        held = np.flatnonzero(counts)
        extra_shard.append(held)
        extra_site.append(np.full(len(held), s))
        extra_urls.append(counts[held])
        if s == 0:
            busiest = counts
    shard = np.concatenate([shard, *extra_shard])
    site = np.concatenate([site, *extra_site])
    urls = np.concatenate([urls, *extra_urls])
    # one piece per (shard, site)
    key = shard.astype(np.int64) * len(sizes) + site
    unique, inverse = np.unique(key, return_inverse=True)
    merged = np.bincount(inverse, weights=urls).astype(np.int64)
    piece_shard, piece_site = unique // len(sizes), unique % len(sizes)
    if not spread_mask[0]:
        busiest = np.bincount(piece_shard[piece_site == 0], merged[piece_site == 0], shards)
    return Layout(
        shards=shards,
        rows=np.bincount(piece_shard, merged, shards),
        piece_shard=piece_shard,
        piece_site=piece_site,
        piece_urls=merged,
        spread=np.bincount(piece_site, minlength=len(sizes)),
        busiest=np.asarray(busiest, np.int64),
    )


@dataclass(frozen=True)
class RowCost:
    """What an average row of a pass costs, and what it leaves to the next pass."""

    thread_s: float  # thread-seconds
    cpu_s: float
    retryable: float  # fraction of rows left to the final pass
    dead_share: float  # of those, dead hosts (the rest answer when asked again)
    retry_thread_s: float = 0.0  # one more attempt of a retryable row, thread-seconds
    retry_longest_s: float = 0.0  # the longest such attempt (a dead host's deadline)


def first_pass_cost(outcomes: Outcomes, policy: Policy) -> RowCost:
    backoff = sum(BACKOFF_MEAN_S[: policy.retries])
    attempts = 1 + policy.retries
    lookups = attempts if not policy.no_such_host_final else 1
    no_such_host = lookups * outcomes.dns_s + (0 if policy.no_such_host_final else backoff)
    if policy.negative_dns_cache:
        no_such_host = outcomes.dns_s  # the site's first URL asks; the rest read the cache
    dead = attempts * outcomes.dead_host_s + backoff
    transient = outcomes.latency_s * (2 if policy.retries else 1) + (
        BACKOFF_MEAN_S[0] if policy.retries else 0
    )
    thread_s = (
        (outcomes.success - outcomes.transient) * outcomes.latency_s
        + outcomes.fast_failure * outcomes.latency_s
        + outcomes.no_such_host * no_such_host
        + outcomes.dead_host * dead
        + outcomes.transient * transient
    )
    retryable = outcomes.dead_host + (0 if policy.retries else outcomes.transient)
    retryable += 0 if policy.no_such_host_final else outcomes.no_such_host
    return RowCost(
        thread_s=thread_s,
        cpu_s=outcomes.success * outcomes.cpu_s,
        retryable=retryable,
        dead_share=outcomes.dead_host / retryable if retryable else 0.0,
        retry_thread_s=(
            outcomes.dead_host * outcomes.dead_host_s
            + (retryable - outcomes.dead_host) * outcomes.latency_s
        )
        / retryable
        if retryable
        else 0.0,
        retry_longest_s=outcomes.dead_host_s,
    )


def final_pass_cost(
    outcomes: Outcomes, policy: Policy, first: RowCost, leftovers: float
) -> RowCost:
    """A final-pass row: a first-pass retryable failure (dead host, no such host, transient)
    or a row the shard deadline left (``leftovers``: their share of the list)."""
    backoff = sum(BACKOFF_MEAN_S[: policy.retries])
    attempts = 1 + policy.retries
    failed = 1.0 - leftovers
    dead = failed * first.dead_share
    transient = failed * (0 if policy.retries else outcomes.transient / first.retryable)
    no_such_host = failed - dead - transient
    thread_s = (
        dead * (attempts * outcomes.dead_host_s + backoff)
        + transient * outcomes.latency_s
        + no_such_host * (attempts * outcomes.dns_s + backoff)
        + leftovers * first.thread_s
    )
    cpu = (transient + leftovers * outcomes.success) * outcomes.cpu_s
    return RowCost(thread_s, cpu, 0.0, 0.0)


@dataclass
class PassResult:
    makespan_s: float
    shard_s: np.ndarray  # each task's length
    start_s: np.ndarray
    leftover_rows: int  # cut by the shard deadline
    leftover_by_site: np.ndarray
    retried_in_task: np.ndarray | float = 0.0  # per site: the share of its rows retried in-task
    lanes: np.ndarray | None = None  # each task's lane, where leased (else its shard id)


def run_pass(
    lay: Layout,
    cost: RowCost,
    cluster: Cluster,
    policy: Policy,
    sizes_len: int,
    lanes_root: Path | None = None,
    robots_request_s: float = 0.0,
) -> PassResult:
    """Every shard's length (I/O, CPU, its slowest site's pacing), then Spark's FIFO schedule.
    ``robots_request_s``: what each (shard, site)'s robots.txt request holds a thread (0: none
    asked)."""
    slots = cluster.slots
    multiplier = np.minimum(lay.spread[lay.piece_site], slots)
    # a shared site's grid runs ``headroom`` slower than its share of the interval
    slower = np.where(multiplier > 1, 1.0 + cluster.headroom, 1.0)
    per_request = cluster.interval_s * multiplier * slower
    robots = 1 if robots_request_s else 0
    site_wait = (lay.piece_urls + robots) * per_request
    paced = np.zeros(lay.shards)
    np.maximum.at(paced, lay.piece_shard, site_wait)
    sites_per_shard = np.bincount(lay.piece_shard, minlength=lay.shards)
    io = (lay.rows * cost.thread_s + sites_per_shard * robots_request_s) / cluster.threads
    cpu = lay.rows * cost.cpu_s
    other = np.maximum(io, cpu)
    budget = cluster.shard_deadline_s
    length = np.minimum(np.maximum(other, paced), budget) + cluster.task_overhead_s
    # what the deadline leaves: the rows the task's own pace did not reach, and each paced
    # site's URLs past the deadline
    left_other = lay.rows * np.clip(1 - budget / np.maximum(other, 1e-9), 0, 1)
    left_site = np.maximum(0, lay.piece_urls - np.floor(budget / np.maximum(per_request, 1e-12)))
    left_site = np.where(per_request > 0, left_site, 0)
    by_site = np.bincount(lay.piece_site, left_site, sizes_len)
    leftover = int(left_other.sum() + left_site.sum())
    # a task retries a retryable failure itself, ``retry_while_paced_s`` after it failed, when
    # it has at least that long plus a dead host's deadline still to run anyway (its paced
    # sites' turns, its URLs not yet started) and the failure's own site, with the retry
    # added, ends before that too: the failures of all but the task's last such stretch, of
    # every site but the one it waits on. Their second attempts add to its I/O; what is left
    # goes to the final pass
    retried_urls = np.zeros(len(lay.piece_urls))
    if policy.retry_while_paced_s is not None and cost.retryable:
        tail = policy.retry_while_paced_s + cost.retry_longest_s
        before = np.maximum(other, paced)
        in_time = np.clip(1.0 - tail / np.maximum(before, 1e-9), 0.0, 1.0)
        own = site_wait + per_request + cost.retry_longest_s
        eligible = own <= before[lay.piece_shard]
        retried_urls = lay.piece_urls * eligible * in_time[lay.piece_shard]
        retried = np.bincount(lay.piece_shard, retried_urls, lay.shards)
        extra_io = retried * cost.retryable * cost.retry_thread_s / cluster.threads
        other = np.maximum(io + extra_io, cpu)
        length = np.minimum(np.maximum(other, paced), budget) + cluster.task_overhead_s
    start, slot = schedule_slots(length, slots, policy.barrier_shards)
    lanes = None
    if policy.leased_lanes and lanes_root is not None:
        lanes = leased_lanes(start, length, slot // cluster.cores_per_node, lanes_root)
    by_site_retried = np.bincount(lay.piece_site, retried_urls, sizes_len)
    share = by_site_retried / np.maximum(1, np.bincount(lay.piece_site, lay.piece_urls, sizes_len))
    makespan = float((start + length).max(initial=0.0))
    return PassResult(makespan, length, start, leftover, by_site, share, lanes)


def schedule(lengths: np.ndarray, slots: int, barrier_shards: int = 0) -> np.ndarray:
    """Spark's FIFO: task i starts when a slot frees, in id order; with ``barrier_shards``, a
    job of that many tasks must end before the next job starts."""
    return schedule_slots(lengths, slots, barrier_shards)[0]


def schedule_slots(
    lengths: np.ndarray, slots: int, barrier_shards: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``schedule``'s starts, and the slot each task runs in."""
    starts = np.zeros(len(lengths))
    slot_of = np.zeros(len(lengths), np.int64)
    job = barrier_shards or len(lengths)
    clock = 0.0
    for first in range(0, len(lengths), job):
        free = [(clock, slot) for slot in range(slots)]
        heapq.heapify(free)
        end = clock
        for i in range(first, min(first + job, len(lengths))):
            starts[i], slot_of[i] = heapq.heappop(free)
            done = starts[i] + lengths[i]
            heapq.heappush(free, (done, int(slot_of[i])))
            end = max(end, done)
        clock = end
    return starts, slot_of


def leased_lanes(
    start: np.ndarray, length: np.ndarray, executor: np.ndarray, lanes_root: Path
) -> np.ndarray:
    """Each task's lane as ``pipeline.task_lanes.lease_lane`` gives it: tasks in the order
    they start, each leasing from its executor's folder under ``lanes_root`` (real files and
    locks) with its id as its own lane, and giving it back when it ends. The folders outlive a
    pass, as an executor's do between the first pass's job and the final pass's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = int(np.bincount(executor).sum()) + 256  # a lease holds a file open
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    lanes = np.zeros(len(start), np.int64)
    running: list[tuple[float, int]] = []
    leases: dict[int, LaneLease] = {}
    try:
        for task in np.lexsort((np.arange(len(start)), start)):
            while running and running[0][0] <= start[task]:
                leases.pop(heapq.heappop(running)[1]).release()
            lease = lease_lane(lanes_root / f"executor-{executor[task]}", int(task))
            leases[int(task)] = lease
            lanes[task] = lease.lane
            heapq.heappush(running, (float(start[task] + length[task]), int(task)))
    finally:
        for lease in leases.values():
            lease.release()
    return lanes


def busiest_site_requests(
    lay: Layout, result: PassResult, cluster: Cluster, rng: np.random.Generator
) -> np.ndarray:
    """When the busiest site is asked, cluster-wide: each task that holds it books its URLs
    through its own ``DomainThrottle`` on the simulated clock, from the task's start: the task
    starts the site with the most paced time left at every turn (``pipeline.site_schedule``;
    ``shard_time_model.py`` checks that against the real feed), so its requests go at the
    throttle's slots — on the cluster's grid in the task's lane (its shard id), one per
    interval × multiplier (the lane: the task's leased lane, or the shard id where the policy
    leases none). Each task's wall clock is off by a normal draw of
    ``cluster.clock_skew_s`` (what NTP leaves between nodes)."""
    multiplier = min(int(lay.spread[0]), cluster.slots)
    times = []
    for shard in np.flatnonzero(lay.busiest):
        begin = result.start_s[shard] + cluster.task_overhead_s / 2
        skew = float(rng.normal(0.0, cluster.clock_skew_s)) if cluster.clock_skew_s else 0.0
        throttle = DomainThrottle(
            cluster.interval_s,
            {"site": multiplier},
            clock=lambda begin=begin: begin,
            lane=int(shard if result.lanes is None else result.lanes[shard]),
            wall_offset_s=skew,
            headroom=cluster.headroom,
        )
        stop = begin + cluster.shard_deadline_s
        for _ in range(int(lay.busiest[shard])):
            at = begin + throttle.reserve("site")
            if at > stop:
                break
            times.append(at)
    return np.sort(np.asarray(times))


def busiest_window_ratio(times: np.ndarray, window_s: float, interval_s: float) -> float:
    """The most requests in any window of ``window_s`` (starting at a request), over the
    window's allowance window_s / I."""
    if len(times) == 0:
        return 0.0
    ends = np.searchsorted(times, times + window_s, side="left")
    return float((ends - np.arange(len(times))).max() / (window_s / interval_s))


def retry_sizes(sizes: np.ndarray, first: RowCost, result: PassResult, lay: Layout) -> np.ndarray:
    """Each site's rows in the final pass's list: its retryable share, and what the deadline
    left (the rows a task's own pace missed spread over sites as they were)."""
    rng = np.random.default_rng(7)
    failed = rng.binomial(sizes, first.retryable * (1.0 - result.retried_in_task))
    paced_left = result.leftover_by_site.astype(np.int64)
    other_left = result.leftover_rows - int(paced_left.sum())
    spread_left = rng.multinomial(max(0, other_left), sizes / sizes.sum()) if other_left > 0 else 0
    return failed + paced_left + spread_left


def ideal_s(sizes: np.ndarray, outcomes: Outcomes, cluster: Cluster) -> dict[str, float]:
    """The larger of the throughput bound and the politeness bound."""
    best = first_pass_cost(outcomes, POLICIES[-1])
    rows = float(sizes.sum())
    again = rows * (outcomes.dead_host + outcomes.transient)
    thread_s = rows * best.thread_s + again * (
        (outcomes.dead_host * outcomes.dead_host_s + outcomes.transient * outcomes.latency_s)
        / (outcomes.dead_host + outcomes.transient)
    )
    cpu_s = rows * outcomes.success * outcomes.cpu_s
    throughput = max(thread_s / cluster.threads, cpu_s) / cluster.slots
    politeness = float(sizes.max()) * cluster.interval_s
    return {
        "throughput_s": throughput,
        "politeness_s": politeness,
        "ideal_s": max(throughput, politeness),
    }


def simulate(
    sizes: np.ndarray, outcomes: Outcomes, cluster: Cluster, policy: Policy, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    interval = cluster.interval_s if policy.spread_large_sites else 0.0
    placement = SitePlacement(cluster.samples_per_shard, interval, cluster.shard_deadline_s)
    started = time.perf_counter()
    first_layout = layout(sizes, placement, rng)
    first_cost = first_pass_cost(outcomes, policy)
    lanes_folders = tempfile.TemporaryDirectory(prefix="lanes-")
    lanes_root = Path(lanes_folders.name)
    robots_s = outcomes.latency_s if policy.robots_txt else 0.0
    first = run_pass(first_layout, first_cost, cluster, policy, len(sizes), lanes_root, robots_s)
    requests = [busiest_site_requests(first_layout, first, cluster, rng)]
    retry = retry_sizes(sizes, first_cost, first, first_layout)
    leftovers = first.leftover_rows / max(1, int(retry.sum()))
    final_cost = final_pass_cost(outcomes, policy, first_cost, leftovers)
    final_placement = replace(
        placement,
        samples_per_shard=final_pass_samples_per_shard(
            int(retry.sum()), cluster.samples_per_shard, cluster.slots
        ),
    )
    if retry.sum() == 0:  # every failure retried in its task: no final pass
        final = PassResult(0.0, np.zeros(0), np.zeros(0), 0, np.zeros(0))
    else:
        final_layout = layout(retry[retry > 0], final_placement, rng)
        final_sites = int((retry > 0).sum())
        final = run_pass(
            final_layout, final_cost, cluster, policy, final_sites, lanes_root, robots_s
        )
    if retry[0] > 0:
        shifted = busiest_site_requests(final_layout, final, cluster, rng)
        requests.append(shifted + first.makespan_s)
    lanes_folders.cleanup()
    times = np.concatenate(requests)
    bounds = ideal_s(sizes, outcomes, cluster)
    makespan = first.makespan_s + final.makespan_s
    held = first_layout.busiest[first_layout.busiest > 0]
    return {
        "policy": policy.name,
        "nodes": cluster.nodes,
        "slots": cluster.slots,
        "shards": first_layout.shards,
        "first_pass_h": first.makespan_s / 3600,
        "final_pass_h": final.makespan_s / 3600,
        "final_pass_rows": int(retry.sum()),
        "deadline_cut_rows": first.leftover_rows,
        "makespan_h": makespan / 3600,
        "ideal_h": bounds["ideal_s"] / 3600,
        "throughput_bound_h": bounds["throughput_s"] / 3600,
        "politeness_bound_h": bounds["politeness_s"] / 3600,
        "vs_ideal": makespan / bounds["ideal_s"],
        "node_hours": makespan / 3600 * cluster.nodes,
        "busiest_site_shards": int(len(held)),
        "busiest_site_urls_per_shard": float(held.mean()) if len(held) else 0.0,
        "longest_task_s": float(first.shard_s.max()),
        "busiest_window_ratio": {
            f"{w:g}s": busiest_window_ratio(times, w, cluster.interval_s) for w in (1.0, 10.0, 60.0)
        },
        "busiest_site_requests": int(len(times)),
        # (shard, site) pairs per URL of the first pass: robots.txt requests per URL, if asked
        "sites_per_url": len(first_layout.piece_site) / float(first_layout.rows.sum()),
        "simulated_in_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--rows", type=int, default=Population.rows)
    parser.add_argument("--tail-sites", type=int, default=Population.tail_sites)
    parser.add_argument("--samples-per-shard", type=int, default=Cluster.samples_per_shard)
    parser.add_argument("--interval", type=float, default=Cluster.interval_s)
    parser.add_argument("--threads", type=int, default=Cluster.threads)
    parser.add_argument("--latency", type=float, default=Outcomes.latency_s)
    parser.add_argument("--dead-host", type=float, default=Outcomes.dead_host)
    parser.add_argument(
        "--clock-skew",
        type=float,
        default=Cluster.clock_skew_s,
        help="standard deviation of a node's wall clock from true time, seconds",
    )
    parser.add_argument(
        "--headroom",
        type=float,
        default=Cluster.headroom,
        help="fetch.shared_site_headroom: a shared site's grid this much under its allowance",
    )
    parser.add_argument(
        "--policies",
        type=int,
        nargs="+",
        default=list(range(len(POLICIES))),
        help="indices into: " + "; ".join(f"{i}: {p.name}" for i, p in enumerate(POLICIES)),
    )
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args(argv)
    population = Population(rows=args.rows, tail_sites=args.tail_sites)
    outcomes = replace(Outcomes(), latency_s=args.latency, dead_host=args.dead_host)
    sizes = site_sizes(population)
    rows = []
    print(f"{population.rows:,} rows over {len(sizes):,} sites; busiest {sizes[0]:,} URLs")
    header = (
        f"{'nodes':>5} {'policy':<46} {'first h':>8} {'final h':>8} {'total h':>8} "
        f"{'ideal h':>8} {'x ideal':>7} {'node-h':>7} {'max 1s':>7} {'max 10s':>7} "
        f"{'max 60s':>7}"
    )
    print(header)
    for nodes in args.nodes:
        cluster = Cluster(
            nodes=nodes,
            threads=args.threads,
            samples_per_shard=args.samples_per_shard,
            interval_s=args.interval,
            clock_skew_s=args.clock_skew,
            headroom=args.headroom,
        )
        for index in args.policies:
            row = simulate(sizes, outcomes, cluster, POLICIES[index])
            rows.append(row)
            windows = row["busiest_window_ratio"]
            print(
                f"{nodes:>5} {row['policy']:<46} {row['first_pass_h']:>8.2f} "
                f"{row['final_pass_h']:>8.2f} {row['makespan_h']:>8.2f} {row['ideal_h']:>8.2f} "
                f"{row['vs_ideal']:>7.2f} {row['node_hours']:>7.0f} {windows['1s']:>7.3f} "
                f"{windows['10s']:>7.3f} "
                f"{windows['60s']:>7.3f}",
                flush=True,
            )
    if args.json:
        settings = {"population": asdict(population), "outcomes": asdict(outcomes)}
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
