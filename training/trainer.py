"""The FLIP training loop: phases of masked pre-training then unmasked tuning, checkpoints,
progress, resume."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict

import open_clip
import torch

from flipcommon.checkpoints import latest_checkpoint, read_weights
from training import checkpoint as ckpt
from training import rng
from training.batching import split_batch
from training.config import TrainConfig
from training.data import make_loader, open_shard_set, train_transform
from training.distributed import (
    agreed_max,
    barrier,
    close_distributed,
    init_distributed,
    resolve_device,
)
from training.loss import clamp_logit_scale
from training.masking import set_mask_ratio
from training.model import build_model, preprocess_cfg
from training.observe import Progress, plot_curves
from training.optim import build_optimizer, set_lr
from training.phases import plan_phases
from training.sharding import average_replicated_grads, shard_model
from training.step import forward_backward
from training.text_lengths import group_text_by_length

log = logging.getLogger(__name__)


def nullcontext_autocast() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def bf16_autocast(device: torch.device):
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def crossed_interval(before: float, after: float, every: float) -> bool:
    """Whether the clock passed a multiple of ``every`` between two readings."""
    return every > 0 and int(after // every) > int(before // every)


def train(config: TrainConfig) -> str:
    """Run all phases of ``config``; return the URL of the final checkpoint."""
    device = resolve_device(config.device)
    dist_info = init_distributed(device.type, config.dist_timeout_s)
    device = resolve_device(config.device, dist_info.local_rank)
    smoke = config.cpu_smoke.enabled and device.type == "cpu"
    global_batch = config.cpu_smoke.batch_size if smoke else config.batch_size
    # Checked for every phase before anything is built: a split that cannot work fails now.
    splits = [
        split_batch(global_batch, dist_info.world_size, phase.micro_batch or config.micro_batch)
        for phase in config.phases
    ]
    local_batch = split_batch(global_batch, dist_info.world_size).local_batch
    if dist_info.is_main:
        log.info(
            "world size %d, global batch %d (%d per process), device %s",
            dist_info.world_size,
            global_batch,
            local_batch,
            device.type,
        )
    plans = plan_phases(
        config.phases, global_batch, config.cpu_smoke.steps_per_phase if smoke else 0
    )
    if smoke:
        log.warning(
            "no GPU: running the CPU smoke configuration (batch %d, %d step(s) per phase) "
            "instead of the full recipe",
            global_batch,
            config.cpu_smoke.steps_per_phase,
        )

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model, model_cfg, reg_name = build_model(config.model.name, config.model.variant)
    rng.seed_rank(config.seed, dist_info.rank)  # then each rank its own masks
    sharded = dist_info.world_size > 1 and config.parallelism == "fsdp"
    # A sharded block gathers its weights on every call, so all ranks must call it equally
    # often: one cut per rank (its own longest caption) instead of a varying number of groups.
    group_text_by_length(
        model, min(config.text_length_groups, 1) if sharded else config.text_length_groups
    )
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if sharded:
        shard_model(model)  # before the optimizer: it must hold the sharded parameters
    optimizer = build_optimizer(model, plans[0].peak_lr, config.weight_decay, tuple(config.betas))
    state = ckpt.TrainState()
    if config.resume:
        state = _resume(config.run_dir, model, optimizer, dist_info)
    train_model = model
    if dist_info.world_size > 1 and not sharded:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    pp_cfg = preprocess_cfg(model)
    shard_set = open_shard_set(config.data.shards)
    transform = train_transform(
        pp_cfg["size"] if isinstance(pp_cfg["size"], int) else pp_cfg["size"][0],
        config.data.crop_scale_min,
        pp_cfg["mean"],
        pp_cfg["std"],
    )
    tokenizer = open_clip.get_tokenizer(reg_name)

    def open_batches(segment_start: int):
        """The batch stream of the segment that starts at step ``segment_start``.

        The stream is restarted, reseeded by the step, at every checkpoint; a run resumed from a
        checkpoint therefore sees exactly the batches the uninterrupted run saw after it.
        """
        loader = make_loader(
            shard_set,
            transform,
            tokenizer,
            batch_size=local_batch,
            workers=min(config.data.workers, 1) if smoke else config.data.workers,
            shuffle_buffer=config.data.shuffle_buffer,
            worker_start=config.data.worker_start,
            prefetch_batches=config.data.prefetch_batches,
            pin_memory=device.type == "cuda",
            seed=config.seed + 7919 * dist_info.rank + 1_000_003 * segment_start,
        )
        return iter(loader)

    batches = open_batches(state.step)

    autocast = bf16_autocast(device) if config.precision == "bf16" else nullcontext_autocast

    info = {"model_name": config.model.name, "variant": config.model.variant, "smoke": smoke}
    # Decisions taken by the clock (a timed phase's end, checkpoint_every_s) must be the same on
    # every rank: there the ranks agree on each step's time (a host sync per step, else none).
    clocked = any(p.seconds for p in plans) or config.checkpoint_every_s > 0
    progress = Progress(
        config.run_dir,
        None if any(p.seconds for p in plans) else sum(p.steps for p in plans),
        state.step,
        state.samples_seen,
        enabled=dist_info.is_main,
    )
    last_ckpt = latest_checkpoint(config.run_dir) if config.resume else None
    model.train()
    for phase_index in range(state.phase_index, len(plans)):
        plan = plans[phase_index]
        set_mask_ratio(model, plan.mask_ratio)
        log.info(
            "phase %s: mask ratio %.2f, %s, peak lr %.2e, %d micro-batch(es) of %d per step",
            plan.name,
            plan.mask_ratio,
            f"{plan.seconds:g} s of training time" if plan.seconds else f"{plan.steps} steps",
            plan.peak_lr,
            splits[phase_index].accum_steps,
            splits[phase_index].micro_batch,
        )
        while not plan.finished(state.phase_step, state.phase_seconds):
            lr = plan.lr(state.phase_step, state.phase_seconds)
            set_lr(optimizer, lr)
            t0 = time.perf_counter()
            images, tokens, skipped = next(batches)
            data_time = time.perf_counter() - t0
            state.skipped_samples += skipped
            images = images.to(device, non_blocking=True)
            tokens = tokens.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = forward_backward(
                train_model, model, images, tokens, autocast, splits[phase_index].accum_steps
            )
            if sharded:
                average_replicated_grads(model)
            optimizer.step()
            clamp_logit_scale(model.logit_scale)
            step_seconds = time.perf_counter() - t0
            if clocked and dist_info.world_size > 1:
                step_seconds = agreed_max(step_seconds, device)
            clock_before = state.train_seconds
            state.train_seconds += step_seconds
            state.phase_seconds += step_seconds
            state.step += 1
            state.phase_step += 1
            state.samples_seen += global_batch
            progress.advance()
            at_phase_end = plan.finished(state.phase_step, state.phase_seconds)
            if state.step % config.log_every_steps == 0 or at_phase_end:
                progress.report(
                    state.step,
                    state.samples_seen,
                    plan.name,
                    loss.item(),  # waits for the device: read only on logging steps
                    {
                        "lr": lr,
                        "temperature": 1 / model.logit_scale.exp().item(),
                        "data_time_s": data_time,
                        "mask_ratio": plan.mask_ratio,
                        "skipped_samples": state.skipped_samples,
                        "train_seconds": state.train_seconds,
                    },
                )
            periodic = (
                config.checkpoint_every_steps and state.step % config.checkpoint_every_steps == 0
            ) or crossed_interval(clock_before, state.train_seconds, config.checkpoint_every_s)
            if at_phase_end:
                state.phase_index, state.phase_step, state.phase_seconds = phase_index + 1, 0, 0.0
            if at_phase_end or periodic:
                # Every rank's random state is gathered (a collective); under FSDP gathering
                # the weights is one too, under DDP rank 0 holds them all.
                rng_states = rng.gather_states()
                if sharded or dist_info.is_main:
                    written = _checkpoint(
                        config.run_dir,
                        model,
                        optimizer,
                        (model_cfg, pp_cfg),
                        state,
                        {
                            **info,
                            "phase": plan.name,
                            "samples_seen": state.samples_seen,
                            "step": state.step,
                            "train_seconds": state.train_seconds,
                            "config": asdict(config),
                        },
                        rng_states,
                        write=dist_info.is_main,
                    )
                    last_ckpt = written or last_ckpt
                    progress.flush()
                barrier()  # no rank runs on until the checkpoint is whole on storage
            # Restarting the stream at a checkpoint makes a resumed run see the same batches.
            # A timed phase cannot resume bit for bit anyway, and the restart (refilling the
            # shuffle buffer) would be charged to its clock: it keeps its stream.
            restart = at_phase_end or (periodic and not plan.seconds)
            if restart and state.phase_index < len(plans):
                del batches  # stops the old stream's workers
                batches = open_batches(state.step)
            if at_phase_end:
                break
    progress.close()
    if dist_info.is_main:
        if state.skipped_samples:
            log.warning("skipped %d broken samples or tar records", state.skipped_samples)
        log.info("training curves: %s", plot_curves(config.run_dir))
        log.info("final checkpoint: %s", last_ckpt)
    close_distributed()
    return last_ckpt


def _checkpoint(
    run_dir: str,
    model,
    optimizer,
    configs: tuple[dict, dict],
    state: ckpt.TrainState,
    info: dict,
    rng_states: list[dict],
    write: bool,
) -> str | None:
    """Gather the whole state and (on the writing rank) save it. The CPU copy lives only for
    this call: a ViT-H/14's weights and optimizer state are ~16 GB of host memory."""
    weights, optimizer_state = ckpt.full_state(model, optimizer)
    if not write:
        return None
    model_cfg, pp_cfg = configs
    return ckpt.save_checkpoint(
        run_dir, weights, model_cfg, pp_cfg, optimizer_state, state, info, rng_states
    )


def _resume(run_dir: str, model, optimizer, dist_info) -> ckpt.TrainState:
    latest = latest_checkpoint(run_dir)
    if latest is None:
        log.info("resume: no checkpoint in %s, starting fresh", run_dir)
        return ckpt.TrainState()
    saved = ckpt.read_train_state(latest)
    ckpt.restore_full_state(model, optimizer, read_weights(latest), saved["optimizer"], latest)
    rng.restore(saved["rng"], dist_info.rank, dist_info.world_size)
    state = ckpt.TrainState(**saved["train_state"])
    log.info("resumed from %s at step %d (%d samples seen)", latest, state.step, state.samples_seen)
    return state
