"""One download task's peak memory on the worst inputs, against what pipeline.task_memory
states for its config.

A loopback web serves, for one task of the real code (``make_processor`` and ``process_all``,
as a Spark Python worker runs them): bodies at the byte cap with a declared length, the same
without one (read to the connection's end), gzip bodies that decode to the cap, lossless WebP
and PNG with alpha at the pixel cap (the costliest decodes measured), a robots.txt at its cap
full of rules. The task runs in a fresh process that reports its resident memory after the
imports and its peak (VmHWM); the held-bytes figure is the task's ``ByteBudget``'s own
count.

    python benchmarks/task_memory_peak.py [--threads 64] [--max-mib 32] [--in-flight-mib 128]
        [--max-pixels 25000000] [--copies 2]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worst_inputs(max_bytes: int, max_pixels: int, robots_bytes: int) -> dict[str, tuple]:
    """path -> (body, headers, declared length?)."""
    from pipeline.robots_txt import MAX_RULES, MAX_WILDCARDS

    side = math.isqrt(max_pixels)
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, (side // 16 + 1, side // 16 + 1, 4), dtype=np.uint8)
    rgba = Image.fromarray(np.kron(tiles, np.ones((16, 16, 1), np.uint8))[:side, :side], "RGBA")
    webp, png = io.BytesIO(), io.BytesIO()
    rgba.save(webp, "WEBP", lossless=True, quality=0, method=0)
    rgba.save(png, "PNG", compress_level=1)
    noise = rng.integers(0, 255, max_bytes, dtype=np.uint8).tobytes()
    # the most a file may hold for us (robots_txt.MAX_RULES rules, MAX_WILDCARDS of them with
    # a wildcard), each path long enough to fill the byte cap
    pad = "p" * max(1, robots_bytes // MAX_RULES - 40)
    rules = [
        f"Disallow: /private/{i}/{pad}{'*.gif$' if i < MAX_WILDCARDS else '.gif'}\n"
        for i in range(MAX_RULES)
    ]
    robots = ("User-agent: *\n" + "".join(rules)).encode()[:robots_bytes]
    return {
        "/robots.txt": (robots, {"Content-Type": "text/plain"}, True),
        "/declared": (noise, {}, True),
        "/undeclared": (noise, {}, False),
        "/gzip": (gzip.compress(b"\0" * (max_bytes - 1), 1), {"Content-Encoding": "gzip"}, True),
        "/alpha.webp": (webp.getvalue(), {"Content-Type": "image/webp"}, True),
        "/alpha.png": (png.getvalue(), {"Content-Type": "image/png"}, True),
    }


def serve(inputs: dict[str, tuple]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # an undeclared body ends with the connection

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            body, headers, declared = inputs.get(self.path.split("?")[0], (b"", {}, True))
            self.send_response(200 if body else 404)
            for name, value in headers.items():
                self.send_header(name, value)
            if declared:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 1024
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def peak_resident() -> int:
    """This process's own peak resident bytes (VmHWM). Not ``ru_maxrss``: Linux carries the
    launching process's peak across exec into it (a test runner's gigabytes, say)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(settings: dict) -> None:
    """In a fresh process: the task's imports, then one task over the URLs."""
    from pipeline.config import DownloadConfig, FetchConfig
    from pipeline.malloc_tuning import bound_malloc
    from pipeline.shard_download import make_processor, process_all

    def resident() -> int:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")

    if not settings["default_malloc"]:
        bound_malloc()  # as the shard task does first
    download = DownloadConfig(**settings["download"])
    fetch = FetchConfig(**settings["fetch"])
    processor = make_processor(download, fetch)
    baseline = resident()
    # the worker's own pages; the rest of ``baseline`` are shared libraries' (pipeline.task_memory)
    private = next(
        int(line.split()[1]) << 10
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("RssAnon:")
    )
    urls = list(enumerate(settings["urls"]))
    outcomes: dict[str, int] = {}
    import time

    for _, _, result in process_all(urls, processor, download.threads, time.monotonic() + 600):
        reason = result.get("error_message") or result["status"]
        outcomes[reason] = outcomes.get(reason, 0) + 1
    print(
        json.dumps(
            {
                "baseline": baseline,
                "baseline_private": private,
                "peak": peak_resident(),
                "held_peak": processor.fetcher.budget.peak,
                "outcomes": outcomes,
            }
        )
    )


def measure(
    threads: int,
    max_bytes: int,
    in_flight: int,
    max_pixels: int,
    copies: int,
    default_malloc: bool = False,
) -> dict:
    from pipeline.config import DownloadConfig, FetchConfig
    from pipeline.task_memory import WORKER_IMPORTS_BYTES, task_memory

    robots_bytes = FetchConfig().robots_txt_max_bytes
    download = {
        "threads": threads,
        "max_bytes_in_flight": in_flight,
        "max_pixels": max_pixels,
        "image_size": 64,
    }
    fetch = {"max_bytes": max_bytes, "allowed_networks": ["127.0.0.0/8"], "deadline_s": 120.0}
    stated = task_memory(DownloadConfig(**download), FetchConfig(**fetch))
    inputs = worst_inputs(max_bytes, max_pixels, robots_bytes)
    server = serve(inputs)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    paths = [p for p in inputs if p != "/robots.txt"]
    # each kind `threads` times over, so every thread may hold one at once
    urls = [f"{base}{path}?{i}" for i in range(threads * copies) for path in paths]
    settings = {
        "download": download,
        "fetch": fetch,
        "urls": urls,
        "default_malloc": default_malloc,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(settings, handle)
    try:
        result = subprocess.run(
            [sys.executable, __file__, "--child", handle.name],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=1800,
        )
    finally:
        os.unlink(handle.name)
        server.shutdown()
        server.server_close()
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    variable = sum(stated.values()) - WORKER_IMPORTS_BYTES
    return {
        "stated": stated,
        "stated_total": sum(stated.values()),
        "stated_variable": variable,
        "measured": measured,
        "growth": measured["peak"] - measured["baseline"],
        "urls": len(urls),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--max-mib", type=int, default=32, help="fetch.max_bytes, MiB")
    parser.add_argument("--in-flight-mib", type=int, default=128)
    parser.add_argument("--max-pixels", type=int, default=25_000_000)
    parser.add_argument("--copies", type=int, default=2, help="URLs of each kind per thread")
    parser.add_argument(
        "--default-malloc", action="store_true", help="glibc's defaults (the control)"
    )
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(Path(args.child).read_text()))
        return 0
    row = measure(
        args.threads,
        args.max_mib << 20,
        args.in_flight_mib << 20,
        args.max_pixels,
        args.copies,
        args.default_malloc,
    )
    mib = 2**20
    print(f"{row['urls']} URLs, {args.threads} threads; outcomes {row['measured']['outcomes']}")
    for name, size in row["stated"].items():
        print(f"  stated  {name}: {size / mib:,.0f} MiB")
    measured = row["measured"]
    print(f"stated total {row['stated_total'] / mib:,.0f} MiB")
    print(
        f"measured: resident after the imports {measured['baseline'] / mib:,.0f} MiB "
        f"({measured['baseline_private'] / mib:,.0f} of it private), peak "
    )
    print(f"  {measured['peak'] / mib:,.0f} MiB; growth {row['growth'] / mib:,.0f} MiB against ")
    print(f"  the stated {row['stated_variable'] / mib:,.0f} MiB beyond the imports")
    print(
        f"  bodies held at most {measured['held_peak'] / mib:,.1f} MiB "
        f"(budget {args.in_flight_mib})"
    )
    print(f"peak / stated total: {measured['peak'] / row['stated_total']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
