"""A real standalone Spark cluster on this machine: a master and a worker process started from
pyspark's own ``spark-class`` launcher on loopback. Used by the cluster rehearsal
(``make cluster-demo``) and the tests, so the stage is submitted by URL as on a real cluster."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
SPARK_SUBMIT = SPARK_HOME / "bin" / "spark-submit"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 90) -> None:
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


def spark_env() -> dict[str, str]:
    return {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_HOME": str(SPARK_HOME),
    }


@contextlib.contextmanager
def standalone_cluster(logs: Path, cores: int = 2, memory: str = "2g") -> Iterator[str]:
    """Yield the master URL of a running master + one worker; stop both on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    env = spark_env()
    master_port, worker_port = free_port(), free_port()
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
                    str(free_port()),
                ],
                env=env,
                stdout=master_log,
                stderr=subprocess.STDOUT,
            )
            wait_for_port(master_port, master)
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
                    str(free_port()),
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--work-dir",
                    str(logs / "work"),
                ],
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
            wait_for_port(worker_port, worker)
            time.sleep(3)  # the worker registers with the master
            yield url
        finally:
            for process in (worker, master):
                if process is not None:
                    process.terminate()
                    process.wait(timeout=30)
