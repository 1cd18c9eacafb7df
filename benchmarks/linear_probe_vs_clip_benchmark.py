"""Our linear probe against clip_benchmark's on the same checkpoint, images and splits: wall time
and test accuracy, alternating rounds in one process.

    python benchmarks/linear_probe_vs_clip_benchmark.py CHECKPOINT [--train 5000] [--test 2000]
    python benchmarks/linear_probe_vs_clip_benchmark.py CHECKPOINT --save-features FILE
    python benchmarks/linear_probe_vs_clip_benchmark.py --features FILE  # probe only, no model

CHECKPOINT may be ``random:MODEL`` (a model of training/model_configs with random weights): the
toy run of benchmarks/gpu/run_on_device.sh uses it, so the whole path runs in the tests.

Two comparisons, both on Fashion-MNIST (train split for fitting, test split for scoring):

- end to end: dataset load, image features and the probe, as `make eval` runs a
  linear_probe task and as clip_benchmark's `linear_probe.evaluate` runs from its images;
- probe only: the same cached features handed to both (clip_benchmark reads them from its
  feature cache folder, in its own file layout), so only the fitting and scoring differ.

The data play the same roles on both sides: our probe chooses its regularisation (C) on a
validation fifth of the training images and refits on all of them; clip_benchmark gets that
fifth as its validation loader, sweeps its weight decay on it and refits on train + validation.
Its probe runs with its command line's defaults (AdamW, lr 0.1, 10 epochs, batch 64).

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

import numpy as np
import torch

from evaluation.linear_probe import SPLIT_SEED, VAL_FRACTION, linear_probe, split_validation

# --features needs only torch, numpy, clip_benchmark and sklearn (the GPU machine's image lacks
# webdataset and the datasets): the model and dataset modules are imported where used.

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


def fit_val_split(labels) -> tuple[np.ndarray, np.ndarray]:
    """The validation fifth our probe carves off, handed to clip_benchmark as its val split."""
    fit_idx, val_idx = split_validation(torch.as_tensor(labels), VAL_FRACTION, SPLIT_SEED)
    return fit_idx.numpy(), val_idx.numpy()


def run_their_probe(
    theirs, args, device: str, work: Path, model_id: str, model=None, loaders=(None, None, None)
) -> float:
    """clip_benchmark's probe with its command line's settings; top-1 in percent. Without a
    model and loaders it reads the features cached under work/model_id."""
    train_loader, val_loader, test_loader = loaders
    result = theirs.evaluate(
        model,
        train_loader,
        test_loader,
        fewshot_k=-1,
        batch_size=args.probe_batch,
        num_workers=0,
        lr=args.lr,
        epochs=args.epochs,
        model_id=model_id,
        seed=SPLIT_SEED,
        feature_root=str(work),
        device=device,
        # with the features cached it only tests this against None
        val_dataloader=True if val_loader is None else val_loader,
        amp=False,
    )
    return 100.0 * result["lp_acc1"]


def load_probe_model(spec: str):
    """(model, eval transform, tokenizer) of a checkpoint, or of ``random:MODEL``."""
    if not spec.startswith("random:"):
        from flipcommon.checkpoints import load_model

        model, preprocess, tokenizer, _ = load_model(spec)
        return model, preprocess, tokenizer
    import open_clip

    from training.model import build_model

    model, _, name = build_model(spec.removeprefix("random:"))
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    return model, preprocess, open_clip.get_tokenizer(name)


def extract_probe_inputs(model, preprocess, args, device: str) -> dict:
    """Normalised image features and labels of the train and test images, on the CPU."""
    from evaluation import datasets
    from evaluation.features import image_features

    train = datasets.fashion_mnist("train", args.train)
    test = datasets.fashion_mnist("test", args.test)
    train_x, train_bad = image_features(model, train.images, preprocess, device, args.batch, "tr")
    test_x, test_bad = image_features(model, test.images, preprocess, device, args.batch, "te")
    assert not train_bad and not test_bad, "Fashion-MNIST images always decode"
    return {
        "train_x": train_x,
        "train_y": torch.from_numpy(train.labels),
        "test_x": test_x,
        "test_y": torch.from_numpy(test.labels),
        "classes": len(train.classnames),
        "source": args.checkpoint,
    }


def write_feature_cache(inputs: dict, folder: Path) -> None:
    """The probe inputs in clip_benchmark's feature-cache layout (it skips featurising then)."""
    folder.mkdir(parents=True)
    fit_idx, val_idx = fit_val_split(inputs["train_y"])
    for split, x, y in (
        ("train", inputs["train_x"][fit_idx], inputs["train_y"][fit_idx]),
        ("val", inputs["train_x"][val_idx], inputs["train_y"][val_idx]),
        ("test", inputs["test_x"], inputs["test_y"]),
    ):
        torch.save(x, folder / f"features_{split}.pt")
        torch.save(y, folder / f"targets_{split}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", nargs="?", default="")
    parser.add_argument("--train", type=int, default=5000, help="training images (first N)")
    parser.add_argument("--test", type=int, default=2000, help="test images (first N)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="feature extraction batch")
    parser.add_argument("--lr", type=float, default=0.1, help="clip_benchmark's probe lr")
    parser.add_argument("--epochs", type=int, default=10, help="clip_benchmark's probe epochs")
    parser.add_argument("--probe-batch", type=int, default=64, help="clip_benchmark's batch")
    parser.add_argument("--probe-only", action="store_true", help="skip the end-to-end comparison")
    parser.add_argument(
        "--save-features", default="", help="only write the probe inputs to FILE, then stop"
    )
    parser.add_argument(
        "--features", default="", help="probe only, on inputs --save-features wrote (no model)"
    )
    args = parser.parse_args()
    if bool(args.checkpoint) == bool(args.features):
        parser.error("give a CHECKPOINT or --features FILE")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    theirs = clip_benchmark_probe(device)
    with tempfile.TemporaryDirectory(prefix="probe_bench_") as work:
        compare(args, device, theirs, Path(work))


def compare(args, device: str, theirs, work: Path) -> None:
    jobs = {}  # each side takes the round's index (clip_benchmark's end to end needs a fresh cache)
    if args.features:
        inputs = torch.load(args.features)
    else:
        model, preprocess, tokenizer = load_probe_model(args.checkpoint)
        model = model.to(device).eval()
        inputs = extract_probe_inputs(model, preprocess, args, device)
        if args.save_features:
            torch.save(inputs, args.save_features)
            print(f"wrote the probe inputs to {args.save_features}")
            return
        if not args.probe_only:
            jobs["end to end"] = end_to_end_jobs(
                model, preprocess, tokenizer, args, device, theirs, work
            )
    write_feature_cache(inputs, work / "features_only")

    def ours_probe(_round: int) -> float:
        values = linear_probe(
            inputs["train_x"].to(device),
            inputs["train_y"].to(device),
            inputs["test_x"].to(device),
            inputs["test_y"].to(device),
            inputs["classes"],
        )
        return 100.0 * values["top1"]

    def theirs_probe(_round: int) -> float:
        return run_their_probe(theirs, args, device, work, "features_only")

    jobs["probe only"] = (ours_probe, theirs_probe)
    times = {(k, who): [] for k in jobs for who in ("ours", "clip_benchmark")}
    accuracy = {(k, who): [] for k in jobs for who in ("ours", "clip_benchmark")}
    for round_index in range(args.rounds):
        for kind, sides in jobs.items():
            for who, fn in zip(("ours", "clip_benchmark"), sides, strict=True):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):  # its per-epoch log lines
                    accuracy[(kind, who)].append(fn(round_index))
                times[(kind, who)].append(time.perf_counter() - start)
                print(f"round {round_index} {kind} {who}: {times[(kind, who)][-1]:.2f} s")

    n_val = len(fit_val_split(inputs["train_y"])[1])
    print(
        f"\nfeatures of {inputs['source']}, device {device}, Fashion-MNIST "
        f"{len(inputs['train_y'])} train ({n_val} of them validation) / {len(inputs['test_y'])} "
        f"test images; medians of {args.rounds} rounds; clip_benchmark's probe: lr {args.lr}, "
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


def end_to_end_jobs(model, preprocess, tokenizer, args, device: str, theirs, work: Path):
    """Both sides from the images: dataset load, features and probe, as each runs it."""
    from evaluation import datasets
    from evaluation.config import TaskConfig
    from evaluation.tasks import run_task

    task = TaskConfig(
        "fashion_mnist/linear_probe",
        "fashion_mnist",
        "linear_probe",
        split="test",
        limit=args.test,
        train_limit=args.train,
    )

    def ours(_round: int) -> float:
        record = run_task(task, model, preprocess, tokenizer, device, args.batch, "")
        return 100.0 * record["metrics"]["top1"]

    def clip_benchmark(round_index: int) -> float:
        train = datasets.fashion_mnist("train", args.train)
        test = datasets.fashion_mnist("test", args.test)
        fit_idx, val_idx = fit_val_split(train.labels)

        def loader(images, labels):
            return torch.utils.data.DataLoader(_Images(images, labels, preprocess), args.batch)

        loaders = (
            loader([train.images[i] for i in fit_idx], train.labels[fit_idx]),
            loader([train.images[i] for i in val_idx], train.labels[val_idx]),
            loader(test.images, test.labels),
        )
        # a fresh cache folder per round: it extracts its features
        return run_their_probe(
            theirs, args, device, work, f"end_to_end_{round_index}", model, loaders
        )

    return ours, clip_benchmark


if __name__ == "__main__":
    main()
