"""Our linear probe against clip_benchmark's on the same checkpoint, images and splits: wall time
and test accuracy, alternating rounds in one process.

    python benchmarks/linear_probe_vs_clip_benchmark.py CHECKPOINT [--train 5000] [--test 2000]

Two comparisons, both on Fashion-MNIST (train split for fitting, test split for scoring):

- end to end: dataset load, image features and the probe, as `make eval` runs a
  linear_probe task and as clip_benchmark's `linear_probe.evaluate` runs from its images;
- probe only: the same cached features handed to both (clip_benchmark reads them from its
  feature cache folder, in its own file layout), so only the fitting and scoring differ.

The data play the same roles on both sides: our probe chooses its penalty on a validation fifth
of the training images and refits on all of them; clip_benchmark gets that fifth as its
validation loader, sweeps its weight decay on it and refits on train + validation. Its probe
runs with its command line's defaults (AdamW, lr 0.1, 10 epochs, batch 64).

clip_benchmark 1.6.2 places its probe with hard-coded `.cuda()` calls and asserts
`device == "cuda"`. Without CUDA this script executes clip_benchmark's installed module source
with only those placements rewritten to its own `device` argument (`.cuda()` -> `.to(device)`,
the assert dropped); every other line runs as shipped. With CUDA it imports the module unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import statistics
import tempfile
import time
import types
from pathlib import Path

import torch

from evaluation import datasets
from evaluation.config import TaskConfig
from evaluation.features import image_features
from evaluation.linear_probe import linear_probe, split_validation
from evaluation.models import load_checkpoint
from evaluation.tasks import run_task

VAL_FRACTION = 0.2  # what evaluation.linear_probe carves off by default
SEED = 0
CUDA_ASSERT = "assert device == 'cuda'"


def clip_benchmark_probe(device: str) -> types.ModuleType:
    """clip_benchmark's linear_probe module; off CUDA, with its device placements rewritten."""
    module = importlib.import_module("clip_benchmark.metrics.linear_probe")
    if device == "cuda":
        return module
    source = inspect.getsource(module)
    # Refuse a clip_benchmark whose probe no longer looks like the one this rewrite was made for.
    if source.count(CUDA_ASSERT) != 1 or source.count(".cuda()") != 4:
        raise SystemExit("clip_benchmark's linear_probe changed: re-check the CPU rewrite")
    source = source.replace(CUDA_ASSERT, "pass").replace(".cuda()", ".to(device)")
    rewritten = types.ModuleType(module.__name__ + "_on_" + device)
    rewritten.__package__ = "clip_benchmark.metrics"
    rewritten.__file__ = module.__file__
    exec(compile(source, module.__file__, "exec"), rewritten.__dict__)
    return rewritten


