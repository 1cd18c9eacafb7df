"""Shard tasks: small shards share a Spark task, and a task of several shards reads ahead and
commits behind without mixing up or losing any shard."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import DownloadConfig, FetchConfig
from pipeline.download import TASK_SAMPLES, TASKS_PER_SLOT, task_groups
from pipeline.shard_download import IO_AHEAD, ShardDownloader
from pipeline.url_shards import UrlList, part_url
from tests.hostile_web import HostileWeb


def test_large_shards_get_a_task_each():
    assert task_groups(list(range(50)), 10_000, slots=4) == [[i] for i in range(50)]


def test_small_shards_share_tasks_and_every_slot_still_gets_several():
    ids = list(range(7, 20_007))
    groups = task_groups(ids, 2, slots=2)
    assert [i for group in groups for i in group] == ids  # each once, in order
    assert max(len(g) for g in groups) * 2 <= TASK_SAMPLES
    assert len(groups) >= 2 * TASKS_PER_SLOT
    few = task_groups(list(range(30)), 2, slots=4)  # too few shards to group
    assert len(few) >= min(30, 4 * TASKS_PER_SLOT)


def test_a_task_of_several_shards_commits_each_and_reports_a_broken_part(tmp_path):
    shards = 3 * IO_AHEAD + 1  # more than the read-ahead and the commits behind together
    broken = IO_AHEAD + 1  # its part is missing: the others must not be held up or mixed
    with HostileWeb() as web:
        urls_dir = tmp_path / "urls"
        urls_dir.mkdir()
        for shard in range(shards):
            if shard == broken:
                continue
            urls = [f"{web.base_url}/ok/{i % 2}.jpg" for i in range(2)]
            captions = [f"shard {shard} sample {i}" for i in range(2)]
            part = part_url(str(urls_dir), shard)
            pq.write_table(pa.table({"URL": urls, "TEXT": captions}), part)
        download = DownloadConfig(image_size=32, samples_per_shard=2, threads=4)
        fetch = FetchConfig(retries=0, allowed_networks=["127.0.0.0/8"])
        url_list = UrlList(str(urls_dir), 2 * shards, 2)
        outcomes = ShardDownloader(str(tmp_path / "out"), url_list, download, fetch)(
            list(range(shards))
        )
    assert len(outcomes) == shards  # one outcome per shard, none twice
    by_shard = {o["shard_id"]: o for o in outcomes}
    assert sorted(by_shard) == list(range(shards))
    assert "error" in by_shard[broken] and "stats" not in by_shard[broken]
    for shard in set(range(shards)) - {broken}:
        assert by_shard[shard]["stats"]["successes"] == 2, by_shard[shard]
        name = f"{shard:05d}"
        stats = json.loads((tmp_path / "out" / f"{name}_stats.json").read_text())
        assert stats["successes"] == 2
        table = pq.read_table(tmp_path / "out" / f"{name}.parquet")
        # written in completion order; each key names its shard and row
        rows = table.select(["key", "caption"]).to_pylist()
        captions = {row["key"]: row["caption"] for row in rows}
        assert captions == {f"{name}{i}": f"shard {shard} sample {i}" for i in (0, 1)}
    assert not (tmp_path / "out" / f"{broken:05d}_stats.json").exists()


def test_a_task_of_several_shards_keeps_to_one_deadline(tmp_path):
    """The first shard of a task waits on a server that drips its answer past the deadline:
    the task still ends at about the deadline, the shards it could not start commit their
    rows as retryable deadline failures (for the final pass), none is lost."""
    import time

    with HostileWeb() as web:
        urls_dir = tmp_path / "urls"
        urls_dir.mkdir()
        for shard in range(3):
            urls = [f"{web.base_url}/drip" if shard == 0 else f"{web.base_url}/ok/1.jpg"] * 2
            table = pa.table({"URL": urls, "TEXT": ["a", "b"]})
            pq.write_table(table, part_url(str(urls_dir), shard))
        download = DownloadConfig(image_size=32, samples_per_shard=2, threads=2)
        download.shard_deadline_s = 2.0
        fetch = FetchConfig(retries=0, deadline_s=30.0, allowed_networks=["127.0.0.0/8"])
        url_list = UrlList(str(urls_dir), 6, 2)
        start = time.monotonic()
        outcomes = ShardDownloader(str(tmp_path / "out"), url_list, download, fetch)([0, 1, 2])
        elapsed = time.monotonic() - start
    assert elapsed < download.shard_deadline_s + 3.0
    stats = {o["shard_id"]: o["stats"] for o in outcomes}
    assert sorted(stats) == [0, 1, 2]
    for shard in (0, 1, 2):
        assert stats[shard]["count"] == 2
        assert stats[shard]["retryable_reasons"] == {"shard deadline exceeded": 2}


def test_a_shard_that_fails_midway_leaves_no_staging_files_or_open_handles(tmp_path, monkeypatch):
    """The disk fills while a shard is written: the shard fails with the reason, its staging
    folder is removed and its files closed (an executor runs thousands of shards), and the
    next shard of the task is written whole."""
    import os

    from pipeline import shard_download

    real_write = shard_download.ShardWriter.write
    calls = {"n": 0}

    def write_until_full(self, image, meta):
        calls["n"] += 1
        if self.name == "00000" and calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_write(self, image, meta)

    monkeypatch.setattr(shard_download.ShardWriter, "write", write_until_full)
    with HostileWeb() as web:
        urls_dir = tmp_path / "urls"
        urls_dir.mkdir()
        for shard in (0, 1):
            urls = [f"{web.base_url}/ok/{i}.jpg" for i in range(2)]
            pq.write_table(
                pa.table({"URL": urls, "TEXT": ["a", "b"]}), part_url(str(urls_dir), shard)
            )
        download = DownloadConfig(image_size=32, samples_per_shard=2, threads=2)
        fetch = FetchConfig(retries=0, allowed_networks=["127.0.0.0/8"])
        out = tmp_path / "out"
        fds_before = len(os.listdir("/proc/self/fd"))
        outcomes = ShardDownloader(str(out), UrlList(str(urls_dir), 4, 2), download, fetch)([0, 1])
        fds_after = len(os.listdir("/proc/self/fd"))
    by_shard = {o["shard_id"]: o for o in outcomes}
    assert "No space left" in by_shard[0]["error"] and "stats" not in by_shard[0]
    assert by_shard[1]["stats"]["successes"] == 2
    assert not any((out / "_work" / "staging").iterdir())
    assert not (out / "00000.tar").exists() and not (out / "00000_stats.json").exists()
    assert fds_after <= fds_before


def test_a_given_up_file_on_s3_leaves_no_object_and_no_open_upload(s3_endpoint, tmp_path):
    """What a failed shard does with its files: on S3 the multipart upload is aborted (an
    incomplete one is billed until aborted) and nothing reaches the name, neither then nor when
    the handle is collected; a local file is closed."""
    import fsspec

    from pipeline.shard_download import give_up

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("give-up")
    for name, size in (("small.tar", 1000), ("large.tar", 12 * 2**20)):  # past one 5 MiB part
        handle = fs.open(f"give-up/{name}", "wb", block_size=5 * 2**20)
        handle.write(b"x" * size)
        give_up(handle)
        handle.close()  # what a finaliser would do: nothing more
        del handle
    fs.invalidate_cache()
    assert fs.ls("give-up") == []
    uploads = fs.call_s3("list_multipart_uploads", Bucket="give-up").get("Uploads", [])
    assert uploads == []
    local = fsspec.filesystem("file").open(str(tmp_path / "a.tar"), "wb")
    give_up(local)
    assert local.closed
