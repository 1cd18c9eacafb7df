"""The pipeline stage reading metadata from and writing shards to S3, through a real S3 endpoint
(moto) behind a proxy that fails a share of requests, run as a batch job runs it: its own
process, some URLs failing retryably (so the final pass runs), and no task may raise."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import fsspec
import pytest

from tests.hostile_web import HostileWeb
from tests.s3_fault_proxy import FaultyS3Proxy
from tests.test_fetch import _metadata

REPO = Path(__file__).parent.parent


@pytest.mark.slow
def test_stage_on_s3_survives_failing_requests(s3_endpoint, tmp_path):
    with HostileWeb() as web, FaultyS3Proxy(s3_endpoint, 0.10, 0.05, seed=3) as proxy:
        paths = [f"/ok/{i}.jpg" for i in range(40)] + ["/404", "/truncated.jpg", "/noai"]
        paths += ["/flaky", "/500"]  # retryable: left to the final pass
        urls = [web.base_url + p for p in paths]
        local = _metadata(tmp_path / "meta.parquet", urls)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)  # straight to moto: set-up
        fs.mkdir("flip-pipeline")
        fs.put(local, "flip-pipeline/meta/part-0.parquet")
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "PYSPARK_PYTHON": sys.executable}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline",
                "configs/pipeline/demo.yaml",
                "demo.enabled=false",
                "input.urls=[s3://flip-pipeline/meta/]",
                "output_dir=s3://flip-pipeline/shards",
                "download.samples_per_shard=10",
                "download.image_size=32",
                "download.threads=4",
                "fetch.deadline_s=5",
                "fetch.retries=1",
                "fetch.backoff_base_s=0.1",
                f"fetch.allowed_origins=[{web.base_url}]",  # the test web, nothing else
                "spark.master=local[2]",
                "spark.driver_memory=1g",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        # Spark retries a task that raised and the stage may still finish: any traceback from
        # an executor is a failure here all the same.
        assert "Traceback" not in result.stderr, result.stderr[-5000:]
        failed = proxy.counts["failed_before"] + proxy.counts["failed_after"]
        print(f"S3 requests through the faulty proxy: {proxy.counts}")

    assert failed > 8, proxy.counts  # the endpoint really did fail requests
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    manifest = json.loads(fs.cat("flip-pipeline/shards/manifest.json"))
    sizes = json.loads(fs.cat("flip-pipeline/shards/sizes.json"))
    counts = manifest["counts"]
    assert counts["rows_in"] == len(urls) and counts["kept"] == 41
    # 404, X-Robots-Tag, and /500 that failed again in the final pass
    assert counts["download"]["failed_to_download"] == 3
    assert counts["download"]["failed_to_resize"] == 1  # truncated
    assert counts["download"]["retry_pass"] == {"retried": 2, "recovered": 1}  # /flaky
    # No partial object is visible: every tar in the listing is whole and matches sizes.json.
    tars = sorted(p for p in fs.ls("flip-pipeline/shards") if p.endswith(".tar"))
    assert [Path(p).name for p in tars] == sorted(sizes)
    for path in tars:
        with tarfile.open(fileobj=io.BytesIO(fs.cat(path))) as tar:
            images = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
        assert len(images) == sizes[Path(path).name]
    assert not fs.exists("flip-pipeline/shards/_work/staging") or not fs.ls(
        "flip-pipeline/shards/_work/staging"
    )