class _Images(torch.utils.data.Dataset):
    def __init__(self, images, labels, preprocess) -> None:
        self.images, self.labels, self.preprocess = images, labels, preprocess

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.preprocess(self.images[i]), int(self.labels[i])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--train", type=int, default=5000, help="training images (first N)")
    parser.add_argument("--test", type=int, default=2000, help="test images (first N)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="feature extraction batch")
    parser.add_argument("--lr", type=float, default=0.1, help="clip_benchmark's probe lr")
    parser.add_argument("--epochs", type=int, default=10, help="clip_benchmark's probe epochs")
    parser.add_argument("--probe-batch", type=int, default=64, help="clip_benchmark's batch")
    parser.add_argument("--probe-only", action="store_true", help="skip the end-to-end comparison")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    theirs = clip_benchmark_probe(device)
    model, preprocess, tokenizer, _ = load_checkpoint(args.checkpoint)
    model = model.to(device).eval()
    task = TaskConfig(
        "fashion_mnist/linear_probe",
        "fashion_mnist",
        "linear_probe",
        split="test",
        limit=args.test,
        train_limit=args.train,
    )
    work = Path(tempfile.mkdtemp(prefix="probe_bench_"))

    def fit_val_split(labels):
        fit_idx, val_idx = split_validation(torch.as_tensor(labels), VAL_FRACTION, SEED)
        return fit_idx.numpy(), val_idx.numpy()

    def ours_end_to_end() -> float:
        record = run_task(task, model, preprocess, tokenizer, device, args.batch, "")
        return 100.0 * record["metrics"]["top1"]

    def theirs_end_to_end(round_index: int) -> float:
        train = datasets.fashion_mnist("train", args.train)
        test = datasets.fashion_mnist("test", args.test)
        fit_idx, val_idx = fit_val_split(train.labels)

        def loader(images, labels):
            return torch.utils.data.DataLoader(_Images(images, labels, preprocess), args.batch)

        result = theirs.evaluate(
            model,
            loader([train.images[i] for i in fit_idx], train.labels[fit_idx]),
            loader(test.images, test.labels),
            fewshot_k=-1,
            batch_size=args.probe_batch,
            num_workers=0,
            lr=args.lr,
            epochs=args.epochs,
            model_id=f"end_to_end_{round_index}",  # a fresh cache: it extracts its features
            seed=SEED,
            feature_root=str(work),
            device=device,
            val_dataloader=loader([train.images[i] for i in val_idx], train.labels[val_idx]),
            amp=False,
        )
        return 100.0 * result["lp_acc1"]

    # The probe-only inputs: one feature extraction, shared by both sides.
    train = datasets.fashion_mnist("train", args.train)
    test = datasets.fashion_mnist("test", args.test)
    train_x, train_bad = image_features(model, train.images, preprocess, device, args.batch, "tr")
    test_x, test_bad = image_features(model, test.images, preprocess, device, args.batch, "te")
    assert not train_bad and not test_bad, "Fashion-MNIST images always decode"
    train_y, test_y = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    fit_idx, val_idx = fit_val_split(train.labels)
    cached = work / "features_only"
    cached.mkdir()
    for split, x, y in (
        ("train", train_x[fit_idx], train_y[fit_idx]),
        ("val", train_x[val_idx], train_y[val_idx]),
        ("test", test_x, test_y),
    ):
        torch.save(x, cached / f"features_{split}.pt")
        torch.save(y, cached / f"targets_{split}.pt")

    def ours_probe() -> float:
        x, y = train_x.to(device), train_y.to(device)
        values = linear_probe(x, y, test_x.to(device), test_y.to(device), len(train.classnames))
        return 100.0 * values["top1"]

    def theirs_probe() -> float:
        result = theirs.evaluate(
            model,
            None,  # never read: the features are cached
            None,
            fewshot_k=-1,
            batch_size=args.probe_batch,
            num_workers=0,
            lr=args.lr,
            epochs=args.epochs,
            model_id="features_only",
            seed=SEED,
            feature_root=str(work),
            device=device,
            val_dataloader=True,  # only tested against None once the cache exists
            amp=False,
        )
        return 100.0 * result["lp_acc1"]

    jobs = {  # each side takes the round's index (clip_benchmark's end to end needs a fresh cache)
        "end to end": (lambda r: ours_end_to_end(), theirs_end_to_end),
        "probe only": (lambda r: ours_probe(), lambda r: theirs_probe()),
    }
    if args.probe_only:
        del jobs["end to end"]
    times = {(k, who): [] for k in jobs for who in ("ours", "clip_benchmark")}
    accuracy = {(k, who): [] for k in jobs for who in ("ours", "clip_benchmark")}
    for round_index in range(args.rounds):
        for kind, sides in jobs.items():
            for who, fn in zip(("ours", "clip_benchmark"), sides, strict=True):
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):  # its per-epoch log lines
                    accuracy[(kind, who)].append(fn(round_index))
                times[(kind, who)].append(time.perf_counter() - start)
                print(f"round {round_index} {kind} {who}: {times[(kind, who)][-1]:.2f} s")

    print(
        f"\ncheckpoint {args.checkpoint}, device {device}, Fashion-MNIST {len(train.labels)} "
        f"train ({len(val_idx)} of them validation) / {len(test.labels)} test images; "
        f"medians of {args.rounds} rounds; clip_benchmark's probe: lr {args.lr}, "
        f"{args.epochs} epochs, batch {args.probe_batch}"
    )
    for kind in jobs:
        ours_s = statistics.median(times[(kind, "ours")])
        theirs_s = statistics.median(times[(kind, "clip_benchmark")])
        ours_acc = statistics.median(accuracy[(kind, "ours")])
        theirs_acc = statistics.median(accuracy[(kind, "clip_benchmark")])
        print(
            f"{kind:10s} ours {ours_s:7.2f} s top-1 {ours_acc:5.2f}%   clip_benchmark "
            f"{theirs_s:7.2f} s top-1 {theirs_acc:5.2f}%   time ratio (ours / theirs) "
            f"{ours_s / theirs_s:.2f}×"
        )


if __name__ == "__main__":
    main()
