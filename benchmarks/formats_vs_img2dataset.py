"""Which pictures are kept, as a browser would show them: our download step against raw
img2dataset on the same URLs from the formats web (tests/formats_web.py: GIF, animated GIF,
EXIF-rotated, CMYK and progressive JPEG, WebP, 16-bit / palette / RGBA PNG, gzip-encoded,
chunked and HTTP/1.0 bodies, raw UTF-8 and spaces in a URL).

    python benchmarks/formats_vs_img2dataset.py

Per kind and side: kept or the failure reason, and whether what was kept is an RGB JPEG the
right way up (a browser's view). Ours: the shard task's fetch and finish (make_processor,
process_all); img2dataset: ``img2dataset.download`` with its defaults for the rest (one
process, 4 threads, the same image size and resize mode).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.config import DownloadConfig, FetchConfig  # noqa: E402
from pipeline.shard_download import make_processor, process_all  # noqa: E402
from tests.formats_web import KINDS, FormatsWeb  # noqa: E402

IMAGE_SIZE = 64
RESIZE_MODE = "keep_ratio"


def as_shown(jpeg: bytes, kind: str) -> str:
    """ "ok" when the stored image is an RGB JPEG the right way up; else what is wrong."""
    with Image.open(io.BytesIO(jpeg)) as image:
        fmt, mode, (width, height) = image.format, image.mode, image.size
    shown_width, shown_height = KINDS[kind].shown
    problems = []
    if (fmt, mode) != ("JPEG", "RGB"):
        problems.append(f"{fmt} {mode}")
    if (width > height) != (shown_width > shown_height):
        problems.append("on its side")
    return ", ".join(problems) or "ok"


def ours(urls: dict[str, str]) -> dict[str, str]:
    download = DownloadConfig(image_size=IMAGE_SIZE, resize_mode=RESIZE_MODE, threads=4)
    fetch = FetchConfig(allowed_networks=["127.0.0.0/8"], retries=0, deadline_s=5)
    processor = make_processor(download, fetch)
    names = list(urls)
    items = list(enumerate(urls[name] for name in names))
    outcome = {}
    for index, image, result in process_all(items, processor, 4, time.monotonic() + 120):
        name = names[index]
        outcome[name] = as_shown(image, name) if image else str(result["error_message"])
    return outcome


def img2dataset_raw(urls: dict[str, str], folder: Path) -> dict[str, str]:
    from img2dataset import download

    names = list(urls)
    meta = folder / "urls.parquet"
    pq.write_table(pa.table({"url": [urls[n] for n in names], "caption": names}), meta)
    download(
        url_list=str(meta),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        output_folder=str(folder / "out"),
        output_format="files",
        processes_count=1,
        thread_count=4,
        image_size=IMAGE_SIZE,
        resize_mode=RESIZE_MODE,
        timeout=5,
        retries=0,
        enable_wandb=False,
        distributor="multiprocessing",
    )
    outcome = {}
    for part in sorted((folder / "out").glob("*.parquet")):
        for row in pd.read_parquet(part).to_dict("records"):
            name = row["caption"]
            if row["status"] == "success":
                jpeg = next((folder / "out").rglob(f"{row['key']}.jpg")).read_bytes()
                outcome[name] = as_shown(jpeg, name)
            else:
                outcome[name] = str(row["error_message"])[:40]
    return outcome


def main() -> int:
    with FormatsWeb() as web, tempfile.TemporaryDirectory() as tmp:
        urls = web.urls()
        mine = ours(urls)
        theirs = img2dataset_raw(urls, Path(tmp))
    width = max(len(name) for name in KINDS)
    print(f"{'kind':<{width}}  {'ours':<24}  img2dataset")
    for name in KINDS:
        print(f"{name:<{width}}  {mine.get(name, 'missing'):<24}  {theirs.get(name, 'missing')}")
    kept = sum(v == "ok" for v in mine.values()), sum(v == "ok" for v in theirs.values())
    print(f"kept as a browser shows them: ours {kept[0]}/{len(KINDS)}, img2dataset {kept[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
