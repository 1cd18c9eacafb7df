"""A training config's memory per GPU, by part, and the largest micro-batch that fits a GPU.

``python -m training CONFIG --plan [--world-size N] [--gpu-gib G]`` prints it. The parts:

- **parameters, gradients, optimizer state** (AdamW: two moments), fp32, whole on every rank
  under DDP (plus DDP's gradient buckets, a second copy of the gradients), a 1/N shard under
  FSDP (plus the block being computed and the next one, gathered whole; with several
  micro-batches per step, the whole model, which stays gathered through the step);
- **activations** per sample: what autograd saves for the backward pass, counted from the
  towers' shapes — per transformer block and token, the residual stream twice (the two layer
  norms' inputs), each linear layer's input (the attention's input, its q, k, v and output,
  the MLP's input and hidden layer, 8·w + 2·h values for width w and MLP width h) and a few
  values per token for the norms' statistics and the attention's log-sum-exp; plus what
  surrounds the blocks (the image the patch embedding reads, the stem, the final norm).
  Tokens per image are those the patch removal keeps (plus the class token); with gradient
  checkpointing a block keeps only its input, and the backward pass recomputes one block's
  activations at a time. Under bf16 autocast the linear layers' inputs are saved in bf16, the
  layer norms' fp32 inputs stay fp32;
- **the loss's logits**: this rank's rows × the global batch's columns, both directions, with
  their softmax and gradient;
- **loader batches** in host and shared memory (uint8 images).

The activation count is checked against the bytes autograd saves (``saved_tensors_hooks``, the
same on any device) in tests/test_memory_plan.py and docs/benchmarks.md. What it does not
count: the CUDA context and allocator fragmentation (``GPU_RESERVE``), the optimizer step's
temporaries, NCCL buffers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from training.batching import split_batch
from training.config import PhaseConfig, TrainConfig
from training.model import model_cfg

FP32 = 4
BF16 = 2
# the CUDA context, NCCL and the allocator's fragmentation: kept free of the planner's parts
GPU_RESERVE = 0.10


@dataclass(frozen=True)
class Tower:
    """A transformer tower's shape, for one sample."""

    layers: int
    width: int
    heads: int
    mlp_width: int
    tokens: int
    # the residual stream's bytes per value: open_clip's layer norms cast back to their input's
    # type, so under bf16 autocast the image tower's stream (from the bf16 patch embedding) is
    # bf16, the text tower's (from the fp32 token embedding) fp32
    residual_bytes: int = FP32
    # what a layer norm saves of its input: on CUDA, autocast runs layer_norm in fp32 (an fp32
    # copy of a bf16 input is saved); on the CPU it runs in the input's type
    norm_input_bytes: int = FP32

    def block_values_per_token(self) -> int:
        """Values saved per token per block at full precision (norm statistics and the
        attention's log-sum-exp counted as values too)."""
        return 8 * self.width + 2 * self.mlp_width + 2 * 2 + self.heads

    def block_bytes(self, precision: str) -> float:
        """Bytes one block saves for one sample."""
        if precision == "bf16":  # the norms' inputs as autocast keeps them; the rest in bf16
            per_token = 2 * self.width * self.norm_input_bytes
            per_token += (6 * self.width + 2 * self.mlp_width) * BF16
            per_token += (2 * 2 + self.heads) * FP32
        else:
            per_token = self.block_values_per_token() * FP32
        return per_token * self.tokens


