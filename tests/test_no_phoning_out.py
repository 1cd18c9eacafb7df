"""Importing the pipeline (as every Spark executor's Python worker does) opens no connection,
whatever environment launched it: albumentations' version check at import is turned off by the
package itself, not only by the Makefile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD_CONNECTIONS = """
import json, socket, sys
attempts = []
def refuse(self, address, *args):
    attempts.append(str(address))
    raise OSError("no network in this test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(attempts))
"""


def connections_on_import(*modules: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run(
        [sys.executable, "-c", RECORD_CONNECTIONS, *modules],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_shard_task_imports_open_no_connection():
    assert connections_on_import("pipeline.spark_daemon", "pipeline.shard_download") == []


def test_albumentations_alone_would_have_phoned_out():
    """The control: the same import without the pipeline package first tries the network."""
    assert connections_on_import("albumentations")
