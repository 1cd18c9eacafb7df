"""Decontamination: keep evaluation images out of the training shards.

Before the download, the images of the evaluation sets (image folders, webdataset tars such as
CLIP_benchmark's layout or a held-out shard set, any fsspec URL) are hashed on Spark into a
blocklist: the sha256 of each file's bytes and a 64-bit perceptual hash (DCT pHash). During the
download every fetched image is checked against it before it is written: an identical file, or
one whose pHash is within ``max_distance`` bits of an evaluation image's (the same picture
re-encoded or resized), is dropped with status ``decontaminated`` and counted.

The blocklist is one parquet file on the output storage; each download task loads it once per
worker process. Near-duplicate lookup uses multi-index hashing: split 64 bits into
``max_distance + 1`` bands; two hashes within that distance agree exactly on at least one band
(pigeonhole), so only hashes sharing a band are compared bit by bit.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import tarfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from flipcommon.storage import write_bytes_atomic

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FILES_PER_TASK = 256
BLOCKLIST_SCHEMA = pa.schema(
    [("source", pa.string()), ("sha256", pa.string()), ("phash", pa.string())]
)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


DCT32 = _dct_matrix(32)


def perceptual_hash(data: bytes) -> int | None:
    """64-bit pHash: the signs of the 8×8 lowest DCT frequencies of a 32×32 grey thumbnail
    against their median. None if the bytes are not an image PIL can read."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at a reduced scale, far cheaper
            if image.mode in ("RGBA", "LA", "P", "PA"):
                # Transparent pixels count as white, as the downloader's resizer composites them.
                rgba = image.convert("RGBA")
                image = Image.new("RGBA", rgba.size, "white")
                image.alpha_composite(rgba)
            grey = image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    except Exception:  # noqa: BLE001 - undecodable bytes simply have no pHash
        return None
    coefficients = DCT32 @ np.asarray(grey, dtype=np.float64) @ DCT32.T
    low = coefficients[:8, :8].ravel()
    bits = low > np.median(low)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


class NearDuplicateIndex:
    """Finds 64-bit hashes within ``max_distance`` bits of a query (multi-index hashing)."""

    def __init__(self, hashes: Iterable[int], max_distance: int):
        self.max_distance = max_distance
        edges = np.linspace(0, 64, max_distance + 2).astype(int)
        self.bands = [
            (int(lo), (1 << int(hi - lo)) - 1) for lo, hi in zip(edges, edges[1:], strict=False)
        ]
        self.tables: list[dict[int, list[int]]] = [defaultdict(list) for _ in self.bands]
        self.hashes = list(dict.fromkeys(hashes))
        for h in self.hashes:
            for table, (shift, mask) in zip(self.tables, self.bands, strict=True):
                table[(h >> shift) & mask].append(h)

    def nearest_distance(self, query: int) -> int | None:
        best = None
        for table, (shift, mask) in zip(self.tables, self.bands, strict=True):
            for candidate in table.get((query >> shift) & mask, ()):
                distance = (candidate ^ query).bit_count()
                if distance <= self.max_distance and (best is None or distance < best):
                    best = distance
        return best

    def __len__(self) -> int:
        return len(self.hashes)


@dataclass
class Blocklist:
    sha256: frozenset[str]
    near: NearDuplicateIndex

    def match(self, data: bytes, sha256: str) -> str | None:
        """The reason to drop these image bytes (whose sha256 hex digest the caller has already
        computed for the shard record), or None."""
        if sha256 in self.sha256:
            return "exact copy of an evaluation image"
        phash = perceptual_hash(data)
        if phash is not None and self.near.nearest_distance(phash) is not None:
            return "near copy of an evaluation image"
        return None


@functools.lru_cache(maxsize=2)
def load_blocklist(url: str, max_distance: int) -> Blocklist:
    """Read once per worker process (tasks of one job reuse it)."""
    with fsspec.open(url, "rb") as handle:
        table = pq.read_table(handle)
    phashes = [int(h, 16) for h in table.column("phash").to_pylist() if h]
    return Blocklist(
        frozenset(table.column("sha256").to_pylist()), NearDuplicateIndex(phashes, max_distance)
    )


def list_work(sources: list[str]) -> list[tuple[str, list[str]]]:
    """Units of hashing work: ("tar", [one tar]) or ("files", [≤ FILES_PER_TASK images])."""
    units: list[tuple[str, list[str]]] = []
    for source in sources:
        fs, root = fsspec.core.url_to_fs(source)
        if not fs.exists(root):
            raise FileNotFoundError(f"decontamination source {source} does not exist")
        paths = [root] if fs.isfile(root) else sorted(fs.find(root))
        protocol = source.split("://", 1)[0] + "://" if "://" in source else ""
        tars = [protocol + p for p in paths if p.endswith(".tar")]
        images = [protocol + p for p in paths if p.lower().endswith(IMAGE_SUFFIXES)]
        units += [("tar", [t]) for t in tars]
        units += [
            ("files", images[i : i + FILES_PER_TASK]) for i in range(0, len(images), FILES_PER_TASK)
        ]
    return units


def hash_unit(unit: tuple[str, list[str]]) -> Iterator[tuple[str, str, str]]:
    kind, urls = unit
    if kind == "files":
        for url in urls:
            with fsspec.open(url, "rb") as handle:
                yield _row(url, handle.read())
        return
    with fsspec.open(urls[0], "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                yield _row(f"{urls[0]}#{member.name}", tar.extractfile(member).read())


def _row(source: str, data: bytes) -> tuple[str, str, str]:
    phash = perceptual_hash(data)
    return source, hashlib.sha256(data).hexdigest(), "" if phash is None else f"{phash:016x}"


def build_blocklist(spark, sources: list[str], url: str) -> int:
    """Hash every image of ``sources`` on Spark; write the blocklist parquet to ``url``."""
    units = list_work(sources)
    if not units:
        raise FileNotFoundError(f"no images or tars found in decontamination sources {sources}")
    rows = (
        spark.sparkContext.parallelize(units, len(units)).flatMap(hash_unit).collect()
    )  # ~100 bytes a row: a million evaluation images is ~100 MB on the driver
    columns = list(zip(*rows, strict=True)) if rows else [[], [], []]
    table = pa.table(
        {name: list(col) for name, col in zip(BLOCKLIST_SCHEMA.names, columns, strict=True)},
        schema=BLOCKLIST_SCHEMA,
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes_atomic(url, buffer.getvalue())  # its presence means "built" on a rerun
    log.info(
        "decontamination blocklist: %d evaluation images from %d sources", len(rows), len(sources)
    )
    return len(rows)
