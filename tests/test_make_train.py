"""``make train`` launches torchrun on every local GPU (one process on a CPU machine, ``NPROC=``
to choose), needs only the Python environment, and a machine that shows GPUs torch cannot use
stops with one line instead of training on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from training.distributed import CudaUnusable, resolve_device

ROOT = Path(__file__).resolve().parent.parent


def test_make_train_shows_the_torchrun_line():
    out = subprocess.run(
        ["make", "-n", "train", "MODEL=vit_h14"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert "-m torch.distributed.run --standalone --nproc-per-node=1" in out  # no GPU here
    assert "-m training configs/train/vit_h14.yaml" in out
    assert "install_system_packages" not in out  # a stage needs only the Python environment
    nproc = subprocess.run(
        ["make", "-n", "train", "NPROC=8"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert "--nproc-per-node=8" in nproc


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_train_with_two_processes_on_the_cpu(tmp_path, shard_set):
    """The README's command with NPROC=2: two ranks (gloo), one checkpoint, both phases."""
    run_dir = tmp_path / "run"
    args = " ".join(
        [
            f"run_dir={run_dir}",
            f"data.shards={shard_set}",
            "model.name=flip_micro",
            "batch_size=8",
            "data.workers=0",
            "data.shuffle_buffer=16",
            "device=cpu",
            "log_every_steps=1",
            # ARGS reaches the recipe's shell as words: a value with spaces is quoted for it
            "'phases=[{name: pretrain, mask_ratio: 0.5, samples: 32, base_lr: 1.0e-3},"
            " {name: unmasked_tuning, mask_ratio: 0.0, samples: 16, base_lr: 1.0e-4}]'",
        ]
    )
    result = subprocess.run(
        ["make", "train", "MODEL=flip_tiny", "NPROC=2", f"ARGS={args}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=850,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "world size 2" in output
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["samples_seen"] == 48
    assert (run_dir / "checkpoints" / "LATEST").exists()


def test_gpus_torch_cannot_use_stop_the_run(tmp_path):
    (tmp_path / "nvidia0").touch()  # what a GPU machine shows under /dev
    (tmp_path / "nvidiactl").touch()
    with pytest.raises(CudaUnusable, match="1 GPU device"):
        resolve_device("auto", dev=str(tmp_path))
    with pytest.raises(CudaUnusable, match="device=cpu"):
        resolve_device("cuda", dev=str(tmp_path / "none"))
    assert resolve_device("cpu", dev=str(tmp_path)).type == "cpu"  # on purpose: allowed
    assert resolve_device("auto", dev=str(tmp_path / "none")).type == "cpu"  # no GPU at all


def test_sigterm_to_every_rank_stops_them_at_one_step_with_a_checkpoint(tmp_path, shard_set):
    """As SLURM signals a job step's processes: SIGTERM to torchrun and both ranks. The ranks
    agree on the stop (about every 5 s of steps), checkpoint that step together and leave;
    nobody waits in a collective the other has left."""
    import signal
    import time

    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "training", "configs/train/flip_tiny.yaml",
        f"run_dir={run_dir}", f"data.shards={shard_set}", "model.name=flip_micro",
        "batch_size=8", "data.workers=1", "data.shuffle_buffer=16", "device=cpu",
        "log_every_steps=1", "checkpoint_every_steps=100",
        "phases=[{name: pretrain, mask_ratio: 0.5, samples: 800000, base_lr: 1.0e-3}]",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=300)[0].decode()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    stops = re.findall(r"stopped by SIGTERM at step (\d+)", output)
    assert len(stops) == 2, output[-4000:]  # each rank, at the same step: the last logged
    assert stops == [str(steps[-1])] * 2 and steps[-1] < 100_000, (stops, steps[-1])
    latest = (run_dir / "checkpoints" / "LATEST").read_text().strip()
    assert latest.endswith(f"step_{steps[-1]:08d}"), latest
