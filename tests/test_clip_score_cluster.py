"""The CLIP-score filter's embedding job on a real standalone Spark cluster (a master and a
2-core worker on loopback): with ``clip_score.task_cpus`` = the executor's cores, Spark's
stage-level scheduling runs one embedding task (one model) per executor at a time; with 1, one
per core. What ran at once is read from the executor's own log; which tasks
were the embedding ones, from Spark's REST API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flipcommon.checkpoints import latest_checkpoint
from pipeline.local_cluster import spark_env, standalone_cluster

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_task_cpus_gives_one_embedding_task_per_executor(tmp_path, shard_set, micro_run):
    with standalone_cluster(tmp_path / "cluster", cores=2) as master:
        result = subprocess.run(
            [
                sys.executable,
                "tests/clip_score_on_cluster.py",
                f"--master={master}",
                f"--shards={shard_set}",
                f"--checkpoint={latest_checkpoint(str(micro_run))}",
                f"--out={tmp_path / 'out'}",
                f"--work-dir={tmp_path / 'cluster' / 'work'}",
                "--task-cpus",  # 2 first: its first tasks load the model, long enough to overlap
                "2",
                "1",
            ],
            cwd=ROOT,
            env=spark_env(),
            capture_output=True,
            text=True,
            timeout=540,
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    shards = len(list(Path(shard_set).glob("*.tar")))
    for task_cpus in ("1", "2"):
        figures = report[task_cpus]
        assert figures["embedding_tasks"] == shards, figures
        cpus = {"resourceName": "cpus", "amount": float(task_cpus)}
        assert figures["task_resources"] == [{"cpus": cpus}]
    assert "no GPUs for Spark to give out" in report["cuda"]
    assert report["1"]["most_at_once"] == 2, json.dumps(report)  # one per core: the control
    # the executor's two cores: one task, one model
    assert report["2"]["most_at_once"] == 1, json.dumps(report)
    assert report["1"]["kept"] == report["2"]["kept"] > 0
