"""The shard-set contract's file names and readers (written by the pipeline, read by training,
evaluation and the CLIP-score filter).

A shard set is a folder of webdataset tars in img2dataset's layout, closed by ``sizes.json``
(``{"00000.tar": samples, …}``) and then ``manifest.json`` (counts, sources, parameters, code
version): a folder without the manifest is unfinished.
"""

from __future__ import annotations

import re
from typing import Any

from flipcommon.errors import UserError
from flipcommon.storage import exists, read_json, url_join, write_json_atomic

MANIFEST_FILE = "manifest.json"
SIZES_FILE = "sizes.json"
TAR_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}\.tar")


class ShardSetMissing(UserError, FileNotFoundError):
    pass


def manifest_url(root: str) -> str:
    return url_join(root, MANIFEST_FILE)


def sizes_url(root: str) -> str:
    return url_join(root, SIZES_FILE)


def read_manifest(root: str) -> dict[str, Any] | None:
    """The shard set's manifest, or None while the set is unfinished."""
    url = manifest_url(root)
    return read_json(url) if exists(url) else None


def read_sizes(root: str) -> dict[str, int]:
    """Samples per tar, from ``sizes.json``: a clear error where the set is not finished."""
    url = sizes_url(root)
    try:
        sizes = read_json(url)
    except FileNotFoundError as exc:
        raise ShardSetMissing(
            f"{url} not found: is {root} a finished shard set? (run `make shards`)"
        ) from exc
    for name in sizes:  # joined into paths by every reader
        if not TAR_NAME.fullmatch(name):
            raise ShardSetMissing(f"{url}: {ascii(name)[:80]} is not a tar name of this folder")
    return {name: int(n) for name, n in sizes.items()}


def close_shard_set(root: str, sizes: dict[str, int], manifest: dict[str, Any]) -> None:
    """Write ``sizes.json``, then ``manifest.json``: the manifest last, as it marks the set
    finished for every reader."""
    write_json_atomic(sizes_url(root), sizes)
    write_json_atomic(manifest_url(root), manifest)
