"""Our evaluation against clip_benchmark's own functions on the same checkpoint and data:
wall time of zero-shot classification and of retrieval, alternating rounds in one process.

    python benchmarks/eval_vs_clip_benchmark.py CHECKPOINT [--images 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from evaluation import datasets
from evaluation.config import TaskConfig
from evaluation.tasks import run_task
from flipcommon.checkpoints import load_model

TEMPLATES = ["{c}", "a {c}", "a photo of a {c}", "a drawing of a {c}", "{c}, clothing"]


class _Classification(torch.utils.data.Dataset):
    def __init__(self, data, preprocess):
        self.data, self.preprocess, self.classes = data, preprocess, data.classnames

    def __len__(self):
        return len(self.data.labels)

    def __getitem__(self, i):
        return self.preprocess(self.data.images[i]), int(self.data.labels[i])


class _Retrieval(torch.utils.data.Dataset):
    def __init__(self, data, preprocess):
        self.data, self.preprocess = data, preprocess

    def __len__(self):
        return len(self.data.images)

    def __getitem__(self, i):
        return self.preprocess(self.data.images[i]), [self.data.captions[i]]


def _collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    model, preprocess, tokenizer, _ = load_model(args.checkpoint)
    fashion = datasets.fashion_mnist("test", args.images)
    tux = datasets.tuxpaint(limit=args.images)
    zs_task = TaskConfig(
        "zs", "fashion_mnist", "zeroshot_classification", templates=TEMPLATES, limit=args.images
    )
    rt_task = TaskConfig("rt", "tuxpaint", "retrieval", limit=args.images)

    def ours_zs():
        return run_task(zs_task, model, preprocess, tokenizer, "cpu", args.batch, "")

    def ours_rt():
        return run_task(rt_task, model, preprocess, tokenizer, "cpu", args.batch, "")

    # Both sides load the dataset inside the timed call: the same work end to end.
    def theirs_zs():
        fashion = datasets.fashion_mnist("test", args.images)
        loader = torch.utils.data.DataLoader(_Classification(fashion, preprocess), args.batch)
        return zeroshot_classification.evaluate(
            model, loader, tokenizer, fashion.classnames, TEMPLATES, "cpu", amp=False
        )

    def theirs_rt():
        tux = datasets.tuxpaint(limit=args.images)
        loader = torch.utils.data.DataLoader(
            _Retrieval(tux, preprocess), args.batch, collate_fn=_collate
        )
        return zeroshot_retrieval.evaluate(
            model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10]
        )

    jobs = {"zero-shot": (ours_zs, theirs_zs), "retrieval": (ours_rt, theirs_rt)}
    times = {(k, who): [] for k in jobs for who in ("ours", "clip_benchmark")}
    for _ in range(args.rounds):
        for kind, (ours, theirs) in jobs.items():
            for who, fn in (("ours", ours), ("clip_benchmark", theirs)):
                start = time.perf_counter()
                fn()
                times[(kind, who)].append(time.perf_counter() - start)
    print(
        f"checkpoint {args.checkpoint}, {len(fashion.labels)} Fashion-MNIST images "
        f"(zero-shot, {len(TEMPLATES)} templates), {len(tux.images)} Tux Paint pairs"
    )
    for kind in jobs:
        ours = statistics.median(times[(kind, "ours")])
        theirs = statistics.median(times[(kind, "clip_benchmark")])
        print(
            f"{kind:10s} ours {ours:6.2f} s  clip_benchmark {theirs:6.2f} s  "
            f"time ratio (ours / theirs) {ours / theirs:.2f}×"
        )


if __name__ == "__main__":
    main()
