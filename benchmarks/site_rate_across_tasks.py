"""Requests per second one site receives from a multi-task download, against the interval:
ours (the URL list's domain spread divides each site's pace among its tasks) beside the same
download paced per task only (the spread file removed: what a per-task limit gives).

    python benchmarks/site_rate_across_tasks.py [--interval 0.25] [--urls-per-site 40]

Three sites on loopback (127.0.0.2-4, one HTTP server each), their URLs written as the stage
writes its URL list (runs of a quarter shard placed by hash, so each site spans several shards),
downloaded on Spark local[2] with two tasks at once. Prints, per side, the most requests any one
site received in any (closed) 1-second window and over the whole run, against 1/I.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["PYSPARK_PYTHON"] = sys.executable

import pandas as pd  # noqa: E402

from pipeline.config import DownloadConfig, FetchConfig, SparkConfig  # noqa: E402
from pipeline.domains import SPREAD_FILE  # noqa: E402
from pipeline.download import download_shards  # noqa: E402
from pipeline.spark_session import get_spark  # noqa: E402
from pipeline.url_shards import URL_COLUMNS, UrlList, write_url_list  # noqa: E402
from tests.hostile_web import HostileWeb, max_requests_in_window  # noqa: E402

TASKS = 2
SAMPLES_PER_SHARD = 12


def run(spark, url_list: UrlList, out: str, interval: float, webs: list[HostileWeb]) -> list[list]:
    for web in webs:
        web.requests.clear()
    download = DownloadConfig(image_size=32, samples_per_shard=SAMPLES_PER_SHARD, threads=8)
    download.processes = TASKS
    download.progress_interval_s = 60.0
    fetch = FetchConfig(
        deadline_s=10, per_domain_interval_s=interval, allowed_networks=["127.0.0.0/8"]
    )
    download_shards(url_list, out, download, fetch)
    return [sorted(t for ts in web.requests.values() for t in ts) for web in webs]


def report(label: str, sites: list[list[float]], interval: float) -> None:
    per_second = max(max_requests_in_window(times, 1.0) for times in sites)
    overall = max((len(t) - 1) / (t[-1] - t[0]) for t in sites if len(t) > 1)
    print(
        f"{label:<24} max in any 1 s: {per_second:3d} ({per_second * interval:.2f}x 1/I); "
        f"whole run: {overall:5.2f}/s ({overall * interval:.2f}x 1/I)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--urls-per-site", type=int, default=40)
    args = parser.parse_args()
    spark = get_spark(SparkConfig("local[2]", "2g", "bench-site-rate", shuffle_partitions=4))
    spark.sparkContext.setLogLevel("ERROR")
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        webs = [stack.enter_context(HostileWeb(f"127.0.0.{i}")) for i in (2, 3, 4)]
        urls = [f"{w.base_url}/ok/{i}.jpg" for w in webs for i in range(args.urls_per_site)]
        frame = pd.DataFrame({"SAMPLE_ID": range(len(urls)), "URL": urls})
        frame["TEXT"], frame["LICENSE"], frame["NSFW"], frame["similarity"] = "x", "?", "?", 0.3
        df = spark.createDataFrame(frame).select(*URL_COLUMNS)
        ours = write_url_list(df, f"{tmp}/ours", len(urls), SAMPLES_PER_SHARD)
        per_task = dataclasses.replace(ours, path=f"{tmp}/per-task-urls")
        shutil.copytree(ours.path, per_task.path)
        os.remove(f"{per_task.path}/{SPREAD_FILE}")
        print(f"interval I = {args.interval} s (1/I = {1 / args.interval:g}/s), {TASKS} tasks")
        report(
            "ours (cluster-wide)", run(spark, ours, f"{tmp}/a", args.interval, webs), args.interval
        )
        baseline = run(spark, per_task, f"{tmp}/b", args.interval, webs)
        report("per-task pacing only", baseline, args.interval)


if __name__ == "__main__":
    main()
