"""GPU training-step throughput and MFU by mask ratio, ours beside open_clip's, in bf16.

For each model and mask ratio: samples/s of a whole training step (forward, contrastive loss,
backward, AdamW) under bf16 autocast, for our model (patch removal drawn on the GPU) and for
open_clip's own model with ``force_patch_dropout`` at the same ratio, interleaved in rounds;
model FLOPs utilisation from the FLOPs of one training sample counted on the real model
(torch's FLOP counter, text at the whole context: ours cuts the text tower's padding, so its
MFU counts the work open_clip does for the same result); peak memory of a step. Our step is the
trainer's (text length groups, fused AdamW), open_clip's as its trainer runs it (its parameter
groups, torch's default AdamW); ``--captions`` gives real caption lengths. Each step's host
syncs (where the host waits for the GPU) are counted with torch's sync debug mode. Prints a Markdown
table, and writes it with the raw figures to $OUT (or --out) as train_step_mfu.{md,json}.

    python benchmarks/gpu/train_step_mfu.py                  # ViT-B/16 and ViT-L/14, H200 peak
    python benchmarks/gpu/train_step_mfu.py --models flip_micro --device cpu --steps 1  # smoke

On a GPU machine whose image lacks open_clip: `bash benchmarks/gpu/prepare_device_inputs.sh`
where pip reaches PyPI first, then `bash benchmarks/gpu/run_on_device.sh` on the GPU machine
with `.device_inputs/` copied beside the checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bench_common import open_clip_optimizer, sample_rows  # noqa: E402
from experiment.flops import train_flops_per_sample  # noqa: E402
from flipcommon.checkpoints import register_model_config  # noqa: E402
from training.loss import contrastive_loss  # noqa: E402
from training.masking import set_mask_ratio  # noqa: E402
from training.model import build_model, model_cfg  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.text_lengths import (  # noqa: E402
    caption_lengths,
    group_text_by_length,
    told_caption_lengths,
)

# dense bf16 tensor-core peak of one H100/H200 SXM (NVIDIA's data sheets): the MFU denominator
H200_BF16_PEAK_FLOPS = 989e12


def train_step(model, optimizer, images, tokens, lengths: list[int]) -> None:
    """One whole training step. Both use our fp32 loss (open_clip's ClipLoss would compute its
    logits in bf16 under autocast); ours is told the caption lengths read on the host, as the
    trainer tells it (open_clip's model ignores them)."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        with told_caption_lengths(model, lengths):
            image_features, text_features, _ = model(images, tokens)
        loss = contrastive_loss(image_features.float(), text_features.float(), model.logit_scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed_steps(model, optimizer, images, tokens, lengths, steps: int, device) -> float:
    """Seconds per whole training step, after the device has finished its work."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, images, tokens, lengths)
    sync()
    return (time.perf_counter() - start) / steps


def host_syncs(model, optimizer, images, tokens, lengths, device) -> int | None:
    """How many times one step stops the host until the GPU has caught up (torch's sync debug
    mode warns at each); None off a GPU."""
    import warnings

    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(model, optimizer, images, tokens, lengths)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def build_pair(name: str, variant: str, ratio: float, device: torch.device, text_groups: int):
    """Our model (as the trainer builds it) and open_clip's, same weights, both at ``ratio``."""
    torch.manual_seed(0)
    ours, cfg, _ = build_model(name, variant)
    group_text_by_length(ours, text_groups)
    set_mask_ratio(ours, ratio)
    register_model_config(f"{name}-{variant}-plain", model_cfg(name, variant))
    theirs = open_clip.create_model(f"{name}-{variant}-plain", force_patch_dropout=ratio or None)
    theirs.load_state_dict(ours.state_dict())
    pair = {"ours": ours.to(device).train(), "open_clip": theirs.to(device).train()}
    return pair, cfg


def measure_model(name: str, batch: int, ratios: list[float], args, device) -> list[dict]:
    settings = [(ratio, 0) for ratio in ratios]  # 0: the model's own image size
    flops = train_flops_per_sample(name, args.variant, settings, batch=2, device=str(device))
    rows = []
    for ratio in ratios:
        pair, cfg = build_pair(name, args.variant, ratio, device, args.text_groups)
        size, context = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
        images = torch.randn(batch, 3, size, size, device=device)
        if args.captions:
            tokens = sample_rows(torch.load(args.captions)[:, :context], batch)
        else:
            tokens = torch.randint(1, 49407, (batch, context))
        lengths = caption_lengths(tokens)  # on the host, as the trainer reads them
        tokens = tokens.to(device)
        optimizers = {
            "ours": build_optimizer(pair["ours"], 1e-5, 0.2, (0.9, 0.95)),
            "open_clip": open_clip_optimizer(pair["open_clip"]),
        }
        times: dict[str, list[float]] = {k: [] for k in pair}
        peak: dict[str, float] = {}
        syncs: dict[str, int | None] = {}
        for key, model in pair.items():  # warm-up, and the peak memory of a step
            if device.type == "cuda":
                # Each model's own: what the other model holds (its weights, and after its own
                # warm-up its gradients and optimizer state) is not counted, as if alone.
                own = sum(p.numel() * p.element_size() for p in model.parameters())
                others = torch.cuda.memory_allocated(device) - own
                torch.cuda.reset_peak_memory_stats(device)
            timed_steps(model, optimizers[key], images, tokens, lengths, args.warmup, device)
            if device.type == "cuda":
                peak[key] = (torch.cuda.max_memory_allocated(device) - others) / 2**30
            syncs[key] = host_syncs(model, optimizers[key], images, tokens, lengths, device)
        for _ in range(args.rounds):
            for key, model in pair.items():
                times[key].append(
                    timed_steps(model, optimizers[key], images, tokens, lengths, args.steps, device)
                )
        for key in pair:
            seconds = statistics.median(times[key])
            samples_per_s = batch / seconds
            rows.append(
                {
                    "model": name,
                    "implementation": key,
                    "mask_ratio": ratio,
                    "batch": batch,
                    "s_per_step": seconds,
                    "samples_per_s": samples_per_s,
                    "train_gflops_per_sample": flops[(ratio, 0)]["total"] / 1e9,
                    "mfu": samples_per_s * flops[(ratio, 0)]["total"] / args.peak_flops,
                    "peak_memory_gib": peak.get(key),
                    "host_syncs_per_step": syncs[key],
                }
            )
        del pair, optimizers
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    """Speed-up and peak memory against the same implementation at 0%, and ours against
    open_clip at the same ratio."""
    lines = [
        "| model | impl | mask | batch | samples/s | speed-up vs 0% | vs open_clip | MFU "
        "| peak GiB | memory vs 0% | host syncs/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    unmasked = {(r["model"], r["implementation"]): r for r in rows if r["mask_ratio"] == 0}
    same_ratio = {(r["model"], r["implementation"], r["mask_ratio"]): r for r in rows}
    for r in rows:
        base = unmasked[(r["model"], r["implementation"])]
        speedup = r["samples_per_s"] / base["samples_per_s"]
        other = same_ratio.get((r["model"], "open_clip", r["mask_ratio"]))
        versus = "–" if other is None else f"{r['samples_per_s'] / other['samples_per_s']:.2f}×"
        if r["peak_memory_gib"] is None:
            memory = memory_ratio = "–"
        else:
            memory = f"{r['peak_memory_gib']:.1f}"
            memory_ratio = f"{r['peak_memory_gib'] / base['peak_memory_gib']:.2f}×"
        lines.append(
            f"| {r['model']} | {r['implementation']} | {r['mask_ratio']:.0%} | {r['batch']} | "
            f"{r['samples_per_s']:.0f} | {speedup:.2f}× | {versus} | {100 * r['mfu']:.1f}% | "
            f"{memory} | {memory_ratio} | {_or_dash(r.get('host_syncs_per_step'))} |"
        )
    return "\n".join(lines)


def _or_dash(value) -> str:
    return "–" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["vit_b16", "vit_l14"])
    parser.add_argument("--batches", nargs="+", type=int, default=[256, 128])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.5, 0.75])
    parser.add_argument(
        "--variant", default="openclip", help="openclip (CLS, 77 tokens) or paper (GAP, 32)"
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peak-flops", type=float, default=H200_BF16_PEAK_FLOPS)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--captions",
        help="a tensor of caption token rows (prepare_device_inputs.sh saves the demo "
        "corpus's); default: random tokens filling the whole context",
    )
    parser.add_argument("--text-groups", type=int, default=4, help="ours: text length groups")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    if len(args.batches) == 1:
        args.batches = args.batches * len(args.models)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for name, batch in zip(args.models, args.batches, strict=True):
        rows += measure_model(name, batch, args.ratios, args, device)
        print(markdown(rows), flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (
        f"{device_name}, torch {torch.__version__}, open_clip {open_clip.__version__}, bf16, "
        f"{args.variant} variant, captions: {args.captions or 'random, whole context'}, "
        f"ours with {args.text_groups} text length groups and fused AdamW"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step_mfu.md").write_text(header + "\n\n" + markdown(rows) + "\n")
    (out / "train_step_mfu.json").write_text(json.dumps({"device": header, "rows": rows}, indent=2))
    print(header)


if __name__ == "__main__":
    main()
