"""Boxes blurred on request (download.bbox_col, DataComp's face_bboxes): read from the metadata,
turned upright with the image, blurred by img2dataset's blurrer, end to end through the stage;
a value that is not a list of boxes fails its sample instead of writing it unblurred."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from pipeline.blur_boxes import BAD_BOXES, BadBoxes, parse_boxes, upright_boxes
from pipeline.config import DownloadConfig, FetchConfig, InputConfig, PipelineConfig
from pipeline.fetch import FetchResult
from pipeline.ingest import layout_of
from pipeline.resize_bounds import TOO_WIDE_TO_BLUR
from pipeline.shard_download import make_processor
from pipeline.stage import build_shard_set
from pipeline.task_memory import (
    BLUR_BYTES_PER_PIXEL,
    TaskMemoryError,
    check_task_memory,
    task_memory,
)
from tests.hostile_web import HostileWeb
from tests.test_fetch import quick_fetch

LEFT_HALF = [0.0, 0.0, 0.5, 1.0]


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(pixels: np.ndarray, fmt: str = "PNG", orientation: int = 1) -> bytes:
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, fmt, exif=exif.tobytes())
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


def halves_spread(jpeg: bytes) -> tuple[float, float]:
    """Standard deviation of the left and right halves' pixels (blurred noise: low)."""
    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), dtype=np.float64)
    middle = pixels.shape[1] // 2
    return float(pixels[:, : middle - 4].std()), float(pixels[:, middle + 4 :].std())


def test_box_values_as_the_metadata_brings_them():
    assert parse_boxes(None) == parse_boxes("") == parse_boxes("[]") == parse_boxes([]) == []
    assert parse_boxes("[[0.1, 0.2, 0.3, 0.4]]") == [(0.1, 0.2, 0.3, 0.4)]
    # a detector's box a little past the edge is clipped to the image
    assert parse_boxes([[-0.03, 0, 1.04, 1]]) == [(0.0, 0.0, 1.0, 1.0)]
    for bad in (
        "[[10, 20, 50, 80]]",  # pixels, not fractions: clipped, it would cover nothing
        "[[-5, -5, -1, -1]]",
        "[[0.5, 0.5, 0.5, 0.5]]",  # no area
        "[" * 100_000,  # nested past Python's recursion limit
        "[[1" + "0" * 400 + ", 0, 1, 1]]",  # past a float
        "not json",
        "{}",
        '"[[0, 0, 1, 1]]"',
        "[[0, 0, 1]]",
        "[[0.5, 0.5, 0.1, 0.1]]",  # inverted
        "[[0, 0, NaN, 1]]",
        "[[true, 0, 1, 1]]",
        '[["0", 0, 1, 1]]',
        json.dumps([[0, 0, 1, 1]] * 1025),
        42,
    ):
        with pytest.raises(BadBoxes, match=BAD_BOXES):
            parse_boxes(bad)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_turn_with_the_image_as_pillow_turns_it(orientation):
    """A white box on a black 40 × 20 image stored under each EXIF orientation: once Pillow
    turns the image upright, the white pixels lie where upright_boxes puts the box."""
    stored = np.zeros((20, 40), np.uint8)
    box = (0.1, 0.2, 0.35, 0.6)  # x in [4, 14), y in [4, 12)
    stored[4:12, 4:14] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.fromarray(stored)
    image.info["exif"] = exif.tobytes()
    image.getexif()[0x0112] = orientation
    upright = np.asarray(ImageOps.exif_transpose(image))
    ys, xs = np.nonzero(upright)
    height, width = upright.shape
    seen = (xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height)
    (expected,) = upright_boxes([box], orientation)
    assert np.allclose(seen, expected, atol=1e-9), (seen, expected)


def test_the_box_is_blurred_and_the_rest_is_not():
    processor = make_processor(
        DownloadConfig(image_size=64, bbox_col="face_bboxes"), FetchConfig(robots_txt=False)
    )
    data = encoded(noise(128, 128))  # square: no border to pad it
    image, result = processor.finish(FetchResult(data, None), json.dumps([LEFT_HALF]))
    assert result["status"] == "success"
    blurred, sharp = halves_spread(image)
    assert blurred < sharp / 3, (blurred, sharp)
    image, _ = processor.finish(FetchResult(data, None), None)  # no faces: nothing blurred
    left, right = halves_spread(image)
    assert left > sharp / 2 and right > sharp / 2
    image, result = processor.finish(FetchResult(data, None), "[[0, 0, 1]]")
    assert image is None and result["error_message"] == BAD_BOXES


def test_boxes_of_an_image_stored_on_its_side_are_blurred_where_they_are_shown():
    """A JPEG stored turned (EXIF orientation 6: shown turned clockwise): a box on the stored
    image's top half is the shown image's right half."""
    processor = make_processor(
        DownloadConfig(image_size=64, bbox_col="face_bboxes"), FetchConfig(robots_txt=False)
    )
    data = encoded(noise(128, 128), "JPEG", orientation=6)
    image, result = processor.finish(FetchResult(data, None), [[0.0, 0.0, 1.0, 0.5]])
    assert result["status"] == "success" and (result["width"], result["height"]) == (64, 64)
    shown_left, shown_right = halves_spread(image)
    assert shown_right < shown_left / 3, (shown_left, shown_right)


