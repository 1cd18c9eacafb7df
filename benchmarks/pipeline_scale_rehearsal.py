"""Rehearse the pipeline stage at many shards against a distant S3: what it costs beyond
downloading, and how much of that is the driver's serial work.

The stage runs as a batch job runs it (``python -m pipeline`` in its own process, Spark
``local[2]``) from metadata on S3 to shards on S3. S3 is moto's server behind two proxies that
add a bucket's latency to every request (``--latency-ms``): the driver talks to one, the
executors to the other (``spark.executorEnv``), so each side's requests are counted apart. The
images come from a loopback web that answers at once; one URL in ``--retryable-every`` fails
with 503 on its first request, so the final pass runs and appends its shards.

Reported: wall time per phase (from the stage's log), the driver's S3 requests and their serial
time (the time during which at least one of them was in flight), the executors' requests, and
the overhead beyond downloading: the run's wall time minus the shards' own fetch time (summed
from their stats) divided by the two task slots; and the run's wall time per shard, downloading
included, a bound on the overhead that needs no fetch time (a shard's fetch time also holds its
waits for the cores that other shards' commits and the harness use). The run must complete and
reconcile (its manifest is read back and checked).

    python benchmarks/pipeline_scale_rehearsal.py --shards 20000
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BUCKET = "rehearsal"
PHASES = [  # (phase, the log line that ends it)
    ("start-up", "Spark master"),
    ("metadata: read, filter, dedup", "rows in "),
    ("URL list", "downloading "),
    ("first pass", "first pass: "),
    ("final pass", "final pass done"),
    ("manifest and report", "shard set complete"),
]


def serve_images(port_queue) -> None:
    """The loopback web (its own process): one small JPEG for every /img/N.jpg; /once/N.jpg
    answers 503 the first time, then the image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 90, 30)).save(buffer, "JPEG")
    body = buffer.getvalue()
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.startswith("/once/") and self.path not in seen:
                seen.add(self.path)
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_queue.put(server.server_address[1])
    server.serve_forever()


def write_metadata(path: str, base_url: str, rows: int, retryable_every: int) -> int:
    """LAION-like metadata; returns how many URLs fail retryably once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = ["once" if i % retryable_every == retryable_every - 1 else "img" for i in range(rows)]
    table = pa.table(
        {
            "SAMPLE_ID": pa.array(range(rows), pa.int64()),
            "URL": [f"{base_url}/{kind}/{i}.jpg" for i, kind in enumerate(kinds)],
            "TEXT": [f"a rehearsal picture number {i}" for i in range(rows)],
            "LICENSE": ["?"] * rows,
            "NSFW": ["UNLIKELY"] * rows,
            "similarity": pa.array([0.3] * rows, pa.float64()),
        }
    )
    pq.write_table(table, path)
    return kinds.count("once")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds(requests: list[tuple[str, float, float]]) -> float:
    """The time during which at least one request was in flight."""
    total, end = 0.0, float("-inf")
    for _, start, stop in sorted(requests, key=lambda r: r[1]):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def phase_times(log: str, started: float) -> dict[str, float]:
    """Seconds per phase from the stage's log timestamps (the first line matching each end)."""
    stamps = {}
    for line in log.splitlines():
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
        if not match:
            continue
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for phase, marker in PHASES:
            if phase not in stamps and marker in line:
                stamps[phase] = when
    times, previous = {}, started
    for phase, _ in PHASES:
        if phase in stamps:
            times[phase] = round(stamps[phase] - previous, 1)
            previous = stamps[phase]
    return times


def run_stage(args, endpoint_driver: str, endpoint_executors: str, base_url: str) -> dict:
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "configs/pipeline/demo.yaml",
        "demo.enabled=false",
        f"input.urls=[s3://{BUCKET}/meta/]",
        f"output_dir=s3://{BUCKET}/shards",
        f"download.samples_per_shard={args.samples_per_shard}",
        "download.image_size=32",
        "download.threads=4",
        "fetch.retries=0",
        "fetch.deadline_s=10",
        f"fetch.allowed_origins=[{base_url}]",  # its own loopback web, nothing else
        "spark.master=local[2]",
        "spark.driver_memory=2g",
        f'spark.conf={{"spark.executorEnv.AWS_ENDPOINT_URL": "{endpoint_executors}"}}',
    ]
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint_driver, "NO_ALBUMENTATIONS_UPDATE": "1"}
    env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    started = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.time() - started
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    log = result.stdout + result.stderr
    if result.returncode != 0 or "Traceback" in result.stderr:
        raise RuntimeError(f"the stage failed (exit {result.returncode}):\n{log[-6000:]}")
    times = phase_times(log, started)
    return {"wall_s": round(wall, 1), "phases_s": times, "stage_cpu_s": round(cpu, 1), "log": log}


