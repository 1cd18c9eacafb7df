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
    from training.trainer import train

    final = train(micro_train_config("s3://flip-test/run", s3_shards))
    assert final == "s3://flip-test/run/checkpoints/step_00000006"
    fs = fsspec.filesystem("s3")
    assert fs.exists("flip-test/run/checkpoints/step_00000006/open_clip_model.safetensors")
    assert fs.exists("flip-test/run/metrics.jsonl")
    assert fs.exists("flip-test/run/training_curves.png")

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
