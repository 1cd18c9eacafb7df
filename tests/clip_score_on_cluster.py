"""Run the CLIP-score filter from a driver attached to a standalone Spark master, once per
``task_cpus`` asked, and print what Spark's own REST API says about the embedding tasks: how
many ran at once, and the filter's counts. Run by ``tests/test_clip_score_cluster.py`` in its
own process (one SparkContext per process)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flipcommon.errors import UserError  # noqa: E402
from pipeline.clip_score import embedding_profile, run_clip_score  # noqa: E402
from pipeline.config import ClipScoreConfig  # noqa: E402
from pipeline.local_cluster import free_port  # noqa: E402

# A task's launch time + duration overlaps its successor's launch on the same core by a few
# milliseconds (the hand-off is counted in both): overlaps shorter than this are not counted.
HAND_OFF_S = 0.03


def most_at_once(tasks: list[dict]) -> int:
    """The most tasks running at the same moment, from their launch times and durations."""
    from datetime import datetime

    events = []
    for task in tasks:
        start = datetime.strptime(task["launchTime"], "%Y-%m-%dT%H:%M:%S.%f%Z").timestamp()
        end = start + max(task["duration"] / 1000.0 - HAND_OFF_S, 0.001)
        events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        running += change
        peak = max(peak, running)
    return peak


def rest(ui: str, path: str):
    with urllib.request.urlopen(f"{ui}/api/v1{path}", timeout=30) as response:
        return json.load(response)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--master", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--task-cpus", type=int, nargs="+", required=True)
    args = parser.parse_args()
    from pyspark.sql import SparkSession

    ui_port = free_port()
    spark = (
        SparkSession.builder.master(args.master)
        .config("spark.ui.port", str(ui_port))
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.executor.memory", "1g")
        .getOrCreate()
    )
    ui = f"http://127.0.0.1:{ui_port}"
    app = rest(ui, "/applications")[0]["id"]
    config = ClipScoreConfig(
        enabled=True, checkpoint=args.checkpoint, top_percent=50, samples_per_shard=7, batch_size=8
    )
    report = {}
    for task_cpus in args.task_cpus:
        before = {s["stageId"] for s in rest(ui, f"/applications/{app}/stages")}
        out = f"{args.out}/cpus-{task_cpus}"
        manifest = run_clip_score(
            spark, args.shards, replace(config, task_cpus=task_cpus, output_dir=out)
        )
        stages = [
            s
            for s in rest(ui, f"/applications/{app}/stages?details=true")
            if s["stageId"] not in before and s["resourceProfileId"] != 0
        ]
        tasks = [t for s in stages for t in s["tasks"].values()]
        profiles = {
            p["id"]: p["taskResources"]
            for p in rest(ui, f"/applications/{app}/environment")["resourceProfiles"]
        }
        report[task_cpus] = {
            "embedding_tasks": len(tasks),
            "most_at_once": most_at_once(tasks),
            "task_resources": [profiles[s["resourceProfileId"]] for s in stages],
            "kept": manifest["counts"]["kept"],
            "tasks": [(t["launchTime"], t["duration"]) for t in tasks],
        }
    # "cuda" on executors started without GPUs would wait forever: refused up front
    try:
        embedding_profile(spark, replace(config, device="cuda"))
        report["cuda"] = "accepted"
    except UserError as err:
        report["cuda"] = str(err)
    spark.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
