"""Cost of one FLIP training step by mask ratio, against the unmasked step in the same process.

FLIP's claim: removing 50% / 75% of patches makes an image-encoder step about 2× / 3-4× cheaper.
Prints time per step and the ratio to mask_ratio 0 for each ratio, interleaving the ratios in
rounds so that machine noise hits all of them alike.

    python benchmarks/step_cost_by_mask_ratio.py [--model flip_tiny] [--batch 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_common import random_batch, seconds_per_step

from training.masking import set_mask_ratio
from training.model import build_model
from training.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="flip_tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, cfg, _ = build_model(args.model)
    model.train()
    optimizer = build_optimizer(model, 1e-4, 0.2, (0.9, 0.95))
    images, tokens = random_batch(cfg, args.batch)
    ratios = [0.0, 0.5, 0.75]
    times: dict[float, list[float]] = {r: [] for r in ratios}
    for r in ratios:  # warm-up
        set_mask_ratio(model, r)
        seconds_per_step(model, optimizer, images, tokens, 1)
    for _ in range(args.rounds):
        for r in ratios:
            set_mask_ratio(model, r)
            times[r].append(seconds_per_step(model, optimizer, images, tokens, args.steps))
    base = statistics.median(times[0.0])
    print(
        f"model {args.model}, batch {args.batch}, {args.rounds} rounds × {args.steps} steps, "
        f"{torch.get_num_threads()} threads"
    )
    print("mask_ratio  s/step (median)  speed-up vs unmasked")
    for r in ratios:
        t = statistics.median(times[r])
        print(f"{r:<10}  {t:15.3f}  {base / t:8.2f}×")


if __name__ == "__main__":
    main()
