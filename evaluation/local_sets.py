"""Evaluation sets a user has on disk (any fsspec URL): ImageNet-style image folders,
CLIP_benchmark's webdataset layout, and tars of a shard set our pipeline wrote.

Images are decoded lazily, when their features are extracted; one that cannot be decoded is
skipped there and counted.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath

import fsspec
import numpy as np
import webdataset as wds
from PIL import Image

from evaluation.datasets import ClassificationSet, DatasetMissing, RetrievalSet
from flipcommon.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TAR_IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")


class LazyImages(Sequence):
    """Images decoded on access from file URLs or in-memory bytes."""

    def __init__(self, sources: list[str | bytes]) -> None:
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index):  # type: ignore[override]
        source = self.sources[index]
        if isinstance(source, str):
            with fsspec.open(source, "rb") as handle:
                source = handle.read()
        with Image.open(io.BytesIO(source)) as image:
            return image.convert("RGB")


def _limit(items: list, limit: int) -> list:
    return items[:limit] if limit else items


def image_folder(root: str, split: str, limit: int = 0) -> ClassificationSet:
    """``root/{split}/{class}/*.jpg``; class names from ``root/classnames.txt`` (one per line,
    in sorted folder order) when present, else from the folder names."""
    fs, base = fsspec.core.url_to_fs(root)
    split_dir = f"{base.rstrip('/')}/{split}"
    if not fs.isdir(split_dir):
        raise DatasetMissing(
            f"{root}/{split} not found: an image folder dataset needs {root}/{split}/CLASS/*.jpg"
        )
    folders = sorted(p for p in fs.ls(split_dir, detail=False) if fs.isdir(p))
    if not folders:
        raise DatasetMissing(f"{root}/{split} holds no class folders")
    classnames = [PurePosixPath(f).name.replace("_", " ") for f in folders]
    names_file = f"{base.rstrip('/')}/classnames.txt"
    if fs.exists(names_file):
        listed = [line.strip() for line in fs.cat(names_file).decode().splitlines() if line.strip()]
        if len(listed) != len(folders):
            raise UserError(
                f"{names_file} lists {len(listed)} class names for {len(folders)} class folders"
            )
        classnames = listed
    sources, labels = [], []
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    for label, folder in enumerate(folders):
        files = sorted(p for p in fs.ls(folder, detail=False) if p.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise UserError(f"class folder {folder} is empty: every class needs images")
        sources += [prefix + f for f in files]
        labels += [label] * len(files)
    order = np.random.default_rng(0).permutation(len(labels))  # a limit keeps every class
    sources = _limit([sources[i] for i in order], limit)
    labels_array = _limit([labels[i] for i in order], limit)
    return ClassificationSet(
        LazyImages(sources), np.array(labels_array, dtype=np.int64), classnames
    )


def _read_text(url: str) -> str | None:
    try:
        with fsspec.open(url, "r") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _image_and(urls: list[str], field: str, limit: int) -> Iterator[tuple[bytes, bytes]]:
    """(image bytes, ``field`` bytes) of the samples of the given tars that have both, in
    order, at most ``limit`` (0: all). Tars are grouped into samples by webdataset."""
    count = 0
    for url in urls:
        with fsspec.open(url, "rb") as stream:
            files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}])
            for sample in wds.tariterators.group_by_keys(files):
                image = next((sample[e] for e in TAR_IMAGE_EXTENSIONS if e in sample), None)
                value = sample.get(field)
                if image is None or not value:
                    continue
                yield image, value
                count += 1
                if limit and count >= limit:
                    return


def clip_benchmark_wds(root: str, split: str, task: str, limit: int = 0):
    """CLIP_benchmark's layout: ``classnames.txt``, ``zeroshot_classification_templates.txt``,
    ``dataset_type.txt``, ``{split}/nshards.txt`` and ``{split}/{0..n-1}.tar``. Returns the set
    and the dataset's own templates (or None)."""
    nshards = _read_text(f"{root}/{split}/nshards.txt")
    if nshards is None:
        raise DatasetMissing(
            f"{root}/{split}/nshards.txt not found: expected CLIP_benchmark's webdataset layout "
            "(clip_benchmark_export_wds writes it)"
        )
    urls = [f"{root}/{split}/{i}.tar" for i in range(int(nshards))]
    templates_text = _read_text(f"{root}/zeroshot_classification_templates.txt")
    templates = (
        [t.strip() for t in templates_text.splitlines() if t.strip()] if templates_text else None
    )
    if task == "retrieval":
        images, captions, caption_image = [], [], []
        for image, text in _image_and(urls, "txt", limit):
            for caption in text.decode("utf-8", errors="replace").splitlines():
                captions.append(caption.replace(r"\n", "\n"))
                caption_image.append(len(images))
            images.append(image)
        return RetrievalSet(LazyImages(images), captions, np.array(caption_image)), None
    names_text = _read_text(f"{root}/classnames.txt")
    if names_text is None:
        raise DatasetMissing(f"{root}/classnames.txt not found: zero-shot needs class names")
    classnames = [line.strip() for line in names_text.splitlines() if line.strip()]
    pairs = list(_image_and(urls, "cls", limit))
    labels = np.array([int(label.decode().strip()) for _, label in pairs], dtype=np.int64)
    return ClassificationSet(LazyImages([i for i, _ in pairs]), labels, classnames), templates


def shard_set_retrieval(tar_urls: list[str], limit: int = 0) -> RetrievalSet:
    """Image–caption retrieval on tars of a shard set (e.g. a shard held out of training)."""
    pairs = list(_image_and(tar_urls, "txt", limit))
    images = [image for image, _ in pairs]
    captions = [text.decode("utf-8", errors="replace").strip() for _, text in pairs]
    if not images:
        raise DatasetMissing(f"no image-caption samples in {tar_urls}")
    return RetrievalSet(LazyImages(images), captions, np.arange(len(images)))
