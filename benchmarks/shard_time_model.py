"""Does a shard take max(I/O time, paced time) when one of its sites is paced? The makespan
simulation (``download_makespan.py``) models a task so; this runs the real ``process_all`` and
``Fetcher._wait_turn`` (a real ``DomainThrottle``, threads that sleep while they wait for a
slot) with the network replaced by a fixed latency, and prints measured ÷ modelled.

    python benchmarks/shard_time_model.py [--urls 2000] [--threads 64] [--latency 0.1]

A shard of ``--urls`` URLs over many small sites and one paced site holding ``--share`` of
them; the paced site's wait (its URLs × its per-task interval) is set to a multiple of the
shard's I/O time (URLs × latency ÷ threads). Real time, a few seconds per row.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool
from pathlib import Path
from threading import Semaphore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pipeline.config import FetchConfig  # noqa: E402
from pipeline.domains import domain_of_url  # noqa: E402
from pipeline.fetch import Fetcher, FetchResult  # noqa: E402
from pipeline.shard_download import failure, process_all  # noqa: E402


@dataclass
class LatencyProcessor:
    """A SampleProcessor whose fetch waits its site's turn as the real one does, then takes a
    latency drawn around ``latency_s`` (lognormal, as servers answer: a fixed latency would
    free every thread at once, in lockstep), and whose finish is free. The model adds the
    longest latency drawn: the shard's last request may be it."""

    fetcher: Fetcher
    latency_s: float
    longest_s: float = 0.0

    def fetch(self, url: str, stop_at: float) -> FetchResult:
        self.fetcher._wait_turn(domain_of_url(url), stop_at, "shard deadline exceeded")
        latency = self.latency_s * random.lognormvariate(-0.125, 0.5)  # mean latency_s
        self.longest_s = max(self.longest_s, latency)
        time.sleep(latency)
        return FetchResult(b"x")

    def finish(self, fetched: FetchResult):
        return None, failure("failed_to_resize", "not decoded here")


def round_robin_feed(items: list[tuple[int, str]], processor, threads: int):
    """The baseline: the task code before the feed followed sites' turns — URLs round-robin
    over their sites, handed to the pool ahead of free threads (up to 2 × threads), a thread
    sleeping on a paced site's slot."""
    queues: dict[str, list[tuple[int, str]]] = {}
    for item in items:
        queues.setdefault(domain_of_url(item[1]), []).append(item)
    ranked = sorted(
        (rank, position, item)
        for position, queue in enumerate(queues.values())
        for rank, item in enumerate(queue)
    )
    in_flight = Semaphore(2 * threads)

    def feed():
        for _, _, item in ranked:
            in_flight.acquire()
            yield item

    with ThreadPool(threads) as pool:
        for _ in pool.imap_unordered(lambda item: processor.fetch(item[1], float("inf")), feed()):
            in_flight.release()


def shard_seconds(
    urls: int, threads: int, latency_s: float, share: float, ratio: float, baseline: bool = False
) -> dict:
    paced = int(urls * share)
    io_s = urls * latency_s / threads
    per_request_s = ratio * io_s / paced  # the paced site's interval × multiplier in this task
    config = FetchConfig(per_domain_interval_s=per_request_s)
    fetcher = Fetcher(config, pace_multipliers={"paced.example": 1})
    fetcher.throttle._phase = lambda interval: 0.0
    items = [(i, f"http://img.paced.example/{i}.jpg") for i in range(paced)]
    # the rest over 400 small sites, each at the same interval but with few URLs
    items += [
        (paced + i, f"http://s{i % 400}.example{i % 400}.net/{i}.jpg") for i in range(urls - paced)
    ]
    processor = LatencyProcessor(fetcher, latency_s)
    start = time.monotonic()
    if baseline:
        round_robin_feed(items, processor, threads)
    else:
        for _ in process_all(items, processor, threads, start + 3600):
            pass
    measured = time.monotonic() - start
    small_site_s = (urls - paced) / 400 * per_request_s
    # the last request may be the slowest drawn
    model = max(io_s, paced * per_request_s, small_site_s) + processor.longest_s
    return {"share": share, "ratio": ratio, "measured_s": measured, "model_s": model}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    args = parser.parse_args(argv)
    columns = ("paced share", "paced ÷ I/O", "task code", "measured s", "model s", "÷ model")
    widths = (11, 11, 11, 10, 8, 8)
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    worst = {False: 0.0, True: 0.0}
    for share in args.shares:
        for ratio in args.ratios:
            for baseline in (True, False):
                row = shard_seconds(args.urls, args.threads, args.latency, share, ratio, baseline)
                worst[baseline] = max(worst[baseline], row["measured_s"] / row["model_s"])
                print(
                    f"{share:>11.2f} {ratio:>11.1f} {'round-robin' if baseline else 'turns':>11} "
                    f"{row['measured_s']:>10.2f} {row['model_s']:>8.2f} "
                    f"{row['measured_s'] / row['model_s']:>8.2f}",
                    flush=True,
                )
    print(
        f"worst measured ÷ model: {worst[False]:.2f} (the task code), "
        f"{worst[True]:.2f} (round-robin baseline)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
