"""Our trainer against open_clip's own (``open_clip_train``) on the same shard set and recipe,
with seeds: both final models through our evaluation suite, means ± std over seeds and Welch's
test per figure (the experiment's statistics), and each trainer's wall time per sample.

The recipe is the training config's (default: the demo's, configs/train/flip_tiny.yaml), read
once and given to both trainers:
- ours: ``python -m training`` on that config, with the arm's overrides and the seed;
- open_clip_train: one run per phase (``open_clip_train.main`` in its own process): the same
  model config, webdataset with resampling over the same tars, ``--force-patch-dropout`` at the
  phase's mask ratio, the same optimizer steps (samples // batch), peak lr
  (base_lr × batch / 256), warmup steps and weight decay; open_clip's ViT AdamW settings
  (betas 0.9/0.98, eps 1e-6) and crop (scale 0.9–1); the unmasked phase starts from the
  masked phase's weights with a fresh optimizer (``--pretrained``), as open_clip users do.

Each (arm, seed) writes ``OUT/ARM/seedS/record.json`` when done; a rerun skips finished ones
(seeds are the outer loop), so the benchmark can be run a few seeds at a time. Results:
``OUT/results.json`` and ``OUT/table.md``.

    python benchmarks/trainer_vs_open_clip_train.py [--seeds 0 1 2] [--arms ours open_clip_train]
        [--out runs/bench/trainer_vs_open_clip_train] [--shards runs/demo/shards]

About 15 minutes per trainer and seed on 2 CPU cores for the demo recipe, plus ~2 minutes of
evaluation. Arms beyond the two trainers change one thing of ours at a time (ablations): see
ARMS.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluation.config import EvalConfig  # noqa: E402
from evaluation.stage import evaluate_checkpoint  # noqa: E402
from experiment.analysis import compare, stat, summarise  # noqa: E402
from flipcommon.checkpoints import OPEN_CLIP_PREFIX, latest_checkpoint  # noqa: E402
from flipcommon.config import from_dict, load_config  # noqa: E402
from training.config import PhaseConfig, TrainConfig  # noqa: E402
from training.data import open_shard_set  # noqa: E402
from training.model import model_cfg, registered_name  # noqa: E402

# name -> (trainer, our config overrides): ablations change one thing of ours at a time.
ARMS: dict[str, tuple[str, list[str]]] = {
    "ours": ("ours", []),
    "open_clip_train": ("open_clip_train", []),
    # the paper's wider crop (scale 0.5-1) instead of the default (0.9-1, as open_clip's)
    "ours_crop_0.5": ("ours", ["data.crop_scale_min=0.5"]),
    # open_clip's ViT AdamW second moment (beta2 0.98) instead of 0.95
    "ours_beta2_0.98": ("ours", ["betas=[0.9, 0.98]"]),
    # the unmasked phase with a fresh optimizer, as open_clip_train --pretrained starts it
    "ours_fresh_optimizer": ("ours", ["later_phases.fresh_optimizer=true"]),
}
OPEN_CLIP_VIT_ADAMW = {"beta1": 0.9, "beta2": 0.98, "eps": 1e-6}  # its defaults for a ViT
DEFAULT_FIGURES = [
    "concepts_heldout/name:top1",
    "concepts_heldout/name:top5",
    "concepts_heldout/retrieval:image_retrieval_recall@10",
    "concepts_heldout/retrieval:text_retrieval_recall@10",
    "emoji_heldout/name:top1",
    "emoji_heldout/retrieval:image_retrieval_recall@10",
    "emoji_heldout/retrieval:text_retrieval_recall@10",
    "tuxpaint/retrieval:image_retrieval_recall@10",
    "fashion_mnist/linear_probe:top1",
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-config", default=str(REPO / "configs/train/flip_tiny.yaml"))
    parser.add_argument("--eval-config", default=str(REPO / "configs/eval/demo.yaml"))
    parser.add_argument("--shards", default="runs/demo/shards", help="a shard set (make shards)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["ours", "open_clip_train"], choices=ARMS)
    parser.add_argument("--out", default="runs/bench/trainer_vs_open_clip_train")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training config override for every arm (the toy run in the tests)",
    )
    parser.add_argument("--figures", nargs="+", default=DEFAULT_FIGURES, metavar="TASK:METRIC")
    args = parser.parse_args(argv)
    # the trainers run from the repository's root: local paths as the user meant them
    args.out = str(Path(args.out).resolve())
    if "://" not in args.shards:
        args.shards = str(Path(args.shards).resolve())
    return args


def recipe(args: argparse.Namespace, seed: int, arm_overrides: list[str], run_dir: Path):
    """The training config of one (arm, seed). ``later_phases.KEY=VALUE`` sets KEY in every phase
    after the first (the config's overrides cannot name a list item)."""
    every_later_phase = [o for o in arm_overrides if o.startswith("later_phases.")]
    overrides = [
        f"data.shards={args.shards}",
        f"run_dir={run_dir}",
        f"seed={seed}",
        "device=cpu",
        *args.overrides,
        *(o for o in arm_overrides if o not in every_later_phase),
    ]
    config = load_config(TrainConfig, args.train_config, overrides)
    for override in every_later_phase:
        key, _, value = override.removeprefix("later_phases.").partition("=")
        if key not in {f.name for f in fields(PhaseConfig)}:
            raise SystemExit(f"{override}: a phase has no {key!r}")
        for phase in config.phases[1:]:
            setattr(phase, key, yaml.safe_load(value))
    return config


def train_ours(config: TrainConfig, folder: Path) -> float:
    """Wall seconds of ``python -m training`` on ``config``, from scratch (a crashed run starts
    over: a resumed one would not time the whole run)."""
    shutil.rmtree(config.run_dir, ignore_errors=True)
    config_path = folder / "train_config.yaml"
    config_path.write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    start = time.perf_counter()
    run_logged([sys.executable, "-m", "training", str(config_path)], folder / "train.log")
    return time.perf_counter() - start


def open_clip_phase_args(config: TrainConfig, phase_index: int, shards: list[str], logs: Path):
    """open_clip_train's arguments for one of the recipe's phases (not the model's)."""
    phase = config.phases[phase_index]
    batch = config.batch_size
    steps = max(1, phase.samples // batch)  # as training.phases counts them
    argv = [
        "--train-data", "::".join(shards),
        "--dataset-type", "webdataset",
        "--dataset-resampled",
        "--train-num-samples", str(steps * batch),  # open_clip runs ceil(n / batch) steps
        "--batch-size", str(batch),
        "--epochs", "1",
        "--lr", repr(phase.base_lr * batch / 256),
        "--warmup", str(min(steps, phase.warmup_samples // batch)),
        "--wd", repr(config.weight_decay),
        "--beta1", repr(OPEN_CLIP_VIT_ADAMW["beta1"]),
        "--beta2", repr(OPEN_CLIP_VIT_ADAMW["beta2"]),
        "--eps", repr(OPEN_CLIP_VIT_ADAMW["eps"]),
        "--precision", "fp32",
        "--workers", str(config.data.workers),
        "--seed", str(config.seed),
        "--logs", str(logs),
        "--name", f"phase{phase_index}",
        "--save-frequency", "1",
        "--zeroshot-frequency", "0",
        "--val-frequency", "0",
        "--log-every-n-steps", str(config.log_every_steps),
        "--device", "cpu",
    ]  # fmt: skip
    if phase.mask_ratio > 0:
        argv += ["--force-patch-dropout", repr(phase.mask_ratio)]
    if phase_index > 0:
        argv += ["--pretrained", str(open_clip_checkpoint(logs, phase_index - 1))]
    return argv


def open_clip_checkpoint(logs: Path, phase_index: int) -> Path:
    return logs / f"phase{phase_index}" / "checkpoints" / "epoch_1.pt"


def train_open_clip(config: TrainConfig, folder: Path, model_name: str) -> float:
    """Wall seconds of open_clip_train over the recipe's phases, one process per phase."""
    shards = open_shard_set(config.data.shards).urls
    logs = folder / "open_clip_logs"
    shutil.rmtree(logs, ignore_errors=True)  # open_clip_train refuses an existing run name
    cfg_path = folder / "model_cfg.json"
    cfg_path.write_text(json.dumps(model_cfg(config.model.name, config.model.variant)))
    seconds = 0.0
    for index in range(len(config.phases)):
        argv = ["--model", model_name, *open_clip_phase_args(config, index, shards, logs)]
        command = [sys.executable, __file__, "_open_clip_train", str(cfg_path), *argv]
        start = time.perf_counter()
        run_logged(command, folder / "train.log")
        seconds += time.perf_counter() - start
    return seconds


def run_logged(command: list[str], log_path: Path) -> None:
    with log_path.open("ab") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-20:]
        raise SystemExit(f"{command[:4]} exited with {result.returncode}:\n" + "\n".join(tail))


def open_clip_train_entry(cfg_path: str, argv: list[str]) -> None:
    """In its own process: make our model config known to open_clip, then its trainer's main."""
    from open_clip_train.main import main

    from flipcommon.checkpoints import register_model_config

    name = argv[argv.index("--model") + 1]
    register_model_config(name, json.loads(Path(cfg_path).read_text()))
    main(argv)


def setup_of(trainer: str, config: TrainConfig) -> dict:
    """What a record's figures depend on: the trainer and the recipe it read (open_clip_train
    crops as open_clip does, whatever our crop setting)."""
    recipe = asdict(config) | {"run_dir": None}
    if trainer == "open_clip_train":
        recipe["data"]["crop_scale_min"] = None
    return {"trainer": trainer, "recipe": recipe}


def as_now(setup: dict) -> dict:
    """A recorded setup as the current config reads it: fields added since the record was
    written take their defaults (the run had them so), unknown ones fail."""
    recipe = {**setup["recipe"], "run_dir": ""}
    recipe["data"] = {k: v for k, v in recipe["data"].items() if v is not None}
    return setup_of(setup["trainer"], from_dict(TrainConfig, recipe))


def run_arm(args, suite: EvalConfig, arm: str, seed: int) -> dict:
    folder = Path(args.out) / arm / f"seed{seed}"
    done = folder / "record.json"
    trainer, arm_overrides = ARMS[arm]
    config = recipe(args, seed, arm_overrides, folder / "train")
    setup = setup_of(trainer, config)
    if done.exists():
        record = json.loads(done.read_text())
        if as_now(record["setup"]) != setup:
            raise SystemExit(f"{done} holds a run of another setup: delete it or use another --out")
        print(f"   done before: {done}", flush=True)
        return record
    folder.mkdir(parents=True, exist_ok=True)
    steps = sum(max(1, p.samples // config.batch_size) for p in config.phases)
    if trainer == "ours":
        seconds = train_ours(config, folder)
        checkpoint = latest_checkpoint(config.run_dir)
    else:
        from flipcommon.checkpoints import register_model_config

        model_name = registered_name(config.model.name, config.model.variant)
        register_model_config(model_name, model_cfg(config.model.name, config.model.variant))
        seconds = train_open_clip(config, folder, model_name)
        final = open_clip_checkpoint(folder / "open_clip_logs", len(config.phases) - 1)
        checkpoint = f"{OPEN_CLIP_PREFIX}{model_name}@{final}"
    results = evaluate_checkpoint(checkpoint, suite, "cpu")
    record = {
        "arm": arm,
        "seed": seed,
        "setup": setup,
        "mask_ratio": config.phases[0].mask_ratio,
        "batch_size": config.batch_size,
        "unmasked_tuning": len(config.phases) > 1,
        "wall_seconds": seconds,
        "points": [
            {
                "checkpoint": checkpoint,
                "step": steps,
                "samples_seen": steps * config.batch_size,
                "train_seconds": seconds,
                "metrics": {
                    f"{r['task_name']}:{k}": v for r in results for k, v in r["metrics"].items()
                },
                "chance": {
                    f"{r['task_name']}:{k}": v for r in results for k, v in r["chance"].items()
                },
            }
        ],
    }
    done.write_text(json.dumps(record, indent=1))
    return record


def table(runs: list[dict], figures: list[str], baseline: str) -> str:
    """Markdown: each figure's mean ± std over seeds per arm (in %), and each arm's difference
    from ``baseline`` with Welch's p; the last row is wall time per sample."""
    summaries = summarise(runs, figures)
    base = next(s for s in summaries if s.arm == baseline)
    others = [s for s in summaries if s.arm != baseline]
    head = ["figure (%)", *[f"{s.arm} (n={s.seeds})" for s in summaries]]
    head += [f"{s.arm} − {baseline}, p" for s in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in figures:
        cells = [key] + [fmt(s.metrics[key], 100) for s in summaries]
        for arm in others:
            comparison = compare(arm, base, key)
            cells.append(f"{100 * comparison.difference:+.2f}, p={comparison.p_value:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    per_sample = {}
    for run in runs:
        samples = run["points"][-1]["samples_seen"]
        per_sample.setdefault(run["arm"], []).append(1e3 * run["wall_seconds"] / samples)
    cells = ["wall ms per sample"] + [fmt(stat(per_sample[s.arm]), 1) for s in summaries]
    base_ms = stat(per_sample[baseline]).mean
    cells += [f"×{stat(per_sample[s.arm]).mean / base_ms:.2f}" for s in others]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt(value, scale: float) -> str:
    if math.isnan(value.mean):
        return "–"
    if value.n < 2:
        return f"{scale * value.mean:.2f}"
    return f"{scale * value.mean:.2f} ± {scale * value.std:.2f}"


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    suite = load_config(EvalConfig, args.eval_config)
    runs = []
    total = len(args.seeds) * len(args.arms)
    for seed in args.seeds:
        for arm in args.arms:
            print(f"== [{len(runs) + 1}/{total}] {arm}, seed {seed}", flush=True)
            runs.append(run_arm(args, suite, arm, seed))
    figures = [f for f in args.figures if any(f in r["points"][-1]["metrics"] for r in runs)]
    baseline = "open_clip_train" if "open_clip_train" in args.arms else args.arms[-1]
    text = table(runs, figures, baseline)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps({"runs": runs}, indent=1))
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_open_clip_train"]:
        open_clip_train_entry(sys.argv[2], sys.argv[3:])
    else:
        main(sys.argv[1:])
