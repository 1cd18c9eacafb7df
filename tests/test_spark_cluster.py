"""The pipeline stage on a real standalone Spark cluster: a master and a worker process started
from pyspark's own launcher on loopback, the stage submitted by URL like on a real cluster."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import local_cluster
from tests.conftest import TEST_ITEMS_PER_SOURCE


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    with local_cluster.standalone_cluster(tmp_path_factory.mktemp("spark-logs")) as url:
        yield url


@pytest.mark.slow
def test_pipeline_on_a_standalone_cluster(standalone_cluster, demo_corpus_dir, tmp_path):
    out = tmp_path / "shards"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "configs/pipeline/demo.yaml",
            f"output_dir={out}",
            f"spark.master={standalone_cluster}",
            "spark.driver_memory=1g",
            f"demo.cache_dir={demo_corpus_dir}",
            f"demo.limit_per_source={TEST_ITEMS_PER_SOURCE}",
            "demo.hang_seconds=3",
            "fetch.deadline_s=1.5",
            "fetch.socket_timeout_s=1",
            "download.samples_per_shard=30",
            "download.image_size=32",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Spark master: {standalone_cluster}" in result.stderr + result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == sum(json.loads((out / "sizes.json").read_text()).values())
    assert manifest["counts"]["kept"] > 0
