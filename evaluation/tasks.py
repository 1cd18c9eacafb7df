"""Run one task of a suite: load its dataset, extract features, compute its metrics."""

from __future__ import annotations

import torch

from evaluation import datasets, metrics
from evaluation.config import TaskConfig
from evaluation.features import image_features, text_features
from evaluation.linear_probe import linear_probe


def load_dataset(task: TaskConfig, corpus_dir: str, split: str | None = None, limit: int = -1):
    split = task.split if split is None else split
    limit = task.limit if limit < 0 else limit
    if task.dataset == "fashion_mnist":
        return datasets.fashion_mnist(split, limit)
    if task.dataset == "animal_mnist":
        return datasets.animal_mnist(split, limit)
    if task.dataset == "tuxpaint":
        return datasets.tuxpaint(task.split, task.limit)
    if task.dataset == "emoji_heldout":
        if task.task == "retrieval":
            return datasets.emoji_heldout_retrieval(corpus_dir, task.limit)
        return datasets.emoji_heldout_classification(corpus_dir, task.label, task.limit)
    raise ValueError(
        f"task {task.name}: unknown dataset {task.dataset!r} "
        "(fashion_mnist, animal_mnist, tuxpaint, emoji_heldout)"
    )


def run_task(
    task: TaskConfig, model, preprocess, tokenizer, device, batch_size: int, corpus_dir: str
) -> dict:
    """One result record: metrics, their chance levels, and the sample counts behind them."""
    data = load_dataset(task, corpus_dir)
    images = image_features(model, data.images, preprocess, device, batch_size, task.name)
    details: dict = {}
    if task.task == "linear_probe":
        if not isinstance(data, datasets.ClassificationSet):
            raise ValueError(f"task {task.name}: a linear probe needs a classification dataset")
        train = load_dataset(task, corpus_dir, task.train_split, task.train_limit)
        train_images = image_features(
            model, train.images, preprocess, device, batch_size, f"{task.name} (train)"
        )
        values = linear_probe(
            train_images.to(device),
            torch.from_numpy(train.labels).to(device),
            images.to(device),
            torch.from_numpy(data.labels).to(device),
            len(data.classnames),
        )
        details = {"penalty": values.pop("penalty"), "val_top1": values.pop("val_top1")}
        chance = {
            m: metrics.chance_level("zeroshot_classification", m, num_classes=len(data.classnames))
            for m in values
        }
        counts = {
            "train_samples": len(train.labels),
            "samples": len(data.labels),
            "classes": len(data.classnames),
        }
        n = len(data.labels)
    elif task.task == "zeroshot_classification":
        if len(data.classnames) < 2:
            raise ValueError(f"task {task.name}: zero-shot needs at least 2 classes")
        # all prompts in one batched pass: classes × templates
        prompts = [t.format(c=c) for c in data.classnames for t in task.templates]
        prompt_features = text_features(model, prompts, tokenizer, device, batch_size)
        per_class = list(prompt_features.split(len(task.templates)))
        classifier = metrics.class_embeddings(per_class)
        values = metrics.classification_metrics(
            images @ classifier.T, torch.from_numpy(data.labels)
        )
        chance = {
            m: metrics.chance_level(task.task, m, num_classes=len(data.classnames)) for m in values
        }
        counts = {"samples": len(data.labels), "classes": len(data.classnames)}
        n = len(data.labels)
    elif task.task == "retrieval":
        texts = text_features(model, data.captions, tokenizer, device, batch_size)
        values = metrics.retrieval_metrics(images, texts, torch.from_numpy(data.caption_image))
        chance = {
            m: metrics.chance_level(
                task.task, m, num_images=len(data.images), num_texts=len(data.captions)
            )
            for m in values
        }
        counts = {"images": len(data.images), "captions": len(data.captions)}
        n = len(data.captions)
    else:
        raise ValueError(f"task {task.name}: unknown task type {task.task!r}")
    above = {m: metrics.beats_chance(v, chance[m], n) for m, v in values.items()}
    return {
        "task_name": task.name,
        "dataset": task.dataset,
        "task": task.task,
        "metrics": values,
        "chance": chance,
        "beats_chance": above,
        "counts": counts,
        "details": details,
        "templates": task.templates if task.task == "zeroshot_classification" else None,
    }
