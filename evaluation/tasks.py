"""Run one task of a suite: load its dataset, extract features, compute its metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch

from evaluation import datasets, local_sets, metrics
from evaluation.config import TaskConfig
from evaluation.datasets import ClassificationSet, RetrievalSet
from evaluation.examples import retrieval_examples
from evaluation.features import image_features, text_features
from evaluation.linear_probe import linear_probe
from flipcommon.errors import UserError

BUILTIN = ("fashion_mnist", "animal_mnist", "tuxpaint", "emoji_heldout", "concepts_heldout")
DEMO_CORPUS_SETS = ("emoji_heldout", "concepts_heldout")
LOCAL = ("image_folder", "clip_benchmark_wds", "shard_set")


def load_dataset(task: TaskConfig, corpus_dir: str, split: str | None = None, limit: int = -1):
    """The task's dataset and its own prompt templates (None when it has none)."""
    split = task.split if split is None else split
    limit = task.limit if limit < 0 else limit
    if task.dataset in LOCAL and not task.path:
        raise UserError(f"task {task.name}: dataset {task.dataset} needs path= (where it is)")
    if task.dataset == "fashion_mnist":
        return datasets.fashion_mnist(split, limit), None
    if task.dataset == "animal_mnist":
        return datasets.animal_mnist(split, limit), None
    if task.dataset == "tuxpaint":
        return datasets.tuxpaint(split, limit), None
    if task.dataset in DEMO_CORPUS_SETS:
        if task.task == "retrieval":
            return datasets.heldout_retrieval(corpus_dir, task.dataset, limit), None
        return (
            datasets.heldout_classification(corpus_dir, task.dataset, task.label, limit),
            None,
        )
    if task.dataset == "image_folder":
        return local_sets.image_folder(task.path, split, limit), None
    if task.dataset == "clip_benchmark_wds":
        kind = "retrieval" if task.task == "retrieval" else "classification"
        return local_sets.clip_benchmark_wds(task.path, split, kind, limit)
    if task.dataset == "shard_set":
        return local_sets.shard_set_retrieval(task.path.split(","), limit), None
    raise UserError(
        f"task {task.name}: unknown dataset {task.dataset!r} ({', '.join(BUILTIN + LOCAL)})"
    )


# The 7 of CLIP's 80 ImageNet prompts that its authors found best as an ensemble (CLIP's
# "Prompt Engineering for ImageNet" notebook); the subset FLIP-style evaluations quote.
IMAGENET_7_TEMPLATES = [
    "itap of a {c}.",
    "a bad photo of the {c}.",
    "a origami {c}.",
    "a photo of the large {c}.",
    "a {c} in a video game.",
    "art of the {c}.",
    "a photo of the small {c}.",
]


def resolve_templates(task: TaskConfig, dataset_templates: list[str] | None) -> list[str]:
    """The task's templates; ``@clip_benchmark:NAME`` names a set shipped with clip_benchmark
    (e.g. ``imagenet1k``, CLIP's 80 ImageNet prompts), ``@imagenet7`` CLIP's 7-prompt subset;
    none given: the dataset's own, else the bare class name."""
    templates: list[str] = []
    for entry in task.templates:
        if entry == "@imagenet7":
            templates += IMAGENET_7_TEMPLATES
        elif entry.startswith("@clip_benchmark:"):
            name = entry.split(":", 1)[1]
            text = (
                resources.files("clip_benchmark.datasets")
                / "en_zeroshot_classification_templates.json"
            ).read_text()
            known = json.loads(text)
            if name not in known:
                raise UserError(f"task {task.name}: clip_benchmark has no template set {name!r}")
            templates += known[name]
        else:
            templates.append(entry)
    return templates or dataset_templates or ["{c}"]


def _drop_skipped_classification(data: ClassificationSet, skipped: list[int]) -> np.ndarray:
    keep = np.ones(len(data.labels), dtype=bool)
    keep[skipped] = False
    return data.labels[keep]


def _drop_skipped_retrieval(data: RetrievalSet, skipped: list[int]):
    """Captions of the kept images, renumbered to the kept images' order."""
    new_index = np.full(len(data.images), -1)
    kept = np.setdiff1d(np.arange(len(data.images)), skipped)
    new_index[kept] = np.arange(len(kept))
    mapped = new_index[data.caption_image]
    captions = [c for c, m in zip(data.captions, mapped, strict=True) if m >= 0]
    return captions, mapped[mapped >= 0], len(kept)


def _classification_chance(values: dict, num_classes: int) -> dict:
    return {
        m: metrics.chance_level("zeroshot_classification", m, num_classes=num_classes)
        for m in values
    }


def _features(cache: dict | None, key: tuple, compute):
    """Image features are computed once per model and image set, however many tasks use them
    (the held-out emoji serve three tasks, a test split both zero-shot and the probe)."""
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


