"""Shared fixtures: real components on loopback (Spark local mode, the demo web over HTTP)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Exact-resume tests compare weights to the last bit: MKL must not use fewer threads (another
# summation order) when the machine is busy, as it may by default.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable

TEST_ITEMS_PER_SOURCE = 40


@pytest.fixture(scope="session")
def spark():
    from pipeline.config import SparkConfig
    from pipeline.spark_session import get_spark

    session = get_spark(SparkConfig("local[2]", "1g", "flip-tests", shuffle_partitions=4))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def demo_corpus_dir(tmp_path_factory) -> Path:
    from pipeline.demo.corpus import CorpusSpec, build_corpus

    cache = tmp_path_factory.mktemp("demo_corpus")
    return build_corpus(CorpusSpec(str(cache), limit_per_source=TEST_ITEMS_PER_SOURCE, processes=1))


def small_pipeline_config(output_dir: str, corpus_dir: Path):
    from pipeline.config import PipelineConfig

    config = PipelineConfig(output_dir=output_dir)
    config.demo.enabled = True
    config.demo.cache_dir = str(corpus_dir)
    config.demo.limit_per_source = TEST_ITEMS_PER_SOURCE
    config.demo.hang_seconds = 3.0
    config.download.image_size = 32
    config.download.samples_per_shard = 30
    config.download.processes = 2
    config.download.threads = 8
    config.fetch.deadline_s = 1.5
    config.fetch.socket_timeout_s = 1
    config.fetch.retries = 1
    config.fetch.backoff_base_s = 0.1
    config.spark.master = "local[2]"
    return config


@pytest.fixture(scope="session")
def shard_set(tmp_path_factory, spark, demo_corpus_dir) -> Path:
    """A finished shard set built by the real pipeline from the demo web on loopback."""
    from pipeline.stage import run

    out = tmp_path_factory.mktemp("shards")
    run(small_pipeline_config(str(out), demo_corpus_dir), spark)
    return out


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, shard_set) -> Path:
    """A finished two-phase training run of the micro model on the small shard set."""
    from training.trainer import train

    run_dir = tmp_path_factory.mktemp("run")
    train(micro_train_config(str(run_dir), str(shard_set)))
    return run_dir


def micro_training_args(run_dir, shards, *overrides: str) -> list[str]:
    """``-m training …`` arguments for a micro run on a test shard set, through the CLI."""
    return [
        "-m",
        "training",
        str(Path(__file__).parent.parent / "configs/train/flip_tiny.yaml"),
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        "model.name=flip_micro",
        "batch_size=8",
        "data.workers=0",
        "data.shuffle_buffer=16",
        "device=cpu",
        *overrides,
    ]


def micro_train_config(run_dir: str, shards: str, **overrides):
    from training.config import DataConfig, ModelConfig, PhaseConfig, TrainConfig

    config = TrainConfig(
        run_dir=run_dir,
        model=ModelConfig(name="flip_micro"),
        data=DataConfig(shards=shards, workers=0, shuffle_buffer=16),
        phases=[
            PhaseConfig("pretrain", mask_ratio=0.5, samples=32, base_lr=1e-3, warmup_samples=8),
            PhaseConfig("unmasked_tuning", mask_ratio=0.0, samples=16, base_lr=1e-4),
        ],
        batch_size=8,
        log_every_steps=1,
        device="cpu",
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on loopback: moto's server in its own process, dummy credentials."""
    from tests.moto_server import start_moto

    server, endpoint = start_moto()
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
        )
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.kill()
    server.wait()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
