"""Our masked training step against open_clip's own, same model, same mask ratio, same batch,
same weights, interleaved in rounds in one process; each of our speed levers also alone.

open_clip's step, as its trainer runs it: its model with ``force_patch_dropout``, its
``ClipLoss``, torch's AdamW with its parameter groups (torch's default, multi-tensor, update).
Ours: the trainer's model and optimizer. Levers, each an arm on its own and then together:
- text lengths: the text tower runs each caption only up to its end-of-text token, in
  ``text_length_groups`` length groups (training.text_lengths), instead of the 77-token
  context with its padding;
- fused AdamW: torch's one-pass fused update instead of the multi-tensor one.

Captions decide what the text lever is worth: ``--captions demo`` (default) draws a batch of
the demo corpus's real captions; ``--captions full`` fills every caption to the context (the
lever's worst case: it saves nothing, and the benchmark shows what it costs).

    python benchmarks/masked_step_vs_open_clip.py [--model vit_b16] [--batch 8] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import statistics

import open_clip
import torch
from bench_common import (
    demo_caption_tokens,
    open_clip_optimizer,
    random_batch,
    sample_rows,
    seconds_per_step,
)

from flipcommon.checkpoints import register_model_config
from training.loss import contrastive_loss
from training.masking import set_mask_ratio
from training.model import build_model, model_cfg
from training.optim import build_optimizer
from training.text_lengths import group_text_by_length


def ours_arm(name: str, ratio: float, text_groups: int, fused: bool, state: dict):
    model, _, _ = build_model(name)
    model.load_state_dict(state)
    group_text_by_length(model, text_groups)
    set_mask_ratio(model, ratio)
    optimizer = build_optimizer(model.train(), 1e-5, 0.2, (0.9, 0.95), allow_fused=fused)

    def loss(image_features, text_features, _scale):
        return contrastive_loss(image_features, text_features, model.logit_scale)

    return model, optimizer, loss


def open_clip_arm(name: str, ratio: float, state: dict):
    register_model_config(f"{name}-plain", model_cfg(name))
    model = open_clip.create_model(f"{name}-plain", force_patch_dropout=ratio or None)
    model.load_state_dict(state)
    return model.train(), open_clip_optimizer(model), open_clip.ClipLoss()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_b16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--captions", choices=["demo", "full"], default="demo")
    parser.add_argument("--text-groups", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    reference, cfg, reg_name = build_model(args.model)
    state = reference.state_dict()
    images, tokens = random_batch(cfg, args.batch)
    if args.captions == "demo":
        tokens = sample_rows(demo_caption_tokens(open_clip.get_tokenizer(reg_name)), args.batch)
    else:  # every caption's end-of-text token (the highest id) in the context's last slot
        tokens[:, -1] = tokens.max() + 1
    lengths = (tokens.argmax(-1) + 1).float()
    arms = {
        "open_clip": open_clip_arm(args.model, args.ratio, state),
        "ours: fused AdamW only": ours_arm(args.model, args.ratio, 0, True, state),
        "ours: text lengths only": ours_arm(args.model, args.ratio, args.text_groups, False, state),
        "ours (both, the trainer's)": ours_arm(
            args.model, args.ratio, args.text_groups, True, state
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    for model, optimizer, loss_fn in arms.values():  # warm-up
        seconds_per_step(model, optimizer, images, tokens, 1, loss_fn)
    for _ in range(args.rounds):
        for key, (model, optimizer, loss_fn) in arms.items():
            times[key].append(
                seconds_per_step(model, optimizer, images, tokens, args.steps, loss_fn)
            )
    median = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"model {args.model}, batch {args.batch}, mask ratio {args.ratio}, captions "
        f"{args.captions} (tokens per caption: mean {lengths.mean():.1f}, max "
        f"{lengths.max():.0f} of {tokens.shape[1]}), {args.rounds} rounds × {args.steps} steps, "
        f"{torch.get_num_threads()} threads, device cpu"
    )
    for key, seconds in median.items():
        print(f"{key:28s} {seconds:.3f} s/step  {median['open_clip'] / seconds:.2f}× open_clip")


if __name__ == "__main__":
    main()
