"""CPU per request of our fetch step (threads + http.client over deadline-armed sockets) against
an asyncio client (aiohttp, with its own total timeout), side by side on the same loopback
server; and both against the CPU the download spends per image after the fetch (img2dataset's
resizer: decode, resize, encode), the work a fetch shares the task's cores with.

    python benchmarks/fetch_cpu_per_request.py [--requests 3000] [--concurrency 32] [--rounds 3]

The server runs in its own process (its CPU is not counted). Both clients open one connection
per request, as a web-scale URL list mostly needs (few consecutive URLs share a host), and
fetch the same JPEG (640x480, ~80 KB). CPU is this process's (all threads), per request; medians of
alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def serve(port_queue) -> None:
    from tests.hostile_web import HostileWeb

    web = HostileWeb()
    web.files["img.jpg"] = photo_like_jpeg()
    web.__enter__()
    port_queue.put((web.base_url, len(web.files["img.jpg"])))
    while True:
        time.sleep(3600)


def photo_like_jpeg() -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((640, 480), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def ours(url: str, n: int, concurrency: int) -> tuple[float, float]:
    from pipeline.config import FetchConfig
    from pipeline.fetch import Fetcher

    fetcher = Fetcher(FetchConfig(allowed_networks=["127.0.0.0/8"], retries=0))
    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: fetcher.fetch(url), range(n)))
    assert all(r.data for r in results), {r.error for r in results}
    return time.process_time() - cpu, time.perf_counter() - wall


def theirs(url: str, n: int, concurrency: int) -> tuple[float, float]:
    import aiohttp

    async def run() -> None:
        timeout = aiohttp.ClientTimeout(total=20)
        connector = aiohttp.TCPConnector(force_close=True, limit=concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            gate = asyncio.Semaphore(concurrency)

            async def one() -> bytes:
                async with gate, session.get(url) as response:
                    return await response.read()

            bodies = await asyncio.gather(*(one() for _ in range(n)))
            assert all(bodies)

    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(run())
    return time.process_time() - cpu, time.perf_counter() - wall


def resize_cpu(data: bytes, n: int) -> float:
    from img2dataset.resizer import Resizer

    resizer = Resizer(256, "border", False, encode_quality=95, encode_format="jpg")
    cpu = time.process_time()
    for _ in range(n):
        resizer(io.BytesIO(data))
    return time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    queue = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(queue,), daemon=True)
    server.start()
    base_url, size = queue.get(timeout=60)
    url = base_url + "/file/img.jpg"
    cpu: dict[str, list[float]] = {"ours": [], "aiohttp": []}
    rate: dict[str, list[float]] = {"ours": [], "aiohttp": []}
    for _ in range(args.rounds):
        for name, client in (("ours", ours), ("aiohttp", theirs)):
            seconds, wall = client(url, args.requests, args.concurrency)
            cpu[name].append(1000 * seconds / args.requests)
            rate[name].append(args.requests / wall)
    server.terminate()
    resize_ms = 1000 * resize_cpu(photo_like_jpeg(), 300) / 300
    print(f"{args.requests} requests of {size:,} bytes, {args.concurrency} at once, medians:")
    for name in ("ours", "aiohttp"):
        ms, per_s = statistics.median(cpu[name]), statistics.median(rate[name])
        print(f"  {name:<8} {ms:.3f} CPU ms/request, {per_s:,.0f} requests/s")
    ratio = statistics.median(cpu["ours"]) / statistics.median(cpu["aiohttp"])
    print(f"CPU per request, ours / aiohttp: {ratio:.2f}x")
    print(f"resize (decode + 256 px border + encode) of the same image: {resize_ms:.2f} CPU ms")
    for name in ("ours", "aiohttp"):
        share = statistics.median(cpu[name]) / (statistics.median(cpu[name]) + resize_ms)
        print(f"  fetch share of per-image CPU with {name}: {100 * share:.0f}%")


if __name__ == "__main__":
    main()
