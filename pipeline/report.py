"""The shard set's human report, ``report.html``: status and error breakdown, image size and
caption length histograms, samples per shard.

Reads the per-shard parquet files one at a time (only the columns it needs) and accumulates
fixed-bin histograms, so its memory does not grow with the corpus.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import json
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq

from flipcommon.storage import url_join, write_bytes_atomic

SIDE_BINS = np.array([0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 1e9])
CAPTION_BINS = np.array([0, 10, 20, 40, 80, 160, 320, 640, 1e9])
COLUMNS = ["status", "error_message", "original_width", "original_height", "caption"]


@dataclass
class ShardSetStats:
    status: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    side_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(SIDE_BINS) - 1, int))
    caption_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(CAPTION_BINS) - 1, int))
    per_shard: dict[str, int] = field(default_factory=dict)

    def add_shard(self, name: str, table) -> None:
        frame = table.to_pandas()
        self.status.update(frame["status"].fillna("unknown"))
        self.errors.update(frame["error_message"].dropna())
        ok = frame[frame["status"] == "success"]
        self.per_shard[name] = len(ok)
        sides = np.minimum(ok["original_width"], ok["original_height"]).dropna().to_numpy()
        self.side_hist += np.histogram(sides, SIDE_BINS)[0]
        lengths = frame["caption"].dropna().str.len().to_numpy()
        self.caption_hist += np.histogram(lengths, CAPTION_BINS)[0]


def collect_stats(output_dir: str) -> ShardSetStats:
    fs, root = fsspec.core.url_to_fs(output_dir)
    stats = ShardSetStats()
    for path in sorted(fs.glob(f"{root}/*.parquet")):
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle, columns=COLUMNS)
        stats.add_shard(path.rsplit("/", 1)[-1].removesuffix(".parquet"), table)
    return stats


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


def render_html(stats: ShardSetStats, counts: dict[str, Any]) -> str:
    errors = stats.errors.most_common(10)
    shard_names = sorted(stats.per_shard)
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
        _bar_png(
            shard_names, [stats.per_shard[s] for s in shard_names], "Samples per shard", "shard"
        ),
    ]
    timeline = (counts.get("download") or {}).get("run", {}).get("timeline") or []
    if len(timeline) >= 2:
        plots.append(_throughput_png(timeline))
    return "\n".join(
        [
            "<!doctype html><html><head><meta charset='utf-8'><title>Shard set report</title>",
            "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
            "pre{background:#f4f4f4;padding:1em}</style></head><body><h1>Shard set report</h1>",
            "<h2>Counts (rows in = filtered + duplicates + failed + kept)</h2>",
            f"<pre>{html.escape(json.dumps(counts, indent=2))}</pre>",
            *[_img(p, "plot") for p in plots],
            "</body></html>",
        ]
    )


def write_report(output_dir: str, counts: dict[str, Any]) -> str:
    url = url_join(output_dir, "report.html")
    write_bytes_atomic(url, render_html(collect_stats(output_dir), counts).encode())
    return url