def test_an_image_too_long_to_blur_quickly_fails_in_the_shorter_side_modes():
    """center_crop scales the shorter side: a 20 × 400 image would be blurred at 64 × 1,280
    with a kernel of a fifth of that; past 4:1 it fails instead. border shrinks the long side:
    blurred at 64 × 3, kept."""
    data = encoded(noise(400, 20))
    for mode, status in (("center_crop", "failed_to_resize"), ("border", "success")):
        download = DownloadConfig(image_size=64, resize_mode=mode, bbox_col="face_bboxes")
        processor = make_processor(download, FetchConfig(robots_txt=False))
        _, result = processor.finish(FetchResult(data, None), [LEFT_HALF])
        assert result["status"] == status, (mode, result)
        if status != "success":
            assert result["error_message"] == TOO_WIDE_TO_BLUR
        _, unblurred = processor.finish(FetchResult(data, None), [])  # no boxes: no limit
        assert unblurred["status"] == "success"


def test_blurring_at_the_size_images_come_is_refused():
    with pytest.raises(TaskMemoryError, match="choose a resize mode"):
        check_task_memory(DownloadConfig(resize_mode="no", bbox_col="face_bboxes"), FetchConfig())


def test_a_url_list_built_with_other_blurring_is_not_reused():
    from pipeline.stage import url_list_fingerprint

    config = PipelineConfig(input=InputConfig(save_additional_columns=["face_bboxes"]))
    plain = url_list_fingerprint(config, ["meta.parquet"])
    config.download.bbox_col = "face_bboxes"
    assert url_list_fingerprint(config, ["meta.parquet"]) != plain


def test_blurring_states_its_memory():
    without = task_memory(DownloadConfig(), FetchConfig())
    border = task_memory(DownloadConfig(bbox_col="face_bboxes"), FetchConfig())
    crop = DownloadConfig(bbox_col="face_bboxes", resize_mode="center_crop", max_aspect_ratio=4)
    added = set(border) - set(without)
    assert added == {"blurring boxes (download.bbox_col)"}
    assert border["blurring boxes (download.bbox_col)"] == BLUR_BYTES_PER_PIXEL * 256**2
    cropped = task_memory(crop, FetchConfig())["blurring boxes (download.bbox_col)"]
    assert cropped == BLUR_BYTES_PER_PIXEL * 4 * 256**2


@pytest.mark.parametrize("reader", ["spark", "fsspec"])
def test_datacomp_face_boxes_are_blurred_end_to_end(tmp_path, spark, reader):
    """DataComp's parquet (face_bboxes: a list of lists of doubles) through the stage with
    download.bbox_col=face_bboxes: the first image's left half blurred, the second (no faces)
    untouched, the third's unreadable boxes failing it; the boxes are carried into each
    sample's JSON."""
    pixels = noise(128, 128)
    with HostileWeb() as web:
        for i in range(3):
            web.files[f"noise{i}.png"] = encoded(pixels)
        urls = [f"{web.base_url}/file/noise{i}.png" for i in range(3)]
        boxes = pa.array([[LEFT_HALF], [], [[0.5, 0.5, 0.1]]], pa.list_(pa.list_(pa.float64())))
        meta = tmp_path / "datacomp.parquet"
        table = {"uid": [f"{i:032x}" for i in range(3)], "url": urls, "text": ["a", "b", "c"]}
        pq.write_table(pa.table({**table, "face_bboxes": boxes}), meta)
        config = PipelineConfig(
            output_dir=str(tmp_path / "shards"),
            input=InputConfig(urls=[str(meta)], preset="datacomp", reader=reader),
        )
        config.filters.min_caption_chars = 0
        config.download.image_size = 64
        config.download.threads = 2
        config.download.bbox_col = "face_bboxes"
        config.fetch = quick_fetch()
        config.spark.shuffle_partitions = 2
        build_shard_set(spark, config, [([str(meta)], layout_of(config.input))])
    rows = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "shards").glob("*.parquet")))
    by_url = {row["url"]: row for _, row in rows.iterrows()}
    assert by_url[urls[2]]["error_message"] == BAD_BOXES
    samples = {}
    for tar_path in (tmp_path / "shards").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, body in members.items():
            if name.endswith(".json"):
                meta_json = json.loads(body)
                samples[meta_json["url"]] = (members[name[:-5] + ".jpg"], meta_json)
    assert set(samples) == set(urls[:2])
    blurred, sharp = halves_spread(samples[urls[0]][0])
    assert blurred < sharp / 3, (blurred, sharp)
    left, right = halves_spread(samples[urls[1]][0])
    assert min(left, right) > sharp / 2
    assert json.loads(samples[urls[0]][1]["face_bboxes"]) == [LEFT_HALF]
    assert json.loads(samples[urls[1]][1]["face_bboxes"]) == []


def test_a_url_list_without_the_box_column_fails_the_shard_not_its_faces(tmp_path):
    """A URL list made without download.bbox_col (by hand, or by another config) given to a
    blurring download: the shard fails with the reason and writes nothing, instead of its
    images unblurred; the column is found in any case."""
    from pipeline.shard_download import ShardDownloader, blur_column
    from pipeline.url_shards import UrlList, part_url

    assert blur_column(["url", "Face_BBoxes"], "face_bboxes") == "Face_BBoxes"
    with HostileWeb() as web:
        urls_dir = tmp_path / "urls"
        urls_dir.mkdir()
        urls = [f"{web.base_url}/ok/{i}.jpg" for i in range(2)]
        pq.write_table(
            pa.table({"URL": urls, "TEXT": ["a face", "another"]}), part_url(str(urls_dir), 0)
        )
        download = DownloadConfig(
            image_size=32, samples_per_shard=2, threads=2, bbox_col="face_bboxes"
        )
        fetch = FetchConfig(retries=0, allowed_networks=["127.0.0.0/8"])
        out = tmp_path / "out"
        outcomes = ShardDownloader(str(out), UrlList(str(urls_dir), 2, 2), download, fetch)([0])
    assert len(outcomes) == 1 and "stats" not in outcomes[0]
    assert "no such column" in outcomes[0]["error"], outcomes
    assert not any(out.glob("**/*.tar"))  # nothing written, blurred or not
