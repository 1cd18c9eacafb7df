"""Kill -9 a training run mid-phase, resume it: the final weights equal an uninterrupted run's."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from flipcommon.checkpoints import latest_checkpoint, read_weights
from tests.conftest import micro_train_config, micro_training_args
from training.config import PhaseConfig
from training.preemption import PREEMPTED_EXIT
from training.trainer import train

REPO = Path(__file__).parent.parent
PHASES = [
    PhaseConfig("pretrain", mask_ratio=0.5, samples=8 * 24, base_lr=1e-3, warmup_samples=32),
    PhaseConfig("unmasked_tuning", mask_ratio=0.0, samples=8 * 8, base_lr=1e-4),
]
TOTAL_STEPS = 32


def _config(run_dir: Path, shards: Path, **overrides):
    overrides = {"checkpoint_every_steps": 4, **overrides}
    config = micro_train_config(str(run_dir), str(shards), **overrides)
    config.phases = PHASES
    return config


def _cli_args(run_dir: Path, shards: Path) -> list[str]:
    phases = json.dumps([p.__dict__ for p in PHASES])
    return [
        sys.executable,
        *micro_training_args(
            run_dir, shards, "checkpoint_every_steps=4", "log_every_steps=1", f"phases={phases}"
        ),
    ]


def _kill_after_first_checkpoint(run_dir: Path, shards: Path) -> int:
    latest = run_dir / "checkpoints" / "LATEST"
    process = subprocess.Popen(
        _cli_args(run_dir, shards), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


def test_kill_minus_nine_then_resume_equals_uninterrupted(tmp_path, shard_set):
    reference = train(_config(tmp_path / "reference", shard_set))

    run_dir = tmp_path / "killed"
    returncode = _kill_after_first_checkpoint(run_dir, shard_set)
    killed_at = latest_checkpoint(str(run_dir))
    assert returncode == -signal.SIGKILL
    assert killed_at is not None and not killed_at.endswith(f"{TOTAL_STEPS:08d}"), (
        "the run must die mid-way for this test to mean anything"
    )

    resumed = train(_config(run_dir, shard_set, resume=True))
    assert resumed.endswith(f"step_{TOTAL_STEPS:08d}")
    ours, theirs = read_weights(resumed), read_weights(reference)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-6, atol=1e-7, msg=name)

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reference_records = [
        json.loads(line)
        for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
    assert [r["samples_seen"] for r in records] == [8 * s for s in range(1, TOTAL_STEPS + 1)]
    assert [r["lr"] for r in records] == [r["lr"] for r in reference_records]


def test_sigterm_checkpoints_exits_75_and_the_resumed_run_is_bit_exact(tmp_path, shard_set):
    """SIGTERM (a scheduler's preemption) mid-phase: the run finishes its step, writes a
    checkpoint there and exits 0; resumed, it ends where a run with a checkpoint at every step
    ends (every checkpoint restarts the batch stream, so that is the run it must equal)."""
    run_dir = tmp_path / "preempted"
    args = [*_cli_args(run_dir, shard_set), "checkpoint_every_steps=1"]  # the last one wins
    metrics = run_dir / "metrics.jsonl"
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == PREEMPTED_EXIT, stderr.decode()[-2000:]
    assert b"stopped by SIGTERM" in stderr
    stopped_at = latest_checkpoint(str(run_dir))
    assert stopped_at is not None and not stopped_at.endswith(f"{TOTAL_STEPS:08d}")

    resumed = train(_config(run_dir, shard_set, resume=True, checkpoint_every_steps=1))
    reference = train(_config(tmp_path / "reference", shard_set, checkpoint_every_steps=1))
    assert resumed.endswith(f"step_{TOTAL_STEPS:08d}")
    ours, theirs = read_weights(resumed), read_weights(reference)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0, msg=name)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))


def test_loader_workers_kept_across_checkpoints_give_what_fresh_ones_give(tmp_path, shard_set):
    """The uninterrupted run keeps its two loader workers across every checkpoint; a run resumed
    from its step-8 checkpoint starts two fresh ones there. Same batches, crops included: the
    final weights are equal bit for bit."""
    import shutil

    from training.config import DataConfig

    def config(run_dir: Path, **overrides):
        data = DataConfig(shards=str(shard_set), workers=2, shuffle_buffer=16, worker_start="fork")
        return _config(run_dir, shard_set, data=data, **overrides)

    reference = train(config(tmp_path / "reference"))
    checkpoints = tmp_path / "resumed" / "checkpoints"
    shutil.copytree(
        tmp_path / "reference" / "checkpoints" / "step_00000008", checkpoints / "step_00000008"
    )
    (checkpoints / "LATEST").write_text("step_00000008")
    resumed = train(config(tmp_path / "resumed", resume=True))
    assert resumed.endswith(f"step_{TOTAL_STEPS:08d}")
    ours, theirs = read_weights(resumed), read_weights(reference)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0, msg=name)
