"""Reading a shard's tar back: its samples streamed in tar order, each key checked.

A sample's key becomes a file name where a reader writes samples out (the explorer's images),
so a key must be a plain name: a tar member named ``/etc/x.jpg`` or ``../x.jpg`` is refused,
not followed.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator

import fsspec

from flipcommon.errors import UserError

IMAGE_EXTENSION = "jpg"  # what the pipeline encodes every image as
# img2dataset's keys are digits; webdataset allows more, but never a path
SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,200}")


class UnsafeSampleKey(UserError):
    pass


def checked_key(key: str, url: str) -> str:
    if not SAFE_KEY.fullmatch(key):
        raise UnsafeSampleKey(
            f"{url}: sample key {ascii(key)[:80]} is not a plain name (letters, digits, _ and -)"
        )
    return key


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
            key = checked_key(name, url)
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
    return {k: p[IMAGE_EXTENSION] for k, p in read_tar_samples(url).items() if IMAGE_EXTENSION in p}
