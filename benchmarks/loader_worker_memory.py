"""Loader workers are kept for a whole run: does their memory grow, checkpoint after
checkpoint? The trainer's loader (``make_loader``) and ``BatchStream``: N segments (a restart at
each, as a checkpoint does), a few batches each, every worker's resident memory (VmRSS) read
after each segment's batches; beside it, the baseline: the same loader and batches read as one
segment (no restart), read at the same points. Printed per arm and worker: resident MiB after
the first, middle and last reading, and the growth from first to last.

    python benchmarks/loader_worker_memory.py SHARDS [--segments 40] [--batches 5]
        [--batch 64] [--workers 2] [--shuffle-buffer 2000] [--size 224] [--start spawn]

SHARDS is a shard set folder written by the pipeline (e.g. runs/demo/shards).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import open_clip  # noqa: E402

from training.data import BatchStream, make_loader, open_shard_set, train_transform  # noqa: E402


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards")
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shuffle-buffer", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--start", default="spawn", choices=["spawn", "fork", "forkserver"])
    args = parser.parse_args(argv)
    if args.workers < 1 or args.segments < 2:
        parser.error("needs at least 1 worker and 2 segments")

    for restarts in (True, False):
        readings = _readings(args, restarts)
        _print(args, "restart at every segment" if restarts else "one segment (baseline)", readings)


def _readings(args: argparse.Namespace, restarts: bool) -> list[list[float]]:
    loader = make_loader(
        open_shard_set(args.shards),
        train_transform(args.size, 0.9),
        open_clip.get_tokenizer("ViT-B-16"),
        batch_size=args.batch,
        workers=args.workers,
        shuffle_buffer=args.shuffle_buffer,
        seed=0,
        worker_start=args.start,
    )
    stream = BatchStream(loader, 0)
    readings: list[list[float]] = []
    try:
        for segment in range(args.segments):
            if segment and restarts:
                stream.restart(segment * 1000)
            for _ in range(args.batches):
                next(stream)
            pids = [worker.pid for worker in loader._iterator._workers]
            readings.append([resident_mib(pid) for pid in pids])
    finally:
        stream.close()
    return readings


def _print(args: argparse.Namespace, arm: str, readings: list[list[float]]) -> None:
    middle = len(readings) // 2
    print(
        f"{arm}: {args.workers} workers ({args.start}), {args.segments} readings of {args.batches} "
        f"batches of {args.batch} at {args.size} px, shuffle buffer {args.shuffle_buffer}"
    )
    for index, values in enumerate(zip(*readings, strict=True)):
        first, mid, last = values[0], values[middle], values[-1]
        print(
            f"worker {index}: resident MiB at reading 1 {first:7.1f}, {middle + 1} {mid:7.1f}, "
            f"{len(values)} {last:7.1f}; growth first to last x{last / first:.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
