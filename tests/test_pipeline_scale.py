"""The scale rehearsal (``benchmarks/pipeline_scale_rehearsal.py``) at 500 shards: the stage runs
as a batch job against S3 behind a 20 ms proxy, with a final pass, completes and reconciles; the
driver's S3 requests stay a fixed handful (they must not grow with the shard count) and each
shard costs the executors a fixed few. Figures at 20,000 shards: docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rehearsal_at_500_shards_keeps_the_driver_out_of_the_data_path(tmp_path):
    figures_file = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/pipeline_scale_rehearsal.py",
            "--shards=500",
            "--samples-per-shard=2",
            f"--json={figures_file}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    figures = json.loads(figures_file.read_text())
    # 500 first-pass shards and the final pass's appended ones; every retryable URL recovered
    assert figures["shards"] > figures["first_pass_shards"] == 500
    assert figures["retry_pass"]["retried"] == figures["retryable_urls"] == 20
    assert figures["kept"] == figures["rows"] == 1000
    # The driver: listings (one per progress poll, every 10 s), markers, the manifest — not a
    # request per shard (500 shards: ~70 measured; the bound leaves room for a slow machine).
    assert figures["driver_requests"] < 300, figures["driver_requests_by_method"]
    # An executor per shard: its part, tar, parquet, stats (+ the URL list and report reads).
    assert figures["executor_requests_per_shard"] < 8, figures