@dataclass(frozen=True)
class Encoder:
    """One model's image and text encoders as the tasks call them."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: Any
    batch_size: int
    workers: int = 0
    # one dict per model: tasks over the same images share their features
    feature_cache: dict | None = None

    def images(self, image_set, key: tuple, label: str) -> tuple[torch.Tensor, list[int]]:
        """Features of ``image_set`` and the indices of images that could not be read."""
        return _features(
            self.feature_cache,
            key,
            lambda: image_features(
                self.model,
                image_set,
                self.preprocess,
                self.device,
                self.batch_size,
                label,
                self.workers,
            ),
        )

    def texts(self, texts: list[str]) -> torch.Tensor:
        return text_features(self.model, texts, self.tokenizer, self.device, self.batch_size)


@dataclass
class Outcome:
    """A task's figures before the shared bookkeeping: metrics, their chance levels, the counts
    behind them and ``n``, the number of trials the chance test uses."""

    values: dict
    chance: dict
    counts: dict
    n: int
    details: dict = field(default_factory=dict)
    templates: list[str] | None = None
    examples: list[dict] | None = None  # a few queries with their top images (retrieval)


def run_task(
    task: TaskConfig,
    model,
    preprocess,
    tokenizer,
    device,
    batch_size: int,
    corpus_dir: str,
    feature_cache: dict | None = None,
    workers: int = 0,
) -> dict:
    """One result record: metrics, their chance levels, and the sample counts behind them.

    ``feature_cache`` (one dict per model) lets tasks over the same images share features.
    """
    encoder = Encoder(model, preprocess, tokenizer, device, batch_size, workers, feature_cache)
    data, dataset_templates = load_dataset(task, corpus_dir)
    key = (task.dataset, task.path, task.split, task.limit)
    images, skipped = encoder.images(data.images, key, task.name)
    if task.task in ("zeroshot_classification", "linear_probe"):
        if not isinstance(data, ClassificationSet):
            raise UserError(f"task {task.name}: {task.task} needs a classification dataset")
        if len(np.unique(data.labels)) < 2 and task.task == "zeroshot_classification":
            raise UserError(f"task {task.name}: zero-shot needs at least 2 classes")
    if task.task == "linear_probe":
        outcome = _linear_probe(task, data, images, skipped, encoder, corpus_dir)
    elif task.task == "zeroshot_classification":
        outcome = _zeroshot(task, data, images, skipped, encoder, dataset_templates)
    elif task.task == "retrieval":
        if not isinstance(data, RetrievalSet):
            raise UserError(f"task {task.name}: retrieval needs an image-caption dataset")
        outcome = _retrieval(task, data, images, skipped, encoder)
    else:
        raise UserError(f"task {task.name}: unknown task type {task.task!r}")
    values, chance = outcome.values, outcome.chance
    above = {m: metrics.beats_chance(v, chance[m], outcome.n) for m, v in values.items()}
    return {
        "task_name": task.name,
        "dataset": task.dataset,
        "task": task.task,
        "metrics": values,
        "chance": chance,
        "beats_chance": above,
        "counts": outcome.counts,
        "details": {"skipped_images": len(skipped), **outcome.details},
        "templates": outcome.templates,
        **({"examples": outcome.examples} if outcome.examples else {}),
    }


def _linear_probe(task, data, images, skipped, encoder: Encoder, corpus_dir: str) -> Outcome:
    labels = _drop_skipped_classification(data, skipped)
    train, _ = load_dataset(task, corpus_dir, task.train_split, task.train_limit)
    train_key = (task.dataset, task.path, task.train_split, task.train_limit)
    train_images, train_skipped = encoder.images(train.images, train_key, f"{task.name} (train)")
    train_labels = _drop_skipped_classification(train, train_skipped)
    device = encoder.device
    values = linear_probe(
        train_images.to(device),
        torch.from_numpy(train_labels).to(device),
        images.to(device),
        torch.from_numpy(labels).to(device),
        len(data.classnames),
    )
    details = {
        "C": values.pop("C"),
        "penalty": values.pop("penalty"),
        "val_top1": values.pop("val_top1"),
        "skipped_train_images": len(train_skipped),
    }
    counts = {
        "train_samples": len(train_labels),
        "samples": len(labels),
        "classes": len(data.classnames),
    }
    chance = _classification_chance(values, len(data.classnames))
    return Outcome(values, chance, counts, len(labels), details)


def _zeroshot(task, data, images, skipped, encoder: Encoder, dataset_templates) -> Outcome:
    labels = _drop_skipped_classification(data, skipped)
    templates = resolve_templates(task, dataset_templates)
    # all prompts in one batched pass: classes × templates
    prompts = [t.format(c=c) for c in data.classnames for t in templates]
    prompt_features = encoder.texts(prompts)
    classifier = metrics.class_embeddings(list(prompt_features.split(len(templates))))
    values = metrics.classification_metrics(images @ classifier.T, torch.from_numpy(labels))
    chance = _classification_chance(values, len(data.classnames))
    counts = {"samples": len(labels), "classes": len(data.classnames)}
    return Outcome(values, chance, counts, len(labels), templates=templates)


def _retrieval(task, data, images, skipped, encoder: Encoder) -> Outcome:
    captions, caption_image, num_images = _drop_skipped_retrieval(data, skipped)
    texts = encoder.texts(captions)
    values = metrics.retrieval_metrics(images, texts, torch.from_numpy(caption_image))
    chance = {
        m: metrics.chance_level(task.task, m, num_images=num_images, num_texts=len(captions))
        for m in values
    }
    counts = {"images": num_images, "captions": len(captions)}
    kept = np.setdiff1d(np.arange(len(data.images)), skipped)
    examples = retrieval_examples(data.images, kept, captions, caption_image, images, texts)
    return Outcome(values, chance, counts, len(captions), examples=examples)
