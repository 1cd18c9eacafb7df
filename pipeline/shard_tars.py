"""Reading a committed shard's tar back: its samples streamed in tar order."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

import fsspec

from pipeline.shard_download import ENCODE_FORMAT


def iter_tar_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A shard's samples in tar order, streamed: (key, {extension: bytes}); a sample's members
    sit together in the tar, so a reader may stop after the first few."""
    key, parts = None, {}
    with fsspec.open(url, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name, _, ext = member.name.partition(".")
            if key is not None and name != key:
                yield key, parts
                parts = {}
            key = name
            parts[ext] = tar.extractfile(member).read()
    if key is not None:
        yield key, parts


def read_tar_samples(url: str) -> dict[str, dict[str, bytes]]:
    """A shard's samples in tar order: key -> {extension: bytes} (jpg, txt, json)."""
    samples: dict[str, dict[str, bytes]] = {}
    for key, parts in iter_tar_samples(url):
        samples.setdefault(key, {}).update(parts)
    return samples


def read_tar_images(url: str) -> dict[str, bytes]:
    return {k: p[ENCODE_FORMAT] for k, p in read_tar_samples(url).items() if ENCODE_FORMAT in p}
