"""Download throughput of our download step (Spark distributor, our fetch step) against raw
img2dataset (its multiprocessing distributor) on the same loopback URL set and settings:
images per second, alternating rounds in one script, ratio of medians.

    python benchmarks/download_vs_img2dataset.py [--images 3000] [--rounds 3] [--threads 32]

The images are the demo corpus (built on first use, ~1 min), served without faults by the demo
web in its own process. Both sides: 2 processes (Spark local[2] / a pool of 2), the same threads,
image size, resize mode, shard size and sha256. Spark's session is started before timing (a
stage pays it once per job); img2dataset's pool start-up is inside its time, as a user sees it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["PYSPARK_PYTHON"] = sys.executable


def serve(images_dir: str, port_queue) -> None:
    from pipeline.demo.web import NO_FAULTS, DemoWeb

    web = DemoWeb(Path(images_dir), NO_FAULTS).start()
    port_queue.put(web.base_url)
    while True:
        time.sleep(3600)


def write_url_list(keys: list[str], base_url: str, path: str) -> None:
    n = len(keys)
    table = pa.table(
        {
            "SAMPLE_ID": pa.array(range(n), pa.int64()),
            "URL": [f"{base_url}/img/{k}.jpg" for k in keys],
            "TEXT": [f"caption {k}" for k in keys],
            "LICENSE": ["?"] * n,
            "NSFW": ["UNLIKELY"] * n,
            "similarity": pa.array([0.3] * n, pa.float64()),
        }
    )
    pq.write_table(table, path)


def run_ours(url_list: str, out: str, args) -> int:
    from pipeline.config import DownloadConfig, FetchConfig
    from pipeline.download import download_shards

    download = DownloadConfig(
        image_size=args.image_size,
        samples_per_shard=args.per_shard,
        processes=2,
        threads=args.threads,
    )
    fetch = FetchConfig(deadline_s=20, socket_timeout_s=10, allowed_networks=["127.0.0.0/8"])
    download_shards(split_url_list(url_list, f"{out}-urls", args.per_shard), out, download, fetch)
    return shard_span(out)


def split_url_list(path: str, folder: str, per_shard: int):
    """The one-file URL list cut into our per-shard parts (as img2dataset's reader cuts it)."""
    from pipeline.url_shards import UrlList, part_url

    table = pq.read_table(path)
    os.makedirs(folder, exist_ok=True)
    for shard, start in enumerate(range(0, table.num_rows, per_shard)):
        pq.write_table(table.slice(start, per_shard), part_url(folder, shard))
    return UrlList(folder, table.num_rows, per_shard)


def run_img2dataset(url_list: str, out: str, args) -> int:
    from img2dataset import download

    from pipeline.url_shards import URL_COLUMNS

    download(
        url_list=url_list,
        input_format="parquet",
        url_col="URL",
        caption_col="TEXT",
        save_additional_columns=[c for c in URL_COLUMNS if c not in ("URL", "TEXT")],
        output_folder=out,
        output_format="webdataset",
        image_size=args.image_size,
        resize_mode="border",
        number_sample_per_shard=args.per_shard,
        processes_count=2,
        thread_count=args.threads,
        timeout=10,
        retries=0,
        distributor="multiprocessing",
        compute_hash="sha256",
        enable_wandb=False,
    )
    return shard_span(out)


def shard_span(out: str) -> tuple[int, float]:
    """Images kept, and the seconds from the first shard's start to the last one's end (the
    downloading itself, without either side's start-up and shutdown)."""
    from pipeline.manifest import download_summary, read_shard_stats

    stats = read_shard_stats(out)
    span = max(s["end_time"] for s in stats.values()) - min(s["start_time"] for s in stats.values())
    return download_summary(stats)["succeeded"], span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--corpus", default=".cache/demo_corpus")
    args = parser.parse_args()

    from pipeline.config import SparkConfig
    from pipeline.demo.corpus import CorpusSpec, build_corpus, load_items
    from pipeline.spark_session import get_spark

    corpus = build_corpus(CorpusSpec(args.corpus))
    keys = load_items(corpus)["key"].tolist()[: args.images]
    queue = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(str(corpus / "images"), queue), daemon=True
    )
    server.start()
    base_url = queue.get(timeout=60)
    spark = get_spark(SparkConfig("local[2]", "2g", "bench-download", shuffle_partitions=4))
    spark.sparkContext.setLogLevel("ERROR")

    rates: dict[str, list[float]] = {"ours": [], "img2dataset": []}
    steady: dict[str, list[float]] = {"ours": [], "img2dataset": []}
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        for round_index in range(args.rounds):
            for name, runner in (("img2dataset", run_img2dataset), ("ours", run_ours)):
                url_list = f"{tmp}/urls-{name}-{round_index}.parquet"
                write_url_list(keys, base_url, url_list)
                out = f"{tmp}/out-{name}-{round_index}"
                start = time.perf_counter()
                ok, span = runner(url_list, out, args)
                seconds = time.perf_counter() - start
                rates[name].append(ok / seconds)
                steady[name].append(ok / span)
                print(
                    f"\nround {round_index} {name:12s} {ok} images in {seconds:.1f} s: "
                    f"{ok / seconds:.1f} img/s end to end, {ok / span:.1f} img/s while downloading",
                    flush=True,
                )
                shutil.rmtree(out, ignore_errors=True)
    server.terminate()
    for label, table in (("end to end", rates), ("while downloading", steady)):
        ours, theirs = statistics.median(table["ours"]), statistics.median(table["img2dataset"])
        print(
            f"median img/s {label}: ours {ours:.1f}, img2dataset {theirs:.1f}; "
            f"ratio {ours / theirs:.2f} (goal >= 0.95)"
        )


if __name__ == "__main__":
    main()
