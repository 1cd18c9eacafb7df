"""Offline evaluation sets, installed from Debian and PyPI packages (never in the training
corpus). A missing set raises ``DatasetMissing`` naming what to install."""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from flipcommon.errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt",
    "trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
# Label order as the package documents it (and as checked by eye on a contact sheet): Bear,
# Bird, Cat, Cow, Dog, Elephant, Giraffe, Horse, Sheep, Zebra.
ANIMAL_MNIST_CLASSES = [
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
]
TUXPAINT_STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")


class DatasetMissing(UserError, FileNotFoundError):
    pass


@dataclass
class ClassificationSet:
    images: list[Image.Image]
    labels: np.ndarray
    classnames: list[str]


@dataclass
class RetrievalSet:
    images: list[Image.Image]
    captions: list[str]
    caption_image: np.ndarray  # caption i describes image caption_image[i]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _grey_to_images(array: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(a, mode="L").convert("RGB") for a in array]


def fashion_mnist(split: str, limit: int = 0) -> ClassificationSet:
    prefix = {"test": "t10k", "train": "train"}.get(split)
    if prefix is None:
        raise UserError(f"fashion_mnist has splits 'train' and 'test', not {split!r}")
    images_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise DatasetMissing(
            f"{images_path} not found: install the Debian package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist, or `make setup`)"
        )
    images = _read_idx(images_path)
    labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return ClassificationSet(_grey_to_images(images), labels, list(FASHION_MNIST_CLASSES))


ANIMAL_MNIST_TEST_SIZE = 2000


def animal_mnist(split: str = "test", limit: int = 0) -> ClassificationSet:
    """The package ships 10,000 images and no split: in a fixed shuffled order, the last 2,000
    are 'test', the first 8,000 'train', all of them 'all'."""
    if split not in ("train", "test", "all"):
        raise UserError(f"animal_mnist has splits 'train', 'test' and 'all', not {split!r}")
    try:
        import animal_mnist as package
    except ImportError as exc:
        raise DatasetMissing(
            "animal_mnist is not installed: pip install --no-deps animal-mnist==0.4 "
            "(or `make setup`)"
        ) from exc
    data_dir = Path(package.__file__).parent / "data" / "Animal_MNIST"
    # The package ships its arrays as pickles inside the installed wheel; nothing else is read.
    with gzip.open(data_dir / "animal_data_version_3.gz", "rb") as handle:
        images = np.asarray(pickle.load(handle), dtype=np.uint8)
    with gzip.open(data_dir / "animal_label_version_3.gz", "rb") as handle:
        labels = np.asarray(pickle.load(handle), dtype=np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    if split == "train":
        images, labels = images[:-ANIMAL_MNIST_TEST_SIZE], labels[:-ANIMAL_MNIST_TEST_SIZE]
    elif split == "test":
        images, labels = images[-ANIMAL_MNIST_TEST_SIZE:], labels[-ANIMAL_MNIST_TEST_SIZE:]
    if limit:
        images, labels = images[:limit], labels[:limit]
    return ClassificationSet(_grey_to_images(images), labels, list(ANIMAL_MNIST_CLASSES))


def tuxpaint(split: str = "test", limit: int = 0) -> RetrievalSet:
    """Tux Paint stamps with their English description (first line of the .txt)."""
    if not TUXPAINT_STAMPS_DIR.exists():
        raise DatasetMissing(
            f"{TUXPAINT_STAMPS_DIR} not found: install the Debian package "
            "tuxpaint-stamps-default (or `make setup`)"
        )
    images, captions = [], []
    for txt in sorted(TUXPAINT_STAMPS_DIR.rglob("*.txt")):
        png = txt.with_suffix(".png")
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        if not png.exists() or not lines or not lines[0].strip():
            continue
        with Image.open(png) as image:
            images.append(_flatten(image))
        captions.append(lines[0].strip())
        if limit and len(images) >= limit:
            break
    return RetrievalSet(images, captions, np.arange(len(images)))


def _flatten(image: Image.Image, max_side: int = 256) -> Image.Image:
    image = image.convert("RGBA")
    image.thumbnail((max_side, max_side))
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def _corpus_split(corpus_dir: str, split: str) -> pd.DataFrame:
    items_path = Path(corpus_dir) / "items.parquet"
    if not items_path.exists():
        raise DatasetMissing(
            f"{items_path} not found: the held-out sets are rendered with the demo corpus "
            "(run `make shards`, or set demo_corpus_dir)"
        )
    items = pd.read_parquet(items_path)
    if split not in set(items["split"]):
        raise DatasetMissing(
            f"{items_path} has no {split!r} items: it was rendered by an older version of the "
            "demo corpus (run `make shards` to render it again)"
        )
    return items[items["split"] == split].sort_values("key").reset_index(drop=True)


def _heldout_items(corpus_dir: str, dataset: str, limit: int) -> pd.DataFrame:
    """emoji_heldout: the Noto art style, never trained on. concepts_heldout: whole concepts
    never trained on, in the training art styles (skin-tone variants left out of the set, so
    that no two classes or captions differ only by skin tone)."""
    if dataset == "emoji_heldout":
        items = _corpus_split(corpus_dir, "heldout")
    elif dataset == "concepts_heldout":
        items = _corpus_split(corpus_dir, "concept_heldout")
        items = items[~items["name"].str.contains("skin tone")].reset_index(drop=True)
        items["name"] = items["name"].str.lower()
    else:
        raise UserError(f"no held-out set named {dataset!r} (emoji_heldout, concepts_heldout)")
    return items.iloc[:limit] if limit else items


def _load_images(corpus_dir: str, keys: list[str]) -> list[Image.Image]:
    out = []
    for key in keys:
        with Image.open(Path(corpus_dir) / "images" / f"{key}.jpg") as image:
            out.append(image.convert("RGB"))
    return out


def heldout_classification(
    corpus_dir: str, dataset: str, label: str, limit: int = 0
) -> ClassificationSet:
    """A held-out set of the demo corpus, classified by name or group."""
    if label not in ("name", "group"):
        raise UserError(f"{dataset} label must be 'name' or 'group', not {label!r}")
    items = _heldout_items(corpus_dir, dataset, limit)
    classnames = sorted(items[label].unique())
    index = {c: i for i, c in enumerate(classnames)}
    labels = np.array([index[c] for c in items[label]], dtype=np.int64)
    return ClassificationSet(_load_images(corpus_dir, list(items["key"])), labels, classnames)


def heldout_retrieval(corpus_dir: str, dataset: str, limit: int = 0) -> RetrievalSet:
    items = _heldout_items(corpus_dir, dataset, limit)
    images = _load_images(corpus_dir, list(items["key"]))
    return RetrievalSet(images, list(items["caption"]), np.arange(len(images)))
