"""Plots for the evaluation report, as PNG bytes (embedded in the HTML, saved beside it)."""

from __future__ import annotations

import io
from typing import Any

HEADLINE = {
    "zeroshot_classification": "top1",
    "linear_probe": "top1",
    "retrieval": "image_retrieval_recall@10",
}


def headline(record: dict[str, Any]) -> tuple[str, float, float]:
    metric = HEADLINE[record["task"]]
    return metric, record["metrics"][metric], record["chance"][metric]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def task_bars(records: list[dict[str, Any]]) -> bytes:
    """One bar per task (its headline metric) with the chance level marked."""
    plt = _pyplot()
    names = [f"{r['task_name']}\n({headline(r)[0]})" for r in records]
    values = [100 * headline(r)[1] for r in records]
    chances = [100 * headline(r)[2] for r in records]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(records)), 4))
    ax.bar(range(len(records)), values, color="tab:blue", label="model")
    ax.scatter(
        range(len(records)), chances, color="black", marker="_", s=600, zorder=3, label="chance"
    )
    ax.set_xticks(range(len(records)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.legend()
    ax.set_title("Headline metric per task")
    data = _png(fig)
    plt.close(fig)
    return data


def progress_lines(records: list[dict[str, Any]]) -> bytes | None:
    """Each task's headline metric against training samples seen, across checkpoints."""
    by_task: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        seen = record["model"].get("samples_seen")
        if seen is not None:
            by_task.setdefault(record["task_name"], []).append((seen, 100 * headline(record)[1]))
    if not any(len(points) > 1 for points in by_task.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for task, points in by_task.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=task)
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("headline metric (%)")
    ax.legend(fontsize=7)
    ax.set_title("Metrics across checkpoints")
    data = _png(fig)
    plt.close(fig)
    return data
