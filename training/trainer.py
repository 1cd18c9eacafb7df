"""The FLIP training loop: phases of masked pre-training then unmasked tuning, checkpoints,
progress, resume. ``training.setup`` builds what the loop advances."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import torch

from training import checkpoint as ckpt
from training import rng
from training.config import TrainConfig
from training.data import BatchStream
from training.distributed import agreed_max, barrier, close_distributed
from training.loss import clamp_logit_scale
from training.masking import set_mask_ratio
from training.observe import Progress, Watchers, plot_curves
from training.optim import set_lr
from training.phases import PhasePlan
from training.preemption import Preempted, StopRequest
from training.resolution import downsample
from training.setup import TrainRun, set_up
from training.sharding import average_replicated_grads
from training.step import forward_backward
from training.text_lengths import caption_lengths, groups_captions

log = logging.getLogger(__name__)


def crossed_interval(before: float, after: float, every: float) -> bool:
    """Whether the clock passed a multiple of ``every`` between two readings."""
    return every > 0 and int(after // every) > int(before // every)


def train(config: TrainConfig) -> str:
    """Run all phases of ``config``; return the URL of the final checkpoint."""
    run = set_up(config)
    state = run.state
    progress = Progress(
        config.run_dir,
        None if any(p.seconds for p in run.plans) else sum(p.steps for p in run.plans),
        state.step,
        state.samples_seen,
        enabled=run.dist.is_main,
        watchers=Watchers(
            tensorboard_sync_s=config.tensorboard_sync_s,
            wandb=config.wandb,
            run_config=asdict(config),
        ),
    )
    batches = BatchStream(run.loader, state.step, config.data.restart_deadline_s)
    stop = StopRequest().install()
    run.model.train()
    stopped = False
    try:
        for phase_index in range(state.phase_index, len(run.plans)):
            if not _train_phase(run, phase_index, batches, progress, stop):
                stopped = True
                break
    finally:
        stop.uninstall()
    # stopped: the checkpoint is written and the scheduler's grace time is short, so the
    # stream's workers (perhaps just started during the write) are killed, not waited for
    batches.close(kill=stopped)
    progress.close()
    if not stopped and run.dist.is_main:
        if state.skipped_samples:
            log.warning("skipped %d broken samples or tar records", state.skipped_samples)
        log.info("training curves: %s", plot_curves(config.run_dir))
        log.info("final checkpoint: %s", run.last_checkpoint)
    # The ranks leave together: one tearing down its connections while rank 0 still writes
    # its last files can get rank 0 aborted by gloo (seen once in ~50 two-rank CPU runs).
    barrier(storage=True)
    close_distributed()
    if stopped:
        raise Preempted(state.step, run.last_checkpoint)
    return run.last_checkpoint


def _train_phase(
    run: TrainRun, phase_index: int, batches: BatchStream, progress: Progress, stop: StopRequest
) -> bool:
    """Run phase ``phase_index`` from where ``run.state`` stands to its end, checkpointing on
    the way; the stream is restarted at each checkpoint (before it is written). False: stopped
    by SIGTERM (after a checkpoint of the step it stopped at)."""
    config, state, plan = run.config, run.state, run.plans[phase_index]
    _log_phase_start(run, phase_index)
    if state.phase_step == 0 and config.phases[phase_index].fresh_optimizer:
        # every rank clears its own (sharded or whole) state: no collective needed
        run.optimizer.state.clear()
        log.info("phase %s starts with a fresh optimizer state", plan.name)
    # Decisions taken by the clock (a timed phase's end, checkpoint_every_s) must be the same on
    # every rank: there the ranks agree on each step's time (a host sync per step, else none).
    clocked = run.dist.world_size > 1 and (
        any(p.seconds for p in run.plans) or config.checkpoint_every_s > 0
    )
    while not plan.finished(state.phase_step, state.phase_seconds):
        lr = plan.lr(state.phase_step, state.phase_seconds)
        set_lr(run.optimizer, lr)
        t0 = time.perf_counter()
        images, tokens, skipped = next(batches)
        data_time = time.perf_counter() - t0
        loss = _step(run, images, tokens, run.splits[phase_index].accum_steps, plan)
        step_seconds = time.perf_counter() - t0
        if clocked:
            step_seconds = agreed_max(step_seconds, run.device)
        clock_before = state.train_seconds
        _count_step(state, step_seconds, skipped, run.global_batch)
        progress.advance()
        at_phase_end = plan.finished(state.phase_step, state.phase_seconds)
        if state.step % config.log_every_steps == 0 or at_phase_end:
            _report(run, progress, plan, loss, {"lr": lr, "data_time_s": data_time})
        periodic = checkpoint_due(config, state.step, clock_before, state.train_seconds)
        stopping = stop.due(state.step, step_seconds, run.device) and not at_phase_end
        if at_phase_end:
            state.phase_index, state.phase_step, state.phase_seconds = phase_index + 1, 0, 0.0
        if at_phase_end or periodic or stopping:
            progress.flush()  # first: a checkpoint on storage implies its metrics are too
            # Restarting the stream at a checkpoint makes a resumed run see the same batches.
            # The next segment starts (in the same workers) before the checkpoint is written,
            # so that the workers refill their shuffle buffers while it is gathered and written.
            # A timed phase cannot resume bit for bit anyway, and the restart would be charged
            # to its clock: it keeps its stream.
            # (Not when this rank was asked to stop: every rank then stops after the write.)
            restart = at_phase_end or (periodic and not plan.seconds)
            if restart and not (stopping or stop.requested) and state.phase_index < len(run.plans):
                batches.restart(state.step)
            _save(run, plan)
            barrier(storage=True)  # no rank runs on until the checkpoint is whole on storage
            if periodic and not (stopping or at_phase_end):
                stopping = stop.due_now(run.device)  # asked to stop while it was written?
        if stopping:
            return False
        if at_phase_end:
            break
    return True


def checkpoint_due(config: TrainConfig, step: int, clock_before: float, clock: float) -> bool:
    """The periodic checkpoint policy: every ``checkpoint_every_steps`` steps and whenever the
    training clock passes a multiple of ``checkpoint_every_s`` (phase ends always save)."""
    by_steps = bool(config.checkpoint_every_steps) and step % config.checkpoint_every_steps == 0
    return by_steps or crossed_interval(clock_before, clock, config.checkpoint_every_s)


def _log_phase_start(run: TrainRun, phase_index: int) -> None:
    plan, split = run.plans[phase_index], run.splits[phase_index]
    set_mask_ratio(run.model, plan.mask_ratio)
    log.info(
        "phase %s: mask ratio %.2f%s%s, %s, peak lr %.2e, %d micro-batch(es) of %d per step",
        plan.name,
        plan.mask_ratio,
        f" x {plan.views} views" if plan.views > 1 else "",
        f" at {plan.image_size} px" if plan.image_size else "",
        f"{plan.seconds:g} s of training time" if plan.seconds else f"{plan.steps} steps",
        plan.peak_lr,
        split.accum_steps,
        split.micro_batch,
    )


def _count_step(state: ckpt.TrainState, seconds: float, skipped: int, batch: int) -> None:
    state.skipped_samples += skipped
    state.train_seconds += seconds
    state.phase_seconds += seconds
    state.step += 1
    state.phase_step += 1
    state.samples_seen += batch


def _report(
    run: TrainRun, progress: Progress, plan: PhasePlan, loss: torch.Tensor, scalars: dict
) -> None:
    state = run.state
    progress.report(
        state.step,
        state.samples_seen,
        plan.name,
        loss.item(),  # waits for the device: read only on logging steps
        {
            **scalars,
            "temperature": 1 / run.model.logit_scale.exp().item(),
            "mask_ratio": plan.mask_ratio,
            "skipped_samples": state.skipped_samples,
            "train_seconds": state.train_seconds,
        },
    )


def _step(
    run: TrainRun, images: torch.Tensor, tokens: torch.Tensor, accum_steps: int, plan: PhasePlan
):
    """One optimizer step on a batch fresh from the loader; returns the loss (on the device)."""
    images = run.to_model_input(images.to(run.device, non_blocking=True))
    if plan.image_size:
        images = downsample(images, plan.image_size)
    # read while the tokens are on the host: no device sync in the text forward
    lengths = caption_lengths(tokens) if groups_captions(run.model) else None
    tokens = tokens.to(run.device, non_blocking=True)
    run.optimizer.zero_grad(set_to_none=True)
    loss = forward_backward(
        run.train_model, run.model, images, tokens, run.autocast, accum_steps, plan.views, lengths
    )
    if run.sharded:
        average_replicated_grads(run.model)
    run.optimizer.step()
    clamp_logit_scale(run.model.logit_scale)
    return loss


def _save(run: TrainRun, plan: PhasePlan) -> None:
    """Write a checkpoint of the run as it stands. Every rank must call it: every rank's random
    state is gathered, and under FSDP so are the weights (under DDP rank 0 holds them all). The
    whole state lives in host memory only for this call (ViT-H/14 with Adam: ~16 GB)."""
    rng_states = rng.gather_states()
    if not (run.sharded or run.dist.is_main):
        return
    weights, optimizer_state = ckpt.full_state(run.model, run.optimizer)
    if not run.dist.is_main:
        return
    state, config = run.state, run.config
    info = {
        "model_name": config.model.name,
        "variant": config.model.variant,
        "smoke": run.smoke,
        "phase": plan.name,
        "samples_seen": state.samples_seen,
        "step": state.step,
        "train_seconds": state.train_seconds,
        "config": asdict(config),
    }
    model_cfg, pp_cfg = run.configs
    run.last_checkpoint = ckpt.save_checkpoint(
        config.run_dir, weights, model_cfg, pp_cfg, optimizer_state, state, info, rng_states
    )
