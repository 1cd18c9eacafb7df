"""benchmarks/checkpoint_stall.py at toy size: its three arms and the paced store still run
against the trainer's pieces (it reaches into them, so a change there shows here)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parent.parent


def test_the_checkpoint_stall_benchmark_runs_at_toy_size(shard_set):
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/checkpoint_stall.py",
            str(shard_set),
            "--model",
            "flip_micro",
            "--rounds",
            "1",
            "--write-mb-per-s",
            "1000",
            "--set",
            "batch_size=8",
            "data.shuffle_buffer=16",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint to writes paced at 1000 MB/s" in result.stdout
    for arm in ("respawn, then save", "restart, then save", "save, then restart"):
        assert arm in result.stdout
    assert "stall, restart then save / respawn, then save: x" in result.stdout