def _heads(cfg: dict, width: int) -> int:
    if "heads" in cfg:
        return int(cfg["heads"])
    return max(1, width // int(cfg.get("head_width", 64)))


def towers(
    name: str, variant: str, phase: PhaseConfig, precision: str = "fp32", device: str = "cuda"
) -> tuple[Tower, Tower, int]:
    """The image and text towers of ``name`` at ``phase``'s mask ratio and image size, and the
    image side in pixels; ``device``: whose autocast policy (``cuda``, or ``cpu`` as the check
    on this machine measures)."""
    cfg = model_cfg(name, variant)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    size = phase.image_size or int(vision["image_size"])
    patches = (size // int(vision["patch_size"])) ** 2
    kept = patches - int(patches * phase.mask_ratio)
    v_width = int(vision["width"])
    t_width = int(text["width"])
    image = Tower(
        layers=int(vision["layers"]),
        width=v_width,
        heads=_heads(vision, v_width),
        mlp_width=int(v_width * float(vision.get("mlp_ratio", 4.0))),
        tokens=kept + 1,
        residual_bytes=BF16 if precision == "bf16" else FP32,
        norm_input_bytes=BF16 if precision == "bf16" and device == "cpu" else FP32,
    )
    caption = Tower(
        layers=int(text["layers"]),
        width=t_width,
        heads=_heads(text, t_width),
        mlp_width=int(t_width * float(text.get("mlp_ratio", 4.0))),
        tokens=int(text["context_length"]),
    )
    return image, caption, size


def activation_bytes(
    image: Tower, text: Tower, size: int, precision: str, checkpointing: bool
) -> dict[str, float]:
    """Bytes autograd saves per sample for one forward of both towers (``saved``), and the
    most one block's recomputation adds during a checkpointed backward (``recompute``)."""
    conv = BF16 if precision == "bf16" else FP32
    stem = 3 * size * size * conv  # the image the patch embedding's convolution reads
    stem += (image.tokens + 1) * image.width * image.norm_input_bytes  # the first norm's input
    stem += image.tokens * image.width * image.norm_input_bytes  # the final norm's
    stem += image.tokens * image.width * image.residual_bytes  # pooling
    stem += 2 * text.tokens * text.width * FP32  # the text's final norm and pooling
    if checkpointing:  # a block keeps its input only
        blocks = image.layers * image.tokens * image.width * image.residual_bytes
        blocks += text.layers * text.tokens * text.width * text.residual_bytes
        recompute = max(image.block_bytes(precision), text.block_bytes(precision))
    else:
        blocks = image.layers * image.block_bytes(precision)
        blocks += text.layers * text.block_bytes(precision)
        recompute = 0.0
    return {"saved": stem + blocks, "recompute": recompute}


@functools.lru_cache(maxsize=8)
def _meta_model(name: str, variant: str):
    """The model built on the meta device: its shapes, no memory, no initialisation."""
    import open_clip
    import torch

    from flipcommon.checkpoints import register_model_config
    from training.model import registered_name

    reg_name = registered_name(name, variant)
    register_model_config(reg_name, model_cfg(name, variant))
    with torch.device("meta"):
        return open_clip.create_model(reg_name, pretrained=None, device="meta")


def parameter_count(name: str, variant: str) -> int:
    return sum(p.numel() for p in _meta_model(name, variant).parameters())


def largest_block_parameters(name: str, variant: str) -> int:
    from training.sharding import transformer_blocks

    blocks = transformer_blocks(_meta_model(name, variant))
    return max(sum(p.numel() for p in block.parameters()) for block in blocks)


@dataclass(frozen=True)
class PhasePlan:
    phase: str
    micro_batch: int
    accum_steps: int
    parts: dict[str, float]  # bytes per GPU
    per_sample: float  # bytes per sample of the micro-batch (activations, recomputation)
    fixed: float  # what does not grow with the micro-batch
    largest_micro_batch: int  # that fits the GPU, 0 if none
    local_batch: int = 0

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def largest_dividing(self) -> int:
        """The largest micro-batch that fits and divides the local batch (what a config can
        set: ``training.batching.split_batch`` refuses the rest)."""
        fits = min(self.largest_micro_batch, self.local_batch)
        return max((d for d in range(1, fits + 1) if self.local_batch % d == 0), default=0)


def plan(
    config: TrainConfig,
    world_size: int,
    gpu_bytes: float,
    parameters: int | None = None,
    block_parameters: int | None = None,
) -> list[PhasePlan]:
    """Every phase's memory per GPU at ``world_size`` ranks."""
    name, variant = config.model.name, config.model.variant
    params = parameter_count(name, variant) if parameters is None else parameters
    block = block_parameters
    if block is None:
        block = largest_block_parameters(name, variant)
    sharded = config.parallelism == "fsdp"
    shard = world_size if sharded else 1
    state = {
        "parameters": params * FP32 / shard,
        "gradients": params * FP32 / shard,
        "optimizer state": 2 * params * FP32 / shard,
    }
    if sharded:  # the block being computed and the next, gathered whole
        gathered = BF16 if config.precision == "bf16" else FP32
        state["FSDP gathered blocks"] = 2 * block * gathered
    else:
        state["DDP gradient buckets"] = params * FP32
        if config.precision == "bf16":  # autocast's bf16 copies of the weights, per forward
            state["bf16 weight copies"] = params * BF16
    plans = []
    for phase in config.phases:
        micro = phase.micro_batch or config.micro_batch
        split = split_batch(config.batch_size, world_size, micro)
        fixed_parts = dict(state)
        if sharded:
            # without sync (every micro-batch but a step's last) FSDP keeps each unit's
            # unsharded gradient in fp32 until the synced one: the whole model's
            held = params if split.accum_steps > 1 else block
            fixed_parts["FSDP unsharded gradients"] = held * FP32
            if split.accum_steps > 1:  # every unit stays gathered through the step
                del fixed_parts["FSDP gathered blocks"]
                fixed_parts["FSDP gathered model"] = params * gathered
        image, text, size = towers(name, variant, phase, config.precision)
        acts = activation_bytes(image, text, size, config.precision, config.grad_checkpointing)
        # the backward's working memory: about one block's activation gradients at a time
        working = max(image.block_bytes(config.precision), text.block_bytes(config.precision))
        # each view's loss over the batch: local rows x global columns, two directions, and
        # their softmax and gradient (kept together until the loss's backward)
        fixed_parts["loss logits"] = (
            2 * 3 * phase.views * split.local_batch * config.batch_size * FP32
        )
        if split.accum_steps > 1:  # cached features and their gradients, both towers
            embed = int(model_cfg(name, variant)["embed_dim"])
            views_local = split.local_batch * phase.views
            fixed_parts["cached features"] = 2 * 2 * views_local * embed * FP32
        per_part = {
            "activations": acts["saved"] * phase.views,
            "one block recomputed": acts["recompute"] * phase.views,
            "backward working memory": working * phase.views,
        }
        per = sum(per_part.values())  # grows with the micro-batch
        fixed = sum(fixed_parts.values())
        parts = dict(fixed_parts)
        parts |= {k: v * split.micro_batch for k, v in per_part.items() if v}
        usable = gpu_bytes * (1 - GPU_RESERVE)
        largest = max(0, math.floor((usable - fixed) / per))
        plans.append(
            PhasePlan(
                phase.name,
                split.micro_batch,
                split.accum_steps,
                parts,
                per,
                fixed,
                largest,
                split.local_batch,
            )
        )
    return plans


def host_memory(config: TrainConfig, world_size: int, ranks_per_node: int) -> dict[str, float]:
    """Loader batches per node: each rank's workers keep ``prefetch_batches`` batches of uint8
    images in shared memory (/dev/shm), and the rank pins the one it copies."""
    largest = 0.0
    for phase in config.phases:
        native = model_cfg(config.model.name, config.model.variant)["vision_cfg"]["image_size"]
        size = phase.image_size or int(native)
        local = config.batch_size // world_size
        largest = max(largest, local * 3 * size * size)
    in_flight = config.data.workers * config.data.prefetch_batches * largest
    ranks = min(ranks_per_node, world_size)
    return {
        "shared memory per node": in_flight * ranks,
        "pinned host memory per node": 2 * largest * ranks,
    }


def gib(value: float) -> str:
    return f"{value / 2**30:,.2f} GiB"


def render(config: TrainConfig, world_size: int, gpu_gib: float, ranks_per_node: int) -> str:
    """The plan as text: one table per phase, then host memory."""
    lines = [
        f"{config.model.name} ({config.parallelism}, {config.precision}, checkpointing "
        f"{'on' if config.grad_checkpointing else 'off'}), {world_size} rank(s), "
        f"batch {config.batch_size}, GPU {gpu_gib:g} GiB ({GPU_RESERVE:.0%} kept free)"
    ]
    plans = plan(config, world_size, gpu_gib * 2**30)
    for phase_plan, phase in zip(plans, config.phases, strict=True):
        lines.append("")
        lines.append(
            f"phase {phase_plan.phase}: mask {phase.mask_ratio:g}, micro-batch "
            f"{phase_plan.micro_batch} x {phase_plan.accum_steps} per step"
        )
        for part, value in phase_plan.parts.items():
            lines.append(f"  {part:<28}{gib(value):>14}")
        lines.append(f"  {'total':<28}{gib(phase_plan.total):>14}")
        lines.append(
            f"  per sample {phase_plan.per_sample / 2**20:,.1f} MiB; the largest micro-batch "
            f"that fits: {phase_plan.largest_micro_batch} (dividing the local batch of "
            f"{phase_plan.local_batch}: {phase_plan.largest_dividing})"
        )
    lines.append("")
    for part, value in host_memory(config, world_size, ranks_per_node).items():
        lines.append(f"{part:<30}{gib(value):>14}")
    return "\n".join(lines)
