"""Storage helpers over fsspec, so every stage reads and writes any URL (local, s3://, gs://)."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec


def url_join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def absolute(url: str) -> str:
    """A plain local path made absolute (from this process's working directory); URLs with a
    scheme as they are. A path handed to Spark executors or worker processes must not be
    relative: each resolves it against its own working directory."""
    if not url or "://" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def is_local(url: str) -> bool:
    fs, _ = fsspec.core.url_to_fs(url)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


@contextlib.contextmanager
def atomic_local_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path`` that is renamed onto it only if the block succeeds."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def open_atomic(url: str) -> Iterator[IO[bytes]]:
    """A binary handle whose content readers see whole or not at all, streamed (no copy in
    memory).

    Local files: write to a temporary name, then rename. Object stores (S3, GCS) publish an
    upload only when it completes, so a direct streamed write is atomic there.
    """
    fs, path = fsspec.core.url_to_fs(url)
    if is_local(url):
        with atomic_local_path(path) as tmp, open(tmp, "wb") as handle:
            yield handle
    else:
        # fs.open, not fsspec.open: the latter first checks that the bucket exists (a request)
        with fs.open(path, "wb") as handle:
            yield handle


def write_bytes_atomic(url: str, data: bytes) -> None:
    with open_atomic(url) as handle:
        handle.write(data)


def write_json_atomic(url: str, obj: Any) -> None:
    write_bytes_atomic(url, json.dumps(obj, indent=2, sort_keys=True).encode())


def _one_request(fs: fsspec.AbstractFileSystem) -> dict[str, Any]:
    """Read options that make s3fs fetch a whole object in one GET (it would otherwise ask for
    the object's size first, to split a large read): small files, many of them, on a store
    where each request costs a round trip."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return {"max_concurrency": 1} if {"s3", "s3a"} & set(protocols) else {}


def read_bytes(url: str) -> bytes:
    """A whole (small) file's bytes, in one request on an object store."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs.cat_file(path, **_one_request(fs))


def read_files(
    fs: fsspec.AbstractFileSystem, paths: list[str], on_error: str = "raise"
) -> dict[str, Any]:
    """Many small files' bytes by path, read concurrently where the file system can (s3fs,
    gcsfs: batches of requests in flight), one request each. ``on_error="return"``: a file
    that could not be read maps to its exception instead."""
    if not paths:
        return {}
    contents = fs.cat(list(paths), on_error=on_error, **_one_request(fs))
    if isinstance(contents, bytes):  # a single path that is not a glob: its bytes
        contents = {paths[0]: contents}
    return contents


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


def remove_folder(url: str) -> None:
    """Remove ``url`` and all under it; nothing there is fine."""
    fs, path = fsspec.core.url_to_fs(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
