"""Write results: ``results.json`` (one record per model × dataset × task) and ``report.md``;
print the table with chance level beside each figure."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flipcommon.storage import url_join, write_bytes_atomic, write_json_atomic

HEADLINE_METRICS = {
    "zeroshot_classification": ("top1", "top5", "mean_per_class_recall"),
    "linear_probe": ("top1", "mean_per_class_recall"),
    "retrieval": (
        "image_retrieval_recall@1",
        "image_retrieval_recall@10",
        "text_retrieval_recall@1",
        "text_retrieval_recall@10",
    ),
}


def table_rows(records: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for record in records:
        for metric in HEADLINE_METRICS[record["task"]]:
            if metric not in record["metrics"]:
                continue
            value = 100 * record["metrics"][metric]
            chance = 100 * record["chance"][metric]
            mark = "yes" if record["beats_chance"][metric] else "no"
            rows.append((record["task_name"], metric, f"{value:.2f}", f"{chance:.2f}", mark))
    return rows


def format_table(records: list[dict[str, Any]]) -> str:
    header = ("task", "metric", "value %", "chance %", "clearly above chance")
    rows = [header, *table_rows(records)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_report(records: list[dict[str, Any]], model: dict[str, Any]) -> str:
    lines = [
        "# Evaluation report",
        "",
        f"Checkpoint: `{model['checkpoint']}` (samples seen: {model.get('samples_seen', '?')})",
        "",
        "'Clearly above chance' means more than 3 binomial standard errors above the chance",
        "level of a random ranking.",
        "",
        "| task | metric | value % | chance % | clearly above chance |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in table_rows(records)]
    lines += ["", "## Sample counts", ""]
    lines += [f"- {r['task_name']}: {r['counts']}" for r in records]
    return "\n".join(lines) + "\n"


def write_results(output_dir: str, records: list[dict[str, Any]], model: dict[str, Any]) -> None:
    results = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": model,
        "results": [{"model": model["checkpoint"], **r} for r in records],
    }
    write_json_atomic(url_join(output_dir, "results.json"), results)
    write_bytes_atomic(url_join(output_dir, "report.md"), markdown_report(records, model).encode())
