"""Streaming training data from S3 and writing checkpoints there, through a real S3 endpoint."""

import fsspec
import pytest

from tests.conftest import micro_train_config


@pytest.fixture(scope="module")
def s3_shards(s3_endpoint, shard_set) -> str:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("flip-test")
    for path in sorted(shard_set.iterdir()):
        if path.is_file():
            fs.put(str(path), f"flip-test/shards/{path.name}")
    fsspec.filesystem("s3").invalidate_cache()
    return "s3://flip-test/shards"


def test_train_streams_from_s3_and_checkpoints_to_s3(s3_shards, demo_corpus_dir, tmp_path):
    from evaluation.config import EvalConfig, TaskConfig
    from evaluation.stage import run as evaluate
    from training.config import WandbConfig
    from training.trainer import train

    config = micro_train_config("s3://flip-test/run", s3_shards, wandb=WandbConfig(enabled=True))
    final = train(config)
    assert final == "s3://flip-test/run/checkpoints/step_00000006"
    fs = fsspec.filesystem("s3")
    assert fs.exists("flip-test/run/checkpoints/step_00000006/open_clip_model.safetensors")
    assert fs.exists("flip-test/run/metrics.jsonl")
    assert fs.exists("flip-test/run/training_curves.png")
    _watched_from_a_copy_of_the_bucket(fs, tmp_path)

    task = TaskConfig("tux", "tuxpaint", "retrieval", limit=10)
    records = evaluate(
        EvalConfig(
            train_run_dir="s3://flip-test/run",
            output_dir=str(tmp_path),
            demo_corpus_dir=str(demo_corpus_dir),
            tasks=[task],
            device="cpu",
        )
    )
    assert records[0]["counts"]["images"] == 10


def _watched_from_a_copy_of_the_bucket(fs, tmp_path):
    """TensorBoard's own reader and W&B's own CLI read what the run left in the bucket."""
    import subprocess
    import sys
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fs.invalidate_cache()
    fs.get("flip-test/run/tensorboard/", str(tmp_path / "tensorboard"), recursive=True)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [8 * s for s in range(1, 7)]  # x: samples seen

    fs.get("flip-test/run/wandb/", str(tmp_path / "wandb"), recursive=True)
    (offline_run,) = (tmp_path / "wandb").glob("offline-run-*")
    (records,) = offline_run.glob("run-*.wandb")
    assert b"train/loss" in records.read_bytes()
    wandb_cli = Path(sys.executable).parent / "wandb"
    listed = subprocess.run(
        [str(wandb_cli), "sync", "--dry-run", str(offline_run)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "Would sync 1 run" in listed.stdout + listed.stderr


def test_an_unreachable_store_delays_the_dashboard_but_not_the_run(s3_endpoint, caplog):
    """A TensorBoard copy that fails (here: the bucket does not exist) is logged and retried at
    the next sync; nothing is raised into the training loop."""
    from training.dashboards import TensorBoardLog

    board = TensorBoardLog("s3://no-such-bucket/run", sync_every_s=0.0)
    board.add_scalars({"loss": 1.0}, 8)
    board.flush()
    board.close()
    copies = [r for r in caplog.records if "could not copy TensorBoard events" in r.message]
    assert len(copies) == 3  # at the scalar, the flush and the close
