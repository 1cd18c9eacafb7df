"""The pipeline stage on a real standalone Spark cluster: a master and a worker process started
from pyspark's own launcher on loopback, the stage submitted by URL like on a real cluster."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark
import pytest

from tests.conftest import TEST_ITEMS_PER_SOURCE

SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("spark-logs")
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_HOME": str(SPARK_CLASS.parent.parent),
    }
    master_port, worker_port = _free_port(), _free_port()
    url = f"spark://127.0.0.1:{master_port}"
    master = worker = None
    with open(logs / "master.log", "w") as master_log, open(logs / "worker.log", "w") as worker_log:
        try:
            master = subprocess.Popen(
                [
                    str(SPARK_CLASS),
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(master_port),
                    "--webui-port",
                    str(_free_port()),
                ],
                env=env,
                stdout=master_log,
                stderr=subprocess.STDOUT,
            )
            _wait_for_port(master_port, master)
            worker = subprocess.Popen(
                [
                    str(SPARK_CLASS),
                    "org.apache.spark.deploy.worker.Worker",
                    url,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(worker_port),
                    "--webui-port",
                    str(_free_port()),
                    "--cores",
                    "2",
                    "--memory",
                    "2g",
                    "--work-dir",
                    str(logs / "work"),
                ],
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
            _wait_for_port(worker_port, worker)
            time.sleep(3)  # the worker registers with the master
            yield url
        finally:
            for process in (worker, master):
                if process is not None:
                    process.terminate()
                    process.wait(timeout=30)


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
