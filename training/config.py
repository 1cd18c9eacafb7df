"""The training stage's config (``configs/train/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from flipcommon.config import Range


@dataclass
class PhaseConfig:
    """One phase of a run: FLIP pre-training (mask_ratio 0.5 or 0.75), or unmasked tuning (0)."""

    name: str = "pretrain"
    mask_ratio: Annotated[float, Range(0, 1, high_open=True)] = 0.5
    samples: int = 1_000_000  # length of the phase, in training samples
    base_lr: float = 4e-6  # lr = base_lr * global_batch / 256
    warmup_samples: int = 0
    # A timed phase instead (equal-compute comparisons): it runs for this much training time,
    # measured on the step loop's clock (checkpoint writes excluded), and its warmup and cosine
    # decay follow that clock. `samples` and `warmup_samples` are then ignored. Such a phase
    # resumes where its clock stopped, but not bit for bit (how far it gets depends on speed).
    seconds: float = 0.0
    warmup_seconds: float = 0.0
    # Images per process per forward pass in this phase, when it differs from the run's
    # micro_batch (0: the run's). Unmasked tuning holds about twice the activations of 50%.
    micro_batch: int = 0
    # Masked views of each pair per step: 2 spends the compute that masking saves on a second
    # view of the same image (its own random patches) instead of on more pairs; the loss is the
    # mean of the views' losses. Each view also runs the text tower (the batch is repeated).
    views: Annotated[int, Range(1)] = 1
    # Train this phase on images downsampled to this many pixels a side (0: the model's size),
    # a multiple of the patch: fewer patch tokens, like masking, but every region is seen at
    # lower detail. A later phase at 0 tunes the same weights at full size.
    image_size: int = 0
    # Start this phase with the optimizer's state cleared (Adam's moments and step count), as a
    # run started from the previous phase's weights would (open_clip_train --pretrained);
    # false carries the state over.
    fresh_optimizer: bool = False


@dataclass
class ModelConfig:
    name: str = "flip_tiny"  # a JSON in training/model_configs/ (or any open_clip model name)
    # openclip: CLS pooling, the config's context | paper: average pooling, 32 text tokens
    variant: Literal["openclip", "paper"] = "openclip"


@dataclass
class DataConfig:
    shards: str = "runs/demo/shards"  # a shard set folder (any fsspec URL) with sizes.json
    workers: int = 2
    shuffle_buffer: int = 2000
    # Random resized crop (scale_min, 1), bicubic. 0.9 as open_clip crops: against the paper's
    # 0.5 it names +1.8 points more held-out concepts (p = 0.05) and carries less over to the
    # held-out emoji style (-1.1 to -3.7 points), docs/benchmarks.md; the held-out concepts
    # decide. 0.5 for the wider crop.
    crop_scale_min: Annotated[float, Range(0, 1, low_open=True)] = 0.9
    # How loader workers start. "spawn": a fresh interpreter (seconds per start). "fork" starts
    # faster, but every page of weights and optimizer state the trainer then updates is copied:
    # for a large model (ViT-H/14: ~16 GB of state) that doubles the memory. Fork only small ones.
    worker_start: Literal["spawn", "fork", "forkserver"] = "spawn"
    # Batches each worker keeps ready. They wait in shared memory (/dev/shm): per rank about
    # workers x prefetch_batches x local batch x 3 x size^2 bytes (uint8 images; 8 x 4 x 512
    # images at 224 px: ~2.5 GB), which the container's /dev/shm must hold.
    prefetch_batches: int = 4
    # A checkpoint begins the stream's next segment in the kept workers; when they send nothing
    # for this long (one blocked in a read that storage never answers) they are killed and
    # started afresh. Above the storage client's own timeouts and retries (botocore: 60 s reads).
    restart_deadline_s: Annotated[float, Range(0, low_open=True)] = 300.0


@dataclass
class CpuSmokeConfig:
    """What to run instead of the full recipe when no GPU is present (a smoke test)."""

    enabled: bool = False
    batch_size: Annotated[int, Range(1)] = 2
    steps_per_phase: int = 1


@dataclass
class WandbConfig:
    """Weights & Biases logging of the same scalars as TensorBoard (main rank only)."""

    enabled: bool = False
    project: str = "flip"
    # offline: written under {run_dir}/wandb/, uploaded later with `wandb sync` (no account or
    # network needed); online: logged live (needs WANDB_API_KEY)
    mode: Literal["offline", "online"] = "offline"


@dataclass
class TrainConfig:
    run_dir: str = "runs/demo/train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    batch_size: Annotated[int, Range(1)] = 256  # global contrastive batch
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    # With more than one process: ddp (each rank holds the whole model) or fsdp (weights,
    # gradients and optimizer state sharded across ranks; for ViT-H/14 and larger)
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast
    grad_checkpointing: bool = False
    # The text tower runs each caption only up to its end-of-text token, captions sorted into
    # at most this many length groups (same features and gradients; training.text_lengths).
    # 0: every caption over the whole context, padding included, as open_clip does.
    text_length_groups: int = 4
    # Images per process per forward pass (0: the whole batch per process at once). Each step
    # accumulates batch_size / (processes x micro_batch) of them; the contrastive batch stays
    # batch_size (training.batching).
    micro_batch: int = 0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # How long a training collective may wait on another rank before the run fails instead of
    # hanging (a rank that died or hangs stops the run in this long)...
    dist_timeout_s: Annotated[float, Range(1.0)] = 600.0
    # ...and how long a wait on storage may take (the other ranks waiting while rank 0 writes
    # or reads a checkpoint: ViT-H/14 with Adam is ~16 GB).
    dist_storage_timeout_s: Annotated[float, Range(1.0)] = 3600.0
    checkpoint_every_steps: int = 0  # 0 = only at phase ends
    checkpoint_every_s: float = 0.0  # also every this many seconds of training time (0 = off)
    log_every_steps: int = 10
    # TensorBoard events go to {run_dir}/tensorboard; for a remote run dir they are written
    # locally and copied there at most this often (and at every checkpoint)
    tensorboard_sync_s: float = 30.0
    wandb: WandbConfig = field(default_factory=WandbConfig)
    resume: bool = False
    cpu_smoke: CpuSmokeConfig = field(default_factory=CpuSmokeConfig)
