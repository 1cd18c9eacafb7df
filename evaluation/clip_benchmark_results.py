"""Our results as CLIP_benchmark's own per-task result files, so its tools aggregate them.

CLIP_benchmark writes one JSON per (dataset, model, task) — ``{"dataset", "model",
"pretrained", "task", "metrics", "language"}`` with its metric names (``acc1``, ``acc5``,
``mean_per_class_recall``; ``image_retrieval_recall@k``, ``text_retrieval_recall@k``;
``lp_acc1``…) as fractions — and ``clip_benchmark build FILES_OR_FOLDERS --output x.csv`` turns a
folder of them into one CSV. Beside ``results.json`` the evaluation stage writes the same files
under ``clip_benchmark/``, so a run of ours and runs of CLIP_benchmark sit in one table.
"""

from __future__ import annotations

import re
from typing import Any

from flipcommon.storage import url_join, write_json_atomic

FOLDER = "clip_benchmark"
# our task name -> CLIP_benchmark's
TASKS = {
    "zeroshot_classification": "zeroshot_classification",
    "retrieval": "zeroshot_retrieval",
    "linear_probe": "linear_probe",
}
CLASSIFICATION_KEYS = {
    "top1": "acc1",
    "top5": "acc5",
    "mean_per_class_recall": "mean_per_class_recall",
}


def clip_benchmark_metrics(task: str, metrics: dict[str, float]) -> dict[str, float]:
    """Our metric names in CLIP_benchmark's (its linear probe prefixes them with ``lp_``)."""
    if task == "retrieval":  # the same names already
        return dict(metrics)
    renamed = {CLASSIFICATION_KEYS[k]: v for k, v in metrics.items() if k in CLASSIFICATION_KEYS}
    if task == "linear_probe":
        return {f"lp_{k}": v for k, v in renamed.items()}
    return renamed


def clip_benchmark_record(record: dict[str, Any]) -> dict[str, Any]:
    model = record["model"]
    return {
        "dataset": record["task_name"] or record["dataset"],
        "model": model.get("model_name") or "unknown",
        "pretrained": model["checkpoint"],
        "task": TASKS[record["task"]],
        "metrics": clip_benchmark_metrics(record["task"], record["metrics"]),
        "language": "en",
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def write_clip_benchmark_results(output_dir: str, records: list[dict[str, Any]]) -> list[str]:
    """One file per record, named as CLIP_benchmark names its own
    (``{dataset}_{pretrained}_{model}_{language}_{task}.json``); returns their URLs."""
    written = []
    for record in records:
        converted = clip_benchmark_record(record)
        name = "_".join(
            _slug(str(converted[key]))
            for key in ("dataset", "pretrained", "model", "language", "task")
        )
        url = url_join(output_dir, FOLDER, f"{name}.json")
        write_json_atomic(url, converted)
        written.append(url)
    return written
