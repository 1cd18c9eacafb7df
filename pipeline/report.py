"""The shard set's human report, ``report.html``: counts, status and failure reasons with one
example each, image size and caption length histograms, a histogram of samples per shard (it
stays readable at 40,000 shards), download throughput, and a grid of kept samples with their
captions.

The statistics come from ``pipeline.report_stats`` (computed by Spark tasks); the driver reads
only the few samples of the grid.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np
from PIL import Image
from pyspark.sql import SparkSession

from flipcommon.storage import url_join, write_bytes_atomic
from pipeline.report_stats import CAPTION_BINS, SIDE_BINS, ShardSetStats, collect_stats

GRID_SAMPLES = 24
THUMBNAIL_PX = 128
SHARD_HISTOGRAM_BINS = 30


def _bin_labels(bins: np.ndarray) -> list[str]:
    return [
        f"{int(lo)}–{int(hi)}" if hi < 1e9 else f"≥{int(lo)}"
        for lo, hi in zip(bins[:-1], bins[1:], strict=True)
    ]


def _bar_png(labels: list[str], values: list[float], title: str, xlabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _throughput_png(timeline: list[list[float]]) -> bytes:
    """Images kept per second between the download's progress snapshots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = np.array([p[0] for p in timeline], float)
    kept = np.array([p[2] for p in timeline], float)
    rates = np.diff(kept) / np.maximum(np.diff(times), 1e-9)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(times[1:], rates, color="tab:blue")
    ax.set_title("Download throughput (images kept per second)")
    ax.set_xlabel("seconds since the download started")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def render_html(
    stats: ShardSetStats, counts: dict[str, Any], samples: list[tuple[bytes, str]] = ()
) -> str:
    """``samples``: kept (jpeg, caption) pairs for the grid."""
    errors = stats.errors.most_common(10)
    plots = [
        _bar_png(list(stats.status), list(stats.status.values()), "Download status", "status"),
        _bar_png([e[:40] for e, _ in errors], [n for _, n in errors], "Top errors", "error"),
        _bar_png(
            _bin_labels(SIDE_BINS),
            list(stats.side_hist),
            "Original image size (shorter side, px), downloaded images",
            "pixels",
        ),
        _bar_png(
            _bin_labels(CAPTION_BINS),
            list(stats.caption_hist),
            "Caption length (characters), all rows sent to download",
            "characters",
        ),
        _shards_png(list(stats.per_shard.values())),
    ]
    timeline = (counts.get("download") or {}).get("run", {}).get("timeline") or []
    if len(timeline) >= 2:
        plots.append(_throughput_png(timeline))
    return "\n".join(
        [
            "<!doctype html><html><head><meta charset='utf-8'><title>Shard set report</title>",
            "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
            "pre{background:#f4f4f4;padding:1em}td,th{padding:2px 8px;text-align:left}"
            ".grid{display:flex;flex-wrap:wrap;gap:8px}.grid figure{width:160px;margin:0}"
            ".grid figcaption{font-size:12px}</style></head><body><h1>Shard set report</h1>",
            "<h2>Counts (rows in = filtered + duplicates + failed + kept)</h2>",
            _counts_table(counts),
            *[_img(p, "plot") for p in plots],
            _failure_table(stats, errors),
            _sample_grid(samples),
            "<details><summary>All counts as recorded in manifest.json</summary>",
            f"<pre>{html.escape(json.dumps(counts, indent=2))}</pre></details>",
            "</body></html>",
        ]
    )


def count_rows(counts: dict[str, Any], depth: int = 0) -> list[tuple[int, str, str]]:
    """(depth, label, value) of every count, nested ones indented under their group; lists
    (the run's timeline) are left to the plots."""
    rows = []
    for key, value in counts.items():
        label = key.replace("_", " ")
        if isinstance(value, dict):
            rows.append((depth, label, ""))
            rows += count_rows(value, depth + 1)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            if not isinstance(value, (list, tuple)):
                rows.append((depth, label, str(value)))
        else:
            rows.append((depth, label, f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"))
    return rows


def _counts_table(counts: dict[str, Any]) -> str:
    cells = "".join(
        f"<tr><td style='padding-left:{8 + 20 * depth}px'>{html.escape(label)}</td>"
        f"<td style='text-align:right'>{html.escape(value)}</td></tr>"
        for depth, label, value in count_rows(counts)
    )
    return f"<table>{cells}</table>"


def _shards_png(kept_per_shard: list[int]) -> bytes:
    """How many shards hold how many samples: one bar per range, however many shards."""
    if not kept_per_shard:
        return _bar_png([], [], "Samples per shard", "samples kept")
    low, high = min(kept_per_shard), max(kept_per_shard)
    width = -(-(high - low + 1) // SHARD_HISTOGRAM_BINS)  # whole samples per bar
    edges = np.arange(low, high + width + 1, width)
    counts, _ = np.histogram(kept_per_shard, bins=edges)
    labels = [
        f"{a}–{b - 1}" if width > 1 else f"{a}"
        for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)
    ]
    title = f"Samples per shard ({len(kept_per_shard)} shards)"
    return _bar_png(labels, list(counts), title, "samples kept (shards per range)")


def _failure_table(stats: ShardSetStats, errors: list[tuple[str, int]]) -> str:
    rows = []
    for reason, count in errors:
        example = stats.failure_examples.get(reason, {})
        rows.append(
            f"<tr><td>{html.escape(reason)}</td><td>{count}</td>"
            f"<td>{html.escape(str(example.get('status', '')))}</td>"
            f"<td>{html.escape(str(example.get('url', '')))}</td></tr>"
        )
    return (
        "<h2>Failure reasons, one example each</h2><table><tr><th>reason</th><th>rows</th>"
        "<th>status</th><th>example URL</th></tr>" + "".join(rows) + "</table>"
    )


def _sample_grid(samples: list[tuple[bytes, str]]) -> str:
    figures = []
    for jpeg, caption in samples:
        with Image.open(io.BytesIO(jpeg)) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
        data = base64.b64encode(buffer.getvalue()).decode()
        figures.append(
            f'<figure><img alt="sample" src="data:image/jpeg;base64,{data}">'
            f"<figcaption>{html.escape(caption[:200])}</figcaption></figure>"
        )
    return f"<h2>Kept samples</h2><div class='grid'>{''.join(figures)}</div>"


def grid_samples(output_dir: str, stats: ShardSetStats, limit: int = GRID_SAMPLES):
    """The first kept (jpeg, caption) pairs, streamed from as few shards as hold them (the
    rest of a shard is not read)."""
    from flipcommon.shard_tars import iter_tar_samples

    samples: list[tuple[bytes, str]] = []
    for name in sorted(n for n, kept in stats.per_shard.items() if kept):
        for _, parts in iter_tar_samples(url_join(output_dir, f"{name}.tar")):
            if "jpg" in parts and "txt" in parts:
                samples.append((parts["jpg"], parts["txt"].decode("utf-8", "replace")))
            if len(samples) >= limit:
                return samples
    return samples


def write_report(
    spark: SparkSession,
    output_dir: str,
    counts: dict[str, Any],
    shards: list[str],
    superseded_retryable: bool = False,
) -> str:
    """``shards``: the shard names; ``superseded_retryable``: the final pass ran (its retry
    shards hold the final rows of the first pass's retryable failures)."""
    stats = collect_stats(spark, output_dir, shards, superseded_retryable)
    text = render_html(stats, counts, grid_samples(output_dir, stats))
    url = url_join(output_dir, "report.html")
    write_bytes_atomic(url, text.encode())
    return url
