"""What a periodic checkpoint stops training for: from the end of the step that checkpoints to
the next batch in hand, with the trainer's own pieces (``TrainRun`` from ``set_up``, its
``_save``, ``BatchStream.restart``), three ways, alternating in one process:

- **respawn, then save** (the trainer before): the old stream's workers stopped, a new loader's
  workers started (imports and all, under ``spawn``) and filling their shuffle buffers while
  the checkpoint is gathered and written;
- **restart, then save** (the trainer now): the same workers start the next segment and
  refill their buffers while the checkpoint is written;
- **save, then restart**: the write first, then the refill — the two add up.

Each round also times the save and the restart alone. A step first fills the optimizer state,
so the checkpoint holds what a real one holds.

``--write-mb-per-s R`` simulates a network-bound store: the checkpoint goes to a local folder
through a ``paced://`` filesystem whose writes sleep for their bytes at R MB/s (no CPU spent,
as while an upload waits on the network), taking the trainer's object-store path (the weights
serialised in memory, then streamed). Without it the checkpoint goes to local disk.

    python benchmarks/checkpoint_stall.py SHARDS [--config configs/train/flip_tiny.yaml]
        [--model flip_tiny] [--rounds 3] [--write-mb-per-s R] [--set KEY=VALUE ...]

SHARDS is a shard set folder written by the pipeline (e.g. runs/demo/shards).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flipcommon.config import load_config  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import BatchStream  # noqa: E402
from training.setup import TrainRun, set_up  # noqa: E402
from training.trainer import _save, _step  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", help="a shard set folder (make shards)")
    parser.add_argument("--config", default="configs/train/flip_tiny.yaml")
    parser.add_argument("--model", default="flip_tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--write-mb-per-s",
        type=float,
        default=0.0,
        help="checkpoint writes paced at this rate, as to a network-bound store (0: local disk)",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


class PacedFile(LocalFileOpener):
    """A local file whose writes take as long as ``rate`` bytes/s allows, sleeping (no CPU)."""

    rate = 0.0

    def write(self, data) -> int:
        written = super().write(data)
        time.sleep(written / self.rate)
        return written


class PacedLocalFileSystem(LocalFileSystem):
    """``paced://PATH``: the local folder PATH, written at ``PacedFile.rate``; not "file" to
    fsspec, so the trainer writes it as it writes an object store."""

    protocol = ("paced",)

    def __init__(self, **kwargs) -> None:
        super().__init__(auto_mkdir=True)

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        path = self._strip_protocol(path)
        if "r" in mode:
            return LocalFileOpener(path, mode, fs=self, **kwargs)
        self.makedirs(self._parent(path), exist_ok=True)
        return PacedFile(path, mode, fs=self, **kwargs)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.write_mb_per_s > 0:
        PacedFile.rate = args.write_mb_per_s * 1e6
        fsspec.register_implementation("paced", PacedLocalFileSystem, clobber=True)
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [
            f"data.shards={args.shards}",
            f"run_dir={'paced://' if args.write_mb_per_s > 0 else ''}{run_dir}",
            f"model.name={args.model}",
            "device=cpu",
            "cpu_smoke.enabled=false",
            *args.set,
        ]
        run = set_up(load_config(TrainConfig, args.config, overrides))
        plan, split = run.plans[0], run.splits[0]
        stream = [BatchStream(run.loader, 0)]
        images, tokens, _ = next(stream[0])
        _step(run, images, tokens, split.accum_steps, plan)  # the optimizer state exists
        step = 1

        def restart() -> None:
            stream[0].restart(step)

        def respawn() -> None:
            stream[0].close()
            stream[0] = BatchStream(_new_loader_like(stream[0].loader), step)

        def save() -> None:
            _save(run, plan)

        def first_batch() -> None:
            next(stream[0])

        arms = {
            "respawn, then save": (respawn, save),
            "restart, then save": (restart, save),
            "save, then restart": (save, restart),
        }
        stalls: dict[str, list[float]] = {name: [] for name in arms}
        parts: dict[str, list[float]] = {"save alone": [], "restart to first batch": []}
        for round_index in range(args.rounds):
            names = list(arms)[:: -1 if round_index % 2 else 1]
            for name in names:
                first, second = arms[name]
                stalls[name].append(timed(first) + timed(second) + timed(first_batch))
                step += 1
            parts["save alone"].append(timed(save))
            parts["restart to first batch"].append(timed(restart) + timed(first_batch))
            step += 1
        stream[0].close()
    _print(args, run, stalls, parts)


def _new_loader_like(loader: DataLoader) -> DataLoader:
    """A loader as the trainer builds it, with workers of its own (not yet started)."""
    return DataLoader(
        loader.dataset,
        batch_size=None,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        multiprocessing_context=loader.multiprocessing_context,
        prefetch_factor=loader.prefetch_factor,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
    )


def _print(args, run: TrainRun, stalls: dict, parts: dict) -> None:
    store = f"writes paced at {args.write_mb_per_s:g} MB/s" if args.write_mb_per_s else "disk"
    print(
        f"model {args.model}, {args.rounds} rounds, {run.config.data.workers} loader workers "
        f"({run.config.data.worker_start}), shuffle buffer {run.config.data.shuffle_buffer}, "
        f"checkpoint to {store}"
    )
    for name, values in {**parts, **stalls}.items():
        print(f"{name:26s} median {statistics.median(values):6.2f} s  {values}")
    now = statistics.median(stalls["restart, then save"])
    for other in ("respawn, then save", "save, then restart"):
        print(f"stall, restart then save / {other}: x{now / statistics.median(stalls[other]):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
