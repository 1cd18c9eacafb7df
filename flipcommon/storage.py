"""Storage helpers over fsspec, so every stage reads and writes any URL (local, s3://, gs://)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import fsspec


def url_join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write ``data`` so readers never see a half-written file.

    Local and POSIX-like file systems get write-to-temp then rename; object stores (S3, GCS)
    already make a single PUT visible all at once, so a direct write is atomic there.
    """
    fs, path = fsspec.core.url_to_fs(url)
    if fs.protocol in ("file", "local") or "file" in fs.protocol:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        fs.makedirs(fs._parent(path), exist_ok=True)
        with fs.open(tmp, "wb") as handle:
            handle.write(data)
        fs.mv(tmp, path)
    else:
        with fs.open(path, "wb") as handle:
            handle.write(data)


def write_json_atomic(url: str, obj: Any) -> None:
    write_bytes_atomic(url, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(url: str) -> Any:
    with fsspec.open(url, "r") as handle:
        return json.load(handle)


def exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def remove_if_exists(url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path)
