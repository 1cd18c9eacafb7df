"""Our streaming loader against open_clip's webdataset pipeline on the same shard set: samples
per second, same crop, batch and worker count, alternating rounds in one process. Each ends as
its trainer has it: ours in uint8 batches (normalised later on the device), open_clip's in
float32 (ToTensor + Normalize in the workers).

    python benchmarks/loader_throughput.py SHARDS [--batch 128] [--workers 2] [--batches 20]

SHARDS is a shard set folder written by the pipeline (e.g. runs/demo/shards).
"""

from __future__ import annotations

import argparse
import statistics
import time

import open_clip

from flipcommon.storage import read_json, url_join
from training.data import make_loader, open_shard_set, train_transform


def ours_loader(root: str, transform, tokenizer, batch: int, workers: int):
    return make_loader(
        open_shard_set(root),
        transform,
        tokenizer,
        batch_size=batch,
        workers=workers,
        shuffle_buffer=1000,
        seed=0,
    )


def open_clip_loader(root: str, transform, tokenizer, batch: int, workers: int):
    from open_clip_train.data import get_wds_dataset

    sizes = read_json(url_join(root, "sizes.json"))
    names = sorted(sizes)
    args = argparse.Namespace(
        train_data=url_join(root, f"{{{names[0][:5]}..{names[-1][:5]}}}.tar"),
        val_data=None,
        train_num_samples=sum(sizes.values()),
        train_data_upsampling_factors=None,
        dataset_resampled=True,
        seed=0,
        batch_size=batch,
        workers=workers,
        world_size=1,
        distributed=False,
    )
    return get_wds_dataset(args, transform, is_train=True, epoch=0, tokenizer=tokenizer).dataloader


def float_transform(size: int):
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                size, scale=(0.5, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.ToTensor(),
            transforms.Normalize((0.48, 0.46, 0.41), (0.27, 0.26, 0.28)),
        ]
    )


def samples_per_second(batches, count: int, batch: int) -> float:
    next(batches)  # the first batch pays for worker start-up and the shuffle buffer
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shards")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    tokenizer = open_clip.get_tokenizer("RN50")
    builders = {"ours": ours_loader, "open_clip": open_clip_loader}
    # Each loader with the transform its trainer gives it: ours stops at uint8 (normalised on
    # the device), open_clip's ends in float32 ToTensor + Normalize.
    transforms_by_loader = {
        "ours": train_transform(args.size, 0.5),
        "open_clip": float_transform(args.size),
    }
    rates: dict[str, list[float]] = {k: [] for k in builders}
    for _ in range(args.rounds):
        for name, build in builders.items():
            transform = transforms_by_loader[name]
            loader = build(args.shards, transform, tokenizer, args.batch, args.workers)
            batches = iter(loader)
            rates[name].append(samples_per_second(batches, args.batches, args.batch))
            del batches, loader
    ours, theirs = statistics.median(rates["ours"]), statistics.median(rates["open_clip"])
    print(f"shards {args.shards}, batch {args.batch}, workers {args.workers}, {args.rounds} rounds")
    print(f"ours       {ours:8.0f} samples/s")
    print(f"open_clip  {theirs:8.0f} samples/s")
    print(f"ratio (ours / open_clip): {ours / theirs:.2f}×")


if __name__ == "__main__":
    main()
