"""What a periodic checkpoint stops training for: from the end of the step that checkpoints to
the next batch in hand, with the trainer's own pieces (``TrainRun`` from ``set_up``, its
``_save``, ``BatchStream.restart``) in both orders, alternating in one process:

- **save, then restart** (the trainer before): the checkpoint is written, then the next
  segment's stream starts its workers and fills their shuffle buffers — the two add up;
- **restart, then save** (the trainer now): the new stream's workers start and fill while the
  checkpoint is gathered and written — the stall is about the longer of the two.

Each round also times the two parts alone. A step first fills the optimizer state, so the
checkpoint holds what a real one holds.

    python benchmarks/checkpoint_stall.py SHARDS [--config configs/train/flip_tiny.yaml]
        [--model flip_tiny] [--rounds 3] [--set KEY=VALUE ...]

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flipcommon.config import load_config  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.setup import TrainRun, set_up  # noqa: E402
from training.trainer import BatchStream, _save, _step  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", help="a shard set folder (make shards)")
    parser.add_argument("--config", default="configs/train/flip_tiny.yaml")
    parser.add_argument("--model", default="flip_tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [
            f"data.shards={args.shards}",
            f"run_dir={run_dir}",
            f"model.name={args.model}",
            "device=cpu",
            "cpu_smoke.enabled=false",
            *args.set,
        ]
        run = set_up(load_config(TrainConfig, args.config, overrides))
        plan, split = run.plans[0], run.splits[0]
        batches = BatchStream(run.open_batches, 0)
        images, tokens, _ = next(batches)
        _step(run, images, tokens, split.accum_steps, plan)  # the optimizer state exists
        step = 1

        def restart() -> None:
            batches.restart(step)

        def save() -> None:
            _save(run, plan)

        def first_batch() -> None:
            next(batches)

        orders = {"save, then restart": (save, restart), "restart, then save": (restart, save)}
        stalls: dict[str, list[float]] = {name: [] for name in orders}
        parts: dict[str, list[float]] = {"save alone": [], "restart to first batch": []}
        for round_index in range(args.rounds):
            names = list(orders)[:: -1 if round_index % 2 else 1]
            for name in names:
                first, second = orders[name]
                stalls[name].append(timed(first) + timed(second) + timed(first_batch))
                step += 1
            parts["save alone"].append(timed(save))
            parts["restart to first batch"].append(timed(restart) + timed(first_batch))
            step += 1
        batches.close()
    _print(args, run, stalls, parts)


def _print(args, run: TrainRun, stalls: dict, parts: dict) -> None:
    print(
        f"model {args.model}, {args.rounds} rounds, {run.config.data.workers} loader workers, "
        f"shuffle buffer {run.config.data.shuffle_buffer}"
    )
    for name, values in {**parts, **stalls}.items():
        print(f"{name:26s} median {statistics.median(values):6.2f} s  {values}")
    before = statistics.median(stalls["save, then restart"])
    now = statistics.median(stalls["restart, then save"])
    print(f"stall, restart first / save first: x{now / before:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
