"""Everything a training process builds before its first step: the process group, the batch
split of every phase, the model (sharded or wrapped), the optimizer, the state a resumed run
continues from, and the batch stream. ``training.trainer`` then only advances it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch
from torch import nn

from flipcommon.checkpoints import latest_checkpoint
from training import checkpoint as ckpt
from training import rng
from training.batching import BatchSplit, split_batch
from training.config import TrainConfig
from training.data import ImageNormalizer, make_loader, open_shard_set, train_transform
from training.distributed import Dist, init_distributed, resolve_device
from training.model import build_model, preprocess_cfg
from training.optim import build_optimizer
from training.phases import PhasePlan, plan_phases
from training.resolution import check_image_size, enable_any_resolution
from training.sharding import shard_model
from training.text_lengths import group_text_by_length

log = logging.getLogger(__name__)


@dataclass
class TrainRun:
    """One process's share of a run, built by ``set_up``."""

    config: TrainConfig
    dist: Dist
    device: torch.device
    smoke: bool  # the CPU smoke configuration instead of the full recipe
    global_batch: int
    plans: list[PhasePlan]
    splits: list[BatchSplit]  # per phase
    model: nn.Module  # open_clip's CLIP (sharded in place under FSDP)
    train_model: nn.Module  # what the step calls: the model, or its DDP wrapper
    sharded: bool
    optimizer: torch.optim.Optimizer
    configs: tuple[dict, dict]  # open_clip's model_cfg and preprocess_cfg, for checkpoints
    state: ckpt.TrainState
    last_checkpoint: str | None
    autocast: Callable[[], contextlib.AbstractContextManager]
    to_model_input: ImageNormalizer  # uint8 batches on the device → normalised floats
    loader: torch.utils.data.DataLoader  # the batch stream's, workers kept for the run


def set_up(config: TrainConfig) -> TrainRun:
    device = resolve_device(config.device)
    dist_info = init_distributed(device.type, config.dist_timeout_s, config.dist_storage_timeout_s)
    device = resolve_device(config.device, dist_info.local_rank)
    smoke = config.cpu_smoke.enabled and device.type == "cpu"
    global_batch = config.cpu_smoke.batch_size if smoke else config.batch_size
    # Checked for every phase before anything is built: a split that cannot work fails now.
    splits = [
        split_batch(global_batch, dist_info.world_size, phase.micro_batch or config.micro_batch)
        for phase in config.phases
    ]
    plans = plan_phases(
        config.phases, global_batch, config.cpu_smoke.steps_per_phase if smoke else 0
    )
    _log_setup(config, dist_info, device, global_batch, smoke)

    sharded = dist_info.world_size > 1 and config.parallelism == "fsdp"
    model, model_cfg, reg_name = _build_model(config, dist_info, device, sharded)
    for size in {plan.image_size for plan in plans if plan.image_size}:
        check_image_size(size, model)
        enable_any_resolution(model)
    optimizer = build_optimizer(model, plans[0].peak_lr, config.weight_decay, tuple(config.betas))
    state, last_checkpoint = ckpt.TrainState(), None
    if config.resume:
        state, last_checkpoint = _resume(config.run_dir, model, optimizer, dist_info)
    train_model = model
    if dist_info.world_size > 1 and not sharded:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    pp_cfg = preprocess_cfg(model)
    return TrainRun(
        config=config,
        dist=dist_info,
        device=device,
        smoke=smoke,
        global_batch=global_batch,
        plans=plans,
        splits=splits,
        model=model,
        train_model=train_model,
        sharded=sharded,
        optimizer=optimizer,
        configs=(model_cfg, pp_cfg),
        state=state,
        last_checkpoint=last_checkpoint,
        autocast=_autocast(device, config.precision),
        to_model_input=ImageNormalizer(pp_cfg["mean"], pp_cfg["std"], device),
        loader=_loader(config, dist_info, device, smoke, global_batch, pp_cfg, reg_name),
    )


def _log_setup(
    config: TrainConfig, dist_info: Dist, device: torch.device, global_batch: int, smoke: bool
) -> None:
    if dist_info.is_main:
        log.info(
            "world size %d, global batch %d (%d per process), device %s",
            dist_info.world_size,
            global_batch,
            global_batch // dist_info.world_size,
            device.type,
        )
    if smoke:
        log.warning(
            "no GPU: running the CPU smoke configuration (batch %d, %d step(s) per phase) "
            "instead of the full recipe",
            global_batch,
            config.cpu_smoke.steps_per_phase,
        )


def _build_model(
    config: TrainConfig, dist_info: Dist, device: torch.device, sharded: bool
) -> tuple[nn.Module, dict, str]:
    """open_clip's CLIP with our patch removal and text cut, on ``device``, sharded under FSDP
    (before the optimizer is built: it must hold the sharded parameters)."""
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model, model_cfg, reg_name = build_model(config.model.name, config.model.variant)
    rng.seed_rank(config.seed, dist_info.rank)  # then each rank its own masks
    # A sharded block gathers its weights on every call, so all ranks must call it equally
    # often: one cut per rank (its own longest caption) instead of a varying number of groups.
    group_text_by_length(
        model, min(config.text_length_groups, 1) if sharded else config.text_length_groups
    )
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if sharded:
        shard_model(model, config.precision)
    return model, model_cfg, reg_name


def _loader(
    config: TrainConfig,
    dist_info: Dist,
    device: torch.device,
    smoke: bool,
    global_batch: int,
    pp_cfg: dict,
    reg_name: str,
) -> torch.utils.data.DataLoader:
    """This rank's loader. Its stream restarts, reseeded by the step, at every checkpoint (in
    the same workers); a run resumed from a checkpoint therefore sees exactly the batches the
    uninterrupted run saw after it."""
    size = pp_cfg["size"] if isinstance(pp_cfg["size"], int) else pp_cfg["size"][0]
    return make_loader(
        open_shard_set(config.data.shards),
        train_transform(size, config.data.crop_scale_min),
        open_clip.get_tokenizer(reg_name),
        batch_size=global_batch // dist_info.world_size,
        workers=min(config.data.workers, 1) if smoke else config.data.workers,
        shuffle_buffer=config.data.shuffle_buffer,
        worker_start=config.data.worker_start,
        prefetch_batches=config.data.prefetch_batches,
        pin_memory=device.type == "cuda",
        seed=config.seed + 7919 * dist_info.rank,
    )


def _autocast(device: torch.device, precision: str) -> Callable:
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _resume(
    run_dir: str, model: nn.Module, optimizer: torch.optim.Optimizer, dist_info: Dist
) -> tuple[ckpt.TrainState, str | None]:
    latest = latest_checkpoint(run_dir)
    if latest is None:
        log.info("resume: no checkpoint in %s, starting fresh", run_dir)
        return ckpt.TrainState(), None
    saved = ckpt.resume_from(latest, model, optimizer, dist_info.rank, dist_info.world_size)
    rng.restore(saved["rng"], dist_info.rank, dist_info.world_size)
    state = ckpt.TrainState(**saved["train_state"])
    log.info("resumed from %s at step %d (%d samples seen)", latest, state.step, state.samples_seen)
    return state, latest
