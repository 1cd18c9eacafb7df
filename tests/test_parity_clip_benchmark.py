"""Parity: our metrics equal clip_benchmark's own functions on the same checkpoint and data."""

import pytest
import torch

from evaluation import datasets
from evaluation.config import TaskConfig
from evaluation.tasks import run_task
from flipcommon.checkpoints import latest_checkpoint, load_model

POINTS = 0.05 / 100  # "to 0.05 points"


class _ClassificationData(torch.utils.data.Dataset):
    def __init__(self, data, preprocess):
        self.data, self.preprocess = data, preprocess
        self.classes = data.classnames  # clip_benchmark reads dataset.classes

    def __len__(self):
        return len(self.data.labels)

    def __getitem__(self, i):
        return self.preprocess(self.data.images[i]), int(self.data.labels[i])


class _RetrievalData(torch.utils.data.Dataset):
    def __init__(self, data, preprocess):
        self.data, self.preprocess = data, preprocess

    def __len__(self):
        return len(self.data.images)

    def __getitem__(self, i):
        captions = [
            c
            for c, img in zip(self.data.captions, self.data.caption_image, strict=True)
            if img == i
        ]
        return self.preprocess(self.data.images[i]), captions


def _collate_retrieval(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


@pytest.fixture(scope="module")
def checkpoint(micro_run):
    return load_model(latest_checkpoint(str(micro_run)))


@pytest.mark.parametrize(
    "dataset,templates",
    [
        ("fashion_mnist", ["{c}", "a photo of a {c}"]),
        ("animal_mnist", ["{c}", "a drawing of a {c}", "{c}, animal"]),
    ],
)
def test_zero_shot_matches_clip_benchmark(checkpoint, dataset, templates):
    from clip_benchmark.metrics import zeroshot_classification

    model, preprocess, tokenizer, _ = checkpoint
    task = TaskConfig("parity", dataset, "zeroshot_classification", templates=templates, limit=300)
    ours = run_task(task, model, preprocess, tokenizer, "cpu", 64, "")["metrics"]
    data = (
        datasets.fashion_mnist("test", 300)
        if dataset == "fashion_mnist"
        else datasets.animal_mnist(limit=300)
    )
    loader = torch.utils.data.DataLoader(_ClassificationData(data, preprocess), batch_size=64)
    theirs = zeroshot_classification.evaluate(
        model, loader, tokenizer, data.classnames, templates, "cpu", amp=False
    )
    assert ours["top1"] == pytest.approx(theirs["acc1"], abs=POINTS)
    assert ours["top5"] == pytest.approx(theirs["acc5"], abs=POINTS)
    assert ours["mean_per_class_recall"] == pytest.approx(
        theirs["mean_per_class_recall"], abs=POINTS
    )


def test_retrieval_matches_clip_benchmark(checkpoint):
    from clip_benchmark.metrics import zeroshot_retrieval

    model, preprocess, tokenizer, _ = checkpoint
    task = TaskConfig("parity", "tuxpaint", "retrieval", limit=120)
    ours = run_task(task, model, preprocess, tokenizer, "cpu", 64, "")["metrics"]
    data = datasets.tuxpaint(limit=120)
    loader = torch.utils.data.DataLoader(
        _RetrievalData(data, preprocess), batch_size=32, collate_fn=_collate_retrieval
    )
    theirs = zeroshot_retrieval.evaluate(
        model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10]
    )
    assert set(theirs) == set(ours)
    for metric, value in theirs.items():
        assert ours[metric] == pytest.approx(value, abs=POINTS), metric