def rehearse(args) -> dict:
    import fsspec

    from tests.moto_server import start_moto
    from tests.s3_fault_proxy import FaultyS3Proxy

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "rehearsal")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "rehearsal")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    queue = multiprocessing.get_context("spawn").Queue()
    web = multiprocessing.get_context("spawn").Process(target=serve_images, args=(queue,))
    web.daemon = True
    web.start()
    moto, endpoint = start_moto()
    latency = args.latency_ms / 1000
    try:
        base_url = f"http://127.0.0.1:{queue.get(timeout=60)}"
        rows = args.shards * args.samples_per_shard
        s3 = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=endpoint)
        s3.mkdir(BUCKET)
        with tempfile.TemporaryDirectory() as tmp:
            retryable = write_metadata(f"{tmp}/meta.parquet", base_url, rows, args.retryable_every)
            s3.put(f"{tmp}/meta.parquet", f"{BUCKET}/meta/part-0.parquet")
        with (
            FaultyS3Proxy(endpoint, 0, 0, latency_s=latency) as driver,
            FaultyS3Proxy(endpoint, 0, 0, latency_s=latency) as executors,
        ):
            run = run_stage(args, driver.endpoint, executors.endpoint, base_url)
        if args.trace:
            for side, proxy in (("driver", driver), ("executors", executors)):
                Path(f"{args.trace}.{side}").write_text(
                    "\n".join(f"{m} {p}" for m, p in proxy.paths)
                )
        manifest = json.loads(s3.cat(f"{BUCKET}/shards/manifest.json"))
        stats_paths = [p for p in s3.ls(f"{BUCKET}/shards") if p.endswith("_stats.json")]
        stats = [json.loads(v) for v in s3.cat(stats_paths).values()]
        harness_cpu = {
            "S3 server (moto)": round(cpu_seconds(moto.pid), 1),
            "S3 proxies and this script": round(cpu_seconds(os.getpid()), 1),
            "web": round(cpu_seconds(web.pid), 1),
        }
    finally:
        moto.kill()
        web.kill()
    counts = manifest["counts"]
    dl = counts["download"]
    if counts["rows_in"] != rows or counts["kept"] + dl["failed_to_download"] != rows:
        raise RuntimeError(f"the counts do not reconcile: {counts}")
    fetch_s = sum(s.get("fetch_seconds", 0.0) for s in stats) / 2  # two task slots
    download_s = sum(run["phases_s"].get(p, 0.0) for p in ("first pass", "final pass", "URL list"))
    driver_methods: dict[str, int] = {}
    for method, _, _ in driver.requests:
        driver_methods[method] = driver_methods.get(method, 0) + 1
    shards = len(stats)
    serial = busy_seconds(driver.requests)
    overhead = run["wall_s"] - fetch_s
    return {
        "shards": shards,
        "first_pass_shards": args.shards,
        "rows": rows,
        "retryable_urls": retryable,
        "kept": counts["kept"],
        "retry_pass": dl["retry_pass"],
        "latency_ms": args.latency_ms,
        "wall_s": run["wall_s"],
        "stage_cpu_s": run["stage_cpu_s"],
        "harness_cpu_s": harness_cpu,
        "phases_s": run["phases_s"],
        "fetch_s_per_slot": round(fetch_s, 1),
        "download_phases_s": round(download_s, 1),
        "overhead_s": round(overhead, 1),
        "overhead_ms_per_shard": round(1000 * overhead / shards, 1),
        # the bound that needs no fetch time: the whole run, downloading included, per shard
        # (a shard's fetch time also holds its waits on the cores its neighbours' commits use)
        "wall_ms_per_shard": round(1000 * run["wall_s"] / shards, 1),
        "driver_requests": len(driver.requests),
        "driver_requests_by_method": driver_methods,
        "driver_serial_s": round(serial, 2),
        "driver_serial_ms_per_shard": round(1000 * serial / shards, 3),
        "executor_requests": len(executors.requests),
        "executor_requests_per_shard": round(len(executors.requests) / shards, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=20_000, help="first-pass shards")
    parser.add_argument("--samples-per-shard", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--retryable-every", type=int, default=50)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--trace", help="write each side's requests to TRACE.driver/.executors")
    args = parser.parse_args()
    figures = rehearse(args)
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
