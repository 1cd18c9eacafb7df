"""Run the CLIP-score filter from a driver attached to a standalone Spark master, once per
``task_cpus`` asked, and print what Spark's own REST API says about the embedding tasks: how
many ran at once, and the filter's counts. Run by ``tests/test_clip_score_cluster.py`` in its
own process (one SparkContext per process)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flipcommon.errors import UserError  # noqa: E402
from pipeline.clip_score import embedding_profile, run_clip_score  # noqa: E402
from pipeline.config import ClipScoreConfig  # noqa: E402
from pipeline.local_cluster import free_port  # noqa: E402

# The executor logs these at the start and the end of each task's run, before it reports the end
# to the driver (which only then frees the task's cores and offers them to the next task).
TASK_LINE = re.compile(r"(Running|Finished) task \S+ in stage \S+ \(TID (\d+)\)")


def most_at_once(executor_log: str, task_ids: set[int]) -> int:
    """The most of ``task_ids`` running at the same moment on one executor, from the order of its
    own log lines. The driver's launch times and durations cannot tell this: a task's duration
    ends after the driver has read its result, which goes on after its cores were handed to the
    next task (tens of milliseconds on a loaded machine)."""
    running = peak = 0
    for match in TASK_LINE.finditer(executor_log):
        if int(match.group(2)) in task_ids:
            running += 1 if match.group(1) == "Running" else -1
            peak = max(peak, running)
    return peak


def executor_logs(work_dir: Path, app: str) -> list[str]:
    """Every executor's stderr (where Spark's default logging goes) of the application."""
    return [path.read_text(errors="replace") for path in sorted((work_dir / app).glob("*/stderr"))]


def rest(ui: str, path: str):
    with urllib.request.urlopen(f"{ui}/api/v1{path}", timeout=30) as response:
        return json.load(response)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--master", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work-dir", required=True, type=Path, help="the worker's --work-dir")
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
            "most_at_once": max(
                most_at_once(log, {t["taskId"] for t in tasks})
                for log in executor_logs(args.work_dir, app)
            ),
            "task_resources": [profiles[s["resourceProfileId"]] for s in stages],
            "kept": manifest["counts"]["kept"],
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
