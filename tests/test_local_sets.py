"""Datasets on disk: image folders, CLIP_benchmark's webdataset layout (written by
clip_benchmark's own exporter), tars of our shard sets; broken images are skipped and counted."""

import json

import pytest
import torch

from evaluation.config import EvalConfig, TaskConfig
from evaluation.datasets import DatasetMissing, fashion_mnist, tuxpaint
from evaluation.local_sets import clip_benchmark_wds, image_folder, shard_set_retrieval
from flipcommon.errors import UserError


@pytest.fixture(scope="module")
def folder_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    data = fashion_mnist("test", limit=60)
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        class_dir = root / "val" / f"{label:02d}_{data.classnames[label].replace(' ', '_')}"
        class_dir.mkdir(parents=True, exist_ok=True)
        image.save(class_dir / f"{i:04d}.png")
    broken = next((root / "val").iterdir()) / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    return root


def test_image_folder_reads_classes_from_folders(folder_set):
    data = image_folder(str(folder_set), "val")
    assert len(data.labels) == 61
    assert data.classnames[0].startswith("00 ")
    assert data.images[0].mode == "RGB"


def test_image_folder_missing_split_is_a_clear_error(folder_set):
    with pytest.raises(DatasetMissing, match="CLASS"):
        image_folder(str(folder_set), "train")


def test_empty_class_folder_is_a_clear_error(tmp_path):
    data = fashion_mnist("test", limit=2)
    (tmp_path / "val" / "shirt").mkdir(parents=True)
    data.images[0].save(tmp_path / "val" / "shirt" / "0.png")
    (tmp_path / "val" / "sandal").mkdir()  # no images: its recall would be undefined
    with pytest.raises(UserError, match="sandal is empty"):
        image_folder(str(tmp_path), "val")


def test_broken_image_is_skipped_and_counted(folder_set, micro_run, demo_corpus_dir, tmp_path):
    from evaluation.stage import run

    task = TaskConfig(
        "folder", "image_folder", "zeroshot_classification", path=str(folder_set), split="val"
    )
    records = run(
        EvalConfig(
            train_run_dir=str(micro_run),
            output_dir=str(tmp_path),
            demo_corpus_dir=str(demo_corpus_dir),
            tasks=[task],
            device="cpu",
        )
    )
    assert records[0]["details"]["skipped_images"] == 1
    assert records[0]["counts"]["samples"] == 60


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, images, labels, classes):
        self.images, self.labels, self.classes = images, labels, classes
        self.templates = ["a photo of a {c}.", "{c}"]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def test_clip_benchmark_webdataset_layout(tmp_path):
    from clip_benchmark.webdataset_builder import PIL_to_bytes, convert_dataset

    data = fashion_mnist("test", limit=30)
    pairs = _Pairs(data.images, [int(x) for x in data.labels], data.classnames)
    convert_dataset(pairs, "test", str(tmp_path), transform=PIL_to_bytes("png"), verbose=False)
    ours, templates = clip_benchmark_wds(str(tmp_path), "test", "classification")
    assert ours.classnames == data.classnames
    assert templates == ["a photo of a {c}.", "{c}"]
    assert ours.labels.tolist() == data.labels.tolist()
    assert ours.images[0].size == (28, 28)


def test_clip_benchmark_retrieval_layout(tmp_path):
    from clip_benchmark.webdataset_builder import PIL_to_bytes, convert_retrieval_dataset

    data = tuxpaint(limit=12)
    pairs = [
        (image, [caption, caption.upper()])
        for image, caption in zip(data.images, data.captions, strict=True)
    ]
    convert_retrieval_dataset(
        pairs, "test", str(tmp_path), transform=PIL_to_bytes("png"), verbose=False
    )
    ours, _ = clip_benchmark_wds(str(tmp_path), "test", "retrieval")
    assert len(ours.images) == 12 and len(ours.captions) == 24
    assert ours.caption_image.tolist() == [i // 2 for i in range(24)]


def test_held_out_shard_of_our_shard_set(shard_set):
    sizes = json.loads((shard_set / "sizes.json").read_text())
    # the last shard with samples (a final-pass shard may keep none: its retries failed again)
    last = sorted(name for name, n in sizes.items() if n)[-1]
    data = shard_set_retrieval([str(shard_set / last)])
    assert len(data.images) == len(data.captions) == sizes[last]


def test_templates_from_clip_benchmark_and_from_the_dataset():
    from evaluation.tasks import resolve_templates

    imagenet = resolve_templates(TaskConfig(templates=["@clip_benchmark:imagenet1k"]), None)
    assert len(imagenet) == 80 and all("{c}" in t for t in imagenet)
    seven = resolve_templates(TaskConfig(templates=["@imagenet7"]), None)
    assert len(seven) == 7 and set(seven) <= set(imagenet)  # a subset of CLIP's 80
    assert resolve_templates(TaskConfig(), ["x {c}"]) == ["x {c}"]
    assert resolve_templates(TaskConfig(), None) == ["{c}"]
    with pytest.raises(UserError, match="no template set"):
        resolve_templates(TaskConfig(templates=["@clip_benchmark:nope"]), None)
