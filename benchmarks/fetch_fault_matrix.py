"""How long one fetch attempt lasts against a server that stalls in each phase: ours against
img2dataset's own fetch (``img2dataset.downloader.download_image``) and against aiohttp with
its total timeout (``ClientTimeout(total=deadline)``, the body read up to the same byte cap),
side by side.

    python benchmarks/fetch_fault_matrix.py [--deadline 5] [--socket-timeout 10] [--cap 30]

The faults are the test suite's (tests/phase_faults.py: stalled connect, silence, trickled
status line / headers / TLS handshake, endless bodies, header floods) plus a resolver that
never answers (ours only: img2dataset calls the system resolver, which cannot be stalled here
without touching the machine's DNS). Ours runs with ``deadline_s`` and ``socket_timeout_s`` as
given and no retries; img2dataset's with ``timeout`` = the same deadline (its only knob, a
per-operation timeout). An attempt still running at ``--cap`` seconds is reported as ">cap".
Prints one row per fault: seconds and the ratio to the deadline, for each side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from img2dataset.downloader import download_image  # noqa: E402

from pipeline.config import FetchConfig  # noqa: E402
from pipeline.deadline_net import Resolver  # noqa: E402
from pipeline.fetch import Fetcher  # noqa: E402
from tests.phase_faults import PhaseFaults, never_answering_lookup  # noqa: E402


def ours(url: str, config: FetchConfig, resolver: Resolver | None = None) -> tuple[float, str]:
    start = time.monotonic()
    result = Fetcher(config, resolver=resolver).fetch(url)
    return time.monotonic() - start, result.error or "ok"


def theirs(url: str, timeout: float) -> tuple[float, str]:
    start = time.monotonic()
    _, stream, error = download_image((0, url), timeout, "flip-benchmark", None)
    return time.monotonic() - start, (error or "ok")[:40] if stream is None else "ok"


def with_aiohttp(url: str, deadline: float, ca_file: str, max_bytes: int) -> tuple[float, str]:
    """One GET under aiohttp's own total timeout (every phase, the body included), the body
    read up to ``max_bytes`` + 1 as ours caps it."""
    import aiohttp

    async def attempt() -> str:
        timeout = aiohttp.ClientTimeout(total=deadline)
        tls = ssl.create_default_context(cafile=ca_file)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, ssl=tls) as response,
        ):
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    return "too large"
            return "ok" if response.status == 200 else f"http {response.status}"

    start = time.monotonic()
    try:
        outcome = asyncio.run(attempt())
    except Exception as err:  # noqa: BLE001 - the reason is the row's content
        outcome = type(err).__name__
    return time.monotonic() - start, outcome[:22]


def row(*cells: str) -> str:
    name, mine, my_ratio, reason, other, other_ratio, aio, aio_ratio, aio_reason = cells
    return (
        f"{name:<24} {mine:>7} {my_ratio:>5}  {reason:<22} {other:>13} {other_ratio:>6}"
        f" {aio:>9} {aio_ratio:>5}  {aio_reason}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deadline", type=float, default=5.0)
    parser.add_argument("--socket-timeout", type=float, default=10.0)
    parser.add_argument("--cap", type=float, default=30.0)
    args = parser.parse_args()
    release = threading.Event()
    with tempfile.TemporaryDirectory() as tmp, PhaseFaults(Path(tmp)) as faults:
        config = FetchConfig(
            deadline_s=args.deadline,
            socket_timeout_s=args.socket_timeout,
            retries=0,
            allowed_networks=["127.0.0.0/8"],
            ca_file=faults.ca_file,
            max_bytes=1 << 20,
            robots_txt=False,  # the image's own request, as the other clients make it
        )
        jobs = {name: url for url, name in faults.urls().items()}
        # daemon-like: the pool is never joined, so a hung img2dataset call cannot hold the exit
        pool = ThreadPoolExecutor(max_workers=3 * len(jobs) + 1)
        started = time.monotonic()
        futures = {
            name: (
                pool.submit(ours, url, config),
                pool.submit(theirs, url, args.deadline),
                pool.submit(with_aiohttp, url, args.deadline, faults.ca_file, config.max_bytes),
            )
            for name, url in sorted(jobs.items())
        }
        dns = pool.submit(
            ours,
            "http://images.example.com/a.jpg",
            config,
            Resolver(lookup=never_answering_lookup(release)),
        )
        print(f"deadline {args.deadline:g} s, per-operation timeout {args.socket_timeout:g} s")
        print(
            row("fault", "ours s", "/dl", "reason", "img2dataset s", "/dl", "aiohttp s", "/dl", "")
        )
        longest = aio_longest = 0.0
        for name, (mine, other, aio) in futures.items():
            seconds, reason = mine.result()
            longest = max(longest, seconds)
            left = max(0.0, args.cap - (time.monotonic() - started))
            try:
                their_seconds, _ = other.result(timeout=left)
                theirs_cells = (f"{their_seconds:.2f}", f"{their_seconds / args.deadline:.2f}")
            except TimeoutError:
                theirs_cells = (f">{args.cap:g}", f">{args.cap / args.deadline:.1f}")
            aio_seconds, aio_reason = aio.result()
            aio_longest = max(aio_longest, aio_seconds)
            aio_cells = (f"{aio_seconds:.2f}", f"{aio_seconds / args.deadline:.2f}", aio_reason)
            ratio = f"{seconds / args.deadline:.2f}"
            print(row(name, f"{seconds:.2f}", ratio, reason, *theirs_cells, *aio_cells))
        seconds, reason = dns.result()
        longest = max(longest, seconds)
        ratio = f"{seconds / args.deadline:.2f}"
        print(row("dns-never-answers", f"{seconds:.2f}", ratio, reason, "n/a", "", "n/a", "", ""))
        print(
            f"longest attempt (ours): {longest:.2f} s = deadline + {longest - args.deadline:.2f} s"
        )
        print(
            f"longest attempt (aiohttp): {aio_longest:.2f} s = deadline + "
            f"{aio_longest - args.deadline:.2f} s"
        )
        release.set()
        pool.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    main()
