"""Kill -9 the pipeline stage at random points three times, rerun it to the end: the shard set
holds exactly the keys a clean run keeps, each once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TEST_ITEMS_PER_SOURCE

REPO = Path(__file__).parent.parent
# Deterministic faults only (no hangs): each URL's fate is a function of its key, so a clean
# run and a killed-and-resumed run must keep the same keys.
FAULTS = "{not_found: 0.05, server_error: 0.03, hang: 0, truncated: 0.03, not_image: 0.03}"


def _command(out: Path, corpus: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "configs/pipeline/demo.yaml",
        f"output_dir={out}",
        f"demo.cache_dir={corpus}",
        f"demo.limit_per_source={TEST_ITEMS_PER_SOURCE}",
        f"demo.fault_rates={FAULTS}",
        "fetch.deadline_s=10",
        "fetch.socket_timeout_s=10",
        "download.samples_per_shard=10",
        "download.image_size=32",
        "download.threads=4",
        "spark.master=local[2]",
        "spark.driver_memory=1g",
    ]


def _run(command: list[str], kill_after: float | None = None) -> int | None:
    """Run the stage in its own process group; with ``kill_after``, SIGKILL the whole group
    (driver, Spark JVM, Python workers) at that point, as a lost node would."""
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )
    if kill_after is None:
        return process.wait(timeout=600)
    try:
        process.wait(timeout=kill_after)
        return process.returncode  # finished before the kill point
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def _kept_keys(out: Path) -> list[str]:
    keys = []
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            keys += [m.name.split(".")[0] for m in tar if m.name.endswith(".jpg")]
    return keys


@pytest.mark.slow
def test_killed_three_times_then_resumed_equals_a_clean_run(tmp_path, demo_corpus_dir):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    start = time.monotonic()
    assert _run(_command(clean, demo_corpus_dir)) == 0
    clean_seconds = time.monotonic() - start

    rng = random.Random(1234)
    kill_points = sorted(rng.uniform(0.2, 0.9) * clean_seconds for _ in range(3))
    for point in kill_points:
        _run(_command(killed, demo_corpus_dir), kill_after=point)
        committed = len(list(killed.glob("*_stats.json")))
        print(
            f"killed at {point:.1f} s of a {clean_seconds:.1f} s run: {committed} shards committed"
        )
    assert _run(_command(killed, demo_corpus_dir)) == 0

    clean_keys, resumed_keys = _kept_keys(clean), _kept_keys(killed)
    duplicates = [k for k, n in Counter(resumed_keys).items() if n > 1]
    assert not duplicates, f"keys in more than one place: {duplicates[:5]}"
    assert set(resumed_keys) == set(clean_keys) and clean_keys
    # the per-sample records agree too: same keys succeeded, same reasons for the rest
    assert _outcomes(killed) == _outcomes(clean)


def _outcomes(out: Path) -> dict[str, tuple[str, str | None]]:
    rows = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))])
    pairs = zip(rows["status"], rows["error_message"], strict=True)
    return dict(zip(rows["key"], pairs, strict=True))
