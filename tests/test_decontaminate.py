"""Decontamination: evaluation images (exact or re-encoded copies) never reach the shards."""

from __future__ import annotations

import io
import random
import tarfile

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.decontaminate import NearDuplicateIndex, perceptual_hash
from tests.hostile_web import HostileWeb
from tests.test_fetch import _metadata, quick_fetch


def smooth_image(seed: int, side: int = 128, fmt: str = "PNG", quality: int = 90) -> bytes:
    """A picture-like image (low-frequency structure), unlike noise, whose pHash is meaningful."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    image = coarse.resize((side, side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def test_near_duplicate_index_agrees_with_brute_force():
    rng = random.Random(0)
    stored = [rng.getrandbits(64) for _ in range(2000)]
    index = NearDuplicateIndex(stored, max_distance=4)
    for _ in range(300):
        base = rng.choice(stored)
        flips = rng.sample(range(64), rng.randint(0, 7))
        query = base
        for bit in flips:
            query ^= 1 << bit
        brute = min((query ^ h).bit_count() for h in stored)
        expected = brute if brute <= 4 else None
        assert index.nearest_distance(query) == expected


def test_phash_survives_resize_and_reencode_but_tells_pictures_apart():
    original = perceptual_hash(smooth_image(1))
    copy = perceptual_hash(smooth_image(1, side=90, fmt="JPEG", quality=70))
    other = perceptual_hash(smooth_image(2))
    assert (original ^ copy).bit_count() <= 4
    assert (original ^ other).bit_count() > 12
    assert perceptual_hash(b"<html>not an image</html>") is None


def test_stage_drops_evaluation_images(tmp_path, spark):
    from pipeline.config import PipelineConfig
    from pipeline.stage import build_shard_set

    eval_dir = tmp_path / "eval_set" / "class_a"
    eval_dir.mkdir(parents=True)
    (eval_dir / "exact.png").write_bytes(smooth_image(10))
    (eval_dir / "near.png").write_bytes(smooth_image(11, side=160))
    tar_path = tmp_path / "heldout-000000.tar"
    with tarfile.open(tar_path, "w") as tar:
        data = smooth_image(12, fmt="JPEG")
        info = tarfile.TarInfo("sample0001.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with HostileWeb() as web:
        web.files = {
            "exact.png": smooth_image(10),  # the very file of the eval folder
            "near.jpg": smooth_image(11, side=100, fmt="JPEG", quality=75),  # re-encoded, resized
            "from-tar.jpg": smooth_image(12, fmt="JPEG"),  # identical to the tar member
            "unrelated-1.png": smooth_image(13),
            "unrelated-2.jpg": smooth_image(14, fmt="JPEG"),
        }
        urls = [f"{web.base_url}/file/{name}" for name in web.files]
        config = PipelineConfig(output_dir=str(tmp_path / "shards"))
        config.download.image_size = 32
        config.download.threads = 2
        config.fetch = quick_fetch()
        config.decontamination.sources = [str(tmp_path / "eval_set"), str(tar_path)]
        manifest = build_shard_set(
            spark, config, [([_metadata(tmp_path / "m.parquet", urls)], "parquet")]
        )

    rows = pd.concat([pd.read_parquet(p) for p in (tmp_path / "shards").glob("*.parquet")])
    outcome = {
        u.rsplit("/", 1)[1]: (s, e)
        for u, s, e in zip(rows["url"], rows["status"], rows["error_message"], strict=True)
    }
    assert outcome["exact.png"] == ("decontaminated", "exact copy of an evaluation image")
    assert outcome["from-tar.jpg"] == ("decontaminated", "exact copy of an evaluation image")
    assert outcome["near.jpg"] == ("decontaminated", "near copy of an evaluation image")
    assert outcome["unrelated-1.png"][0] == outcome["unrelated-2.jpg"][0] == "success"
    counts = manifest["counts"]
    assert counts["download"]["decontaminated"] == 3 and counts["kept"] == 2
    assert manifest["parameters"]["decontamination"]["max_distance"] == 4
