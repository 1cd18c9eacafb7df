"""Write results: ``results.json`` (one record per model × dataset × task), ``report.md`` and
``report.html`` (tables and plots); format the table printed at the end."""

from __future__ import annotations

import base64
import datetime as dt
import html
from typing import Any

from evaluation.plots import headline, progress_lines, task_bars
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
TABLE_HEADER = ("task", "metric", "value %", "chance %", "clearly above chance")


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
    rows = [TABLE_HEADER, *table_rows(records)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _models(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        seen.setdefault(record["model"]["checkpoint"], record["model"])
    return list(seen.values())


def _label(model: dict[str, Any]) -> str:
    name = model["checkpoint"].rstrip("/").rsplit("/", 1)[-1]
    return f"{name} ({model['samples_seen']} samples)" if model.get("samples_seen") else name


def comparison_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headline metric per task (rows) and checkpoint (columns)."""
    models = _models(records)
    header = ["task", "metric", *[_label(m) for m in models], "chance %"]
    tasks = list(dict.fromkeys(r["task_name"] for r in records))
    rows = []
    for task in tasks:
        row_records = {r["model"]["checkpoint"]: r for r in records if r["task_name"] == task}
        metric, _, chance = headline(next(iter(row_records.values())))
        cells = [
            f"{100 * headline(row_records[m['checkpoint']])[1]:.2f}"
            if m["checkpoint"] in row_records
            else "—"
            for m in models
        ]
        rows.append([task, metric, *cells, f"{100 * chance:.2f}"])
    return header, rows


def _markdown_table(header: list[str] | tuple, rows: list) -> list[str]:
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    return lines + [f"| {' | '.join(row)} |" for row in rows]


def markdown_report(records: list[dict[str, Any]]) -> str:
    models = _models(records)
    last = models[-1]
    lines = ["# Evaluation report", ""]
    lines += [
        "'Clearly above chance': more than 3 binomial standard errors above the chance",
        "level of a random ranking.",
        "",
    ]
    if len(models) > 1:
        lines += ["## Comparison across checkpoints (headline metric, %)", ""]
        lines += _markdown_table(*comparison_rows(records)) + [""]
    lines += [f"## {_label(last)}", "", f"Checkpoint: `{last['checkpoint']}`", ""]
    last_records = [r for r in records if r["model"]["checkpoint"] == last["checkpoint"]]
    lines += _markdown_table(TABLE_HEADER, table_rows(last_records))
    lines += ["", "## Sample counts", ""]
    lines += [f"- {r['task_name']}: {r['counts']}" for r in last_records]
    return "\n".join(lines) + "\n"


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def html_report(records: list[dict[str, Any]]) -> str:
    models = _models(records)
    last = models[-1]
    last_records = [r for r in records if r["model"]["checkpoint"] == last["checkpoint"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "</style></head><body><h1>Evaluation report</h1>",
        "<p>'Clearly above chance': more than 3 binomial standard errors above the chance "
        "level of a random ranking.</p>",
    ]
    if len(models) > 1:
        parts.append("<h2>Comparison across checkpoints (headline metric, %)</h2>")
        parts.append(_html_table(*comparison_rows(records)))
        progress = progress_lines(records)
        if progress:
            parts.append(_img(progress, "metrics across checkpoints"))
    parts.append(f"<h2>{html.escape(_label(last))}</h2>")
    parts.append(f"<p>Checkpoint: <code>{html.escape(last['checkpoint'])}</code></p>")
    parts.append(_img(task_bars(last_records), "headline metric per task"))
    parts.append(_html_table(TABLE_HEADER, table_rows(last_records)))
    parts += [_examples_html(r) for r in last_records if r.get("examples")]
    parts.append("</body></html>")
    return "\n".join(parts)


def _examples_html(record: dict[str, Any]) -> str:
    """A retrieval task's example queries, each with its top images (the right one framed)."""
    rows = []
    for example in record["examples"]:
        images = "".join(
            f'<img alt="retrieved" src="{uri}" style="border:3px solid '
            f'{"#2a2" if correct else "#ddd"};margin:2px">'
            for uri, correct in zip(example["images"], example["correct"], strict=True)
        )
        rows.append(f"<p>“{html.escape(example['caption'])}”<br>{images}</p>")
    title = f"{html.escape(record['task_name'])}: top images for a few captions (green: its own)"
    return f"<h3>{title}</h3>" + "".join(rows)


def write_results(output_dir: str, records: list[dict[str, Any]]) -> list[str]:
    results = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "models": _models(records),
        # the examples' thumbnails live in report.html only
        "results": [{k: v for k, v in r.items() if k != "examples"} for r in records],
    }
    outputs = {
        "results.json": None,
        "report.md": markdown_report(records).encode(),
        "report.html": html_report(records).encode(),
    }
    write_json_atomic(url_join(output_dir, "results.json"), results)
    for name, data in outputs.items():
        if data is not None:
            write_bytes_atomic(url_join(output_dir, name), data)
    return [url_join(output_dir, name) for name in outputs]
