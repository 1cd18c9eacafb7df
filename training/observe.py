"""What a person watches during and after a run: a progress bar, a metrics log, TensorBoard
(and W&B) scalars, a plot."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import fsspec
from tqdm import tqdm

from flipcommon.storage import url_join, write_bytes_atomic
from training.config import WandbConfig
from training.dashboards import TensorBoardLog, WandbLog


@dataclass(frozen=True)
class Watchers:
    """Where scalars go besides ``metrics.jsonl``."""

    tensorboard: bool = True
    tensorboard_sync_s: float = 30.0
    wandb: WandbConfig | None = None  # None or not enabled: no W&B
    run_config: dict[str, Any] = field(default_factory=dict)  # shown by W&B with the run


class MetricsLog:
    """Scalars to ``metrics.jsonl`` beside the checkpoints, TensorBoard (any run dir) and, when
    switched on, Weights & Biases."""

    def __init__(
        self,
        run_dir: str,
        enabled: bool = True,
        resumed_at: int | None = None,
        watchers: Watchers = Watchers(),
    ) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self.tensorboard: TensorBoardLog | None = None
        self.wandb: WandbLog | None = None
        if not enabled:
            return
        if resumed_at is not None:
            drop_records_after(run_dir, resumed_at)
        if watchers.tensorboard:
            self.tensorboard = TensorBoardLog(run_dir, watchers.tensorboard_sync_s)
        if watchers.wandb is not None and watchers.wandb.enabled:
            self.wandb = WandbLog(
                run_dir, watchers.wandb.project, watchers.wandb.mode, watchers.run_config
            )

    def log(self, step: int, samples_seen: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.records.append({"step": step, "samples_seen": samples_seen, **scalars})
        if self.tensorboard is not None:
            self.tensorboard.add_scalars(scalars, samples_seen)
        if self.wandb is not None:
            self.wandb.add_scalars({**scalars, "samples_seen": samples_seen}, step)

    def flush(self) -> None:
        """Append pending records (called at each checkpoint, so a crash loses none before it)."""
        if not self.enabled:
            return
        if self.tensorboard is not None:
            self.tensorboard.flush()
        if not self.records:
            return
        with fsspec.open(url_join(self.run_dir, "metrics.jsonl"), "a") as handle:
            for record in self.records:
                handle.write(json.dumps(record) + "\n")
        self.records = []

    def close(self) -> None:
        self.flush()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.close()


def drop_records_after(run_dir: str, step: int) -> int:
    """Remove the records of steps after ``step`` from ``metrics.jsonl``; returns how many. A run
    resumed from the checkpoint of ``step`` logs those steps again (records flushed after that
    checkpoint by the run that died would appear twice), and a fresh run starts at 0."""
    url = url_join(run_dir, "metrics.jsonl")
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return 0
    records = read_metrics(run_dir)
    kept = [r for r in records if r["step"] <= step]
    if len(kept) < len(records):
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_bytes_atomic(url, text.encode())
    return len(records) - len(kept)


class Progress:
    """The progress bar (steps, loss, samples/s) and the metrics log of one training run, shown
    and written by the main rank only, from ``step`` on (records of later steps already in the
    log, from a run that died after its last checkpoint, are dropped)."""

    def __init__(
        self,
        run_dir: str,
        total_steps: int | None,
        step: int,
        samples_seen: int,
        enabled: bool,
        watchers: Watchers = Watchers(),
    ) -> None:
        # total_steps is None while a timed phase's step count is unknown: the bar then counts
        self.bar = tqdm(
            total=total_steps, initial=step, unit="step", disable=not enabled, dynamic_ncols=True
        )
        self.metrics = MetricsLog(run_dir, enabled=enabled, resumed_at=step, watchers=watchers)
        self.last_report = (time.perf_counter(), samples_seen)

    def advance(self) -> None:
        self.bar.update(1)

    def report(
        self, step: int, samples_seen: int, phase: str, loss: float, scalars: dict[str, float]
    ) -> None:
        """Log the loss and ``scalars``, with the throughput over the interval since the last
        report: measured after the caller read the loss (a device sync), it is exact, where
        one asynchronous step's time would not be."""
        now = time.perf_counter()
        samples_per_s = (samples_seen - self.last_report[1]) / (now - self.last_report[0])
        self.last_report = (now, samples_seen)
        rate = f"{samples_per_s:.0f}" if samples_per_s >= 10 else f"{samples_per_s:.2f}"
        self.bar.set_postfix(phase=phase, loss=f"{loss:.3f}", samples_s=rate)
        self.metrics.log(
            step, samples_seen, {"loss": loss, "samples_per_s": samples_per_s, **scalars}
        )

    def flush(self) -> None:
        self.metrics.flush()

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    with fsspec.open(url_join(run_dir, "metrics.jsonl"), "r") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot_curves(run_dir: str) -> str:
    """Loss and learning rate against samples seen, as ``training_curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    samples = [r["samples_seen"] for r in records]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax_loss.plot(samples, [r["loss"] for r in records])
    ax_loss.set_ylabel("contrastive loss")
    ax_lr.plot(samples, [r["lr"] for r in records], color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("samples seen")
    for r0, r1 in zip(records, records[1:], strict=False):
        if r1["mask_ratio"] != r0["mask_ratio"]:
            for ax in (ax_loss, ax_lr):
                ax.axvline(r1["samples_seen"], color="grey", linestyle="--", linewidth=0.8)
    ax_loss.set_title("FLIP training (dashed: phase change)")
    fig.tight_layout()
    out = url_join(run_dir, "training_curves.png")
    with fsspec.open(out, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return out
