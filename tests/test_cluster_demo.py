"""The cluster rehearsal: the cloud jobs' own launch commands (rendered by infra/render) run
on this machine — spark-submit to a standalone Spark cluster, torchrun with 2 processes, the
evaluation array index by index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cluster_rehearsal_runs_every_stage(tmp_path):
    # A relative output folder, as the default (runs/cluster-demo) is: the Spark executors run
    # in the worker's own directory, so the stage must hand them absolute paths.
    relative = os.path.relpath(tmp_path, ROOT)
    result = subprocess.run(
        [sys.executable, "infra/cluster_demo.py", "--quick", "--out", relative],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "spark-submit --master spark://127.0.0.1:" in output
    assert "world size 2, global batch 16 (8 per process)" in output
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["kept"] > 0
    checkpoints = sorted(p.name for p in (tmp_path / "train" / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000004", "step_00000008", "step_00000010"]
    for index, step in enumerate(checkpoints):
        results = tmp_path / "train" / "eval" / f"{index:04d}" / "results.json"
        models = json.loads(results.read_text())["models"]
        assert [m["checkpoint"].rsplit("/", 1)[-1] for m in models] == [step]
