"""Every picture a browser shows, served as ordinary web servers serve it, ends in the shards as
an RGB JPEG the right way up: through the whole stage (Spark, our fetch, the resizer) from a
loopback web (tests/formats_web.py)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import InputConfig, PipelineConfig
from pipeline.ingest import layout_of
from pipeline.stage import build_shard_set
from tests.formats_web import KINDS, PICTURE, FormatsWeb
from tests.formats_web import shown as browser_view
from tests.test_fetch import quick_fetch


def test_every_kind_is_kept_as_an_upright_rgb_jpeg(tmp_path, spark):
    with FormatsWeb() as web:
        urls = web.urls()
        meta = tmp_path / "formats.parquet"
        names = list(urls)
        pq.write_table(pa.table({"URL": [urls[n] for n in names], "TEXT": names}), meta)
        config = PipelineConfig(output_dir=str(tmp_path / "shards"), input=InputConfig())
        config.filters.min_caption_chars = 0  # the captions are the kinds' names ("gif")
        config.download.image_size = 64
        config.download.resize_mode = "keep_ratio"
        config.download.threads = 4
        config.fetch = quick_fetch()
        config.spark.shuffle_partitions = 2
        build_shard_set(spark, config, [([str(meta)], layout_of(config.input))])
    rows = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "shards").glob("*.parquet")))
    assert sorted(rows["caption"]) == sorted(KINDS)
    failed = rows[rows["status"] != "success"]
    assert failed.empty, failed[["caption", "error_message"]].to_dict("records")
    stored = {}
    for tar_path in (tmp_path / "shards").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, body in members.items():
            if name.endswith(".json"):
                sample = json.loads(body)
                stored[sample["caption"]] = (members[name[:-5] + ".jpg"], sample)
    assert set(stored) == set(KINDS)
    for name, (jpeg, sample) in stored.items():
        assert sample["url"] == urls[name]  # recorded as given, raw UTF-8 and spaces included
        shown = KINDS[name].shown
        assert (sample["original_width"], sample["original_height"]) == shown, name
        with Image.open(io.BytesIO(jpeg)) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB"), name
            stored_pixels = np.asarray(image, dtype=np.float64)
            width, height = image.size
        assert abs(width / height - shown[0] / shown[1]) < 0.05, name  # not stretched
        # the picture a browser shows, not turned, mirrored, another frame or alpha left dark
        expected = np.asarray(
            browser_view(name).resize(stored_pixels.shape[1::-1], Image.Resampling.BICUBIC),
            dtype=np.float64,
        )
        assert np.abs(stored_pixels - expected).mean() < 12, name


def test_the_check_tells_a_wrong_turn_apart():
    """The comparison above is strict enough: the right view of the rotated JPEG differs from
    its mirror image and from the other quarter turn by far more than the threshold."""
    right = np.asarray(browser_view("jpeg, EXIF-rotated"), dtype=np.float64)
    for wrong in (Image.Transpose.ROTATE_90, Image.Transpose.TRANSVERSE):
        other = np.asarray(PICTURE.transpose(wrong), dtype=np.float64)
        assert np.abs(right - other).mean() > 40
