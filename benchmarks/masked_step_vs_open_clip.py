"""Our masked training step against open_clip's own (``force_patch_dropout``), same model,
same ratio, same batch, interleaved in one process.

open_clip's PatchDropout draws its noise on the CPU and indexes with it; ours draws, sorts and
gathers on the tokens' device. On a CPU-only machine both run on the CPU, so the ratio here
mostly shows that ours costs no more; the device round-trip saving shows on a GPU.

    python benchmarks/masked_step_vs_open_clip.py [--model vit_b16] [--batch 16] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import statistics

import open_clip
import torch
from bench_common import random_batch, seconds_per_step

from training.masking import set_mask_ratio
from training.model import build_model, model_cfg, register
from training.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_b16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    ours, cfg, _ = build_model(args.model)
    set_mask_ratio(ours, args.ratio)
    register(f"{args.model}-plain", model_cfg(args.model))
    theirs = open_clip.create_model(f"{args.model}-plain", force_patch_dropout=args.ratio)
    theirs.load_state_dict(ours.state_dict())
    models = {"ours": ours, "open_clip": theirs}
    optimizers = {k: build_optimizer(m.train(), 1e-5, 0.2, (0.9, 0.95)) for k, m in models.items()}
    images, tokens = random_batch(cfg, args.batch)
    times: dict[str, list[float]] = {k: [] for k in models}
    for name, model in models.items():  # warm-up
        seconds_per_step(model, optimizers[name], images, tokens, 1)
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(
                seconds_per_step(model, optimizers[name], images, tokens, args.steps)
            )
    ours_t, theirs_t = statistics.median(times["ours"]), statistics.median(times["open_clip"])
    print(
        f"model {args.model}, batch {args.batch}, mask ratio {args.ratio}, "
        f"{args.rounds} rounds × {args.steps} steps, device cpu"
    )
    print(f"ours       {ours_t:.3f} s/step")
    print(f"open_clip  {theirs_t:.3f} s/step")
    print(f"speed ratio (open_clip time / ours): {theirs_t / ours_t:.2f}×")


if __name__ == "__main__":
    main()
