"""Writing checkpoints (the contract and its readers: ``flipcommon.checkpoints``), and the
separate train state for exact resume.

``{run_dir}/checkpoints/step_XXXXXXXX/``:
  - ``open_clip_config.json``  ``model_cfg`` + ``preprocess_cfg`` (+ our ``flip`` info)
  - ``open_clip_model.safetensors``  the weights: loadable by open_clip without pickle
  - ``train_state.pt``  optimizer, step, phase, samples seen, RNG states
``{run_dir}/checkpoints/LATEST`` names the newest complete one; it is written last, so a
checkpoint that a crash cut short is never picked up.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import Any

import fsspec
import torch
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file as save_safetensors_file
from torch import nn

from flipcommon.checkpoints import (
    CONFIG_FILE,
    LATEST_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    checkpoint_name,
    read_weights,
)
from flipcommon.storage import (
    atomic_local_path,
    is_local,
    open_atomic,
    url_join,
    write_bytes_atomic,
)
from training.distributed import share_from_main


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken over the whole run
    phase_index: int = 0
    phase_step: int = 0  # steps taken inside the current phase
    samples_seen: int = 0
    skipped_samples: int = 0  # broken samples or tar records skipped by the loader
    train_seconds: float = 0.0  # time in the step loop over the whole run (checkpoints excluded)
    phase_seconds: float = 0.0  # the same, inside the current phase


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Whole (unsharded) weights and optimizer state on the CPU, the optimizer state keyed by
    parameter name. Under FSDP this gathers the shards: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
    )


def restore_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    where: str,
) -> None:
    """Load whole weights and optimizer state into a model in one process."""
    problem = weights_mismatch(model, weights, where)
    if problem:
        raise CheckpointError(problem)
    legacy = _keyed_by_position(optimizer_state)
    _load_full_state(model, optimizer, weights, optimizer_state, where, False, legacy)


def resume_from(
    ckpt_dir: str, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int, world: int
) -> dict[str, Any]:
    """Load a checkpoint into this rank's model and optimizer (plain, DDP's or FSDP-sharded);
    returns the saved ``train_state`` and ``rng`` entries. Every rank must call it.

    With several ranks only rank 0 reads the files; the others receive the tensors from it
    (a ViT-H/14's weights and Adam state are ~16 GB: read by each of a node's 8 ranks they
    would need ~128 GB of host memory at once)."""
    if world == 1:
        saved = read_train_state(ckpt_dir)
        restore_full_state(model, optimizer, read_weights(ckpt_dir), saved["optimizer"], ckpt_dir)
        return {"train_state": saved["train_state"], "rng": saved["rng"]}
    import torch.distributed as dist

    weights: dict[str, torch.Tensor] = {}
    optimizer_state: dict[str, Any] = {}
    header: dict[str, Any] = {}
    if rank == 0:
        try:
            saved = read_train_state(ckpt_dir)
            weights = read_weights(ckpt_dir)
            optimizer_state = saved["optimizer"]
            header = {
                "train_state": saved["train_state"],
                "error": weights_mismatch(model, weights, ckpt_dir),
                "legacy": _keyed_by_position(optimizer_state),
            }
        except Exception as exc:  # the other ranks wait for the header: tell them, then raise
            share_from_main({"error": f"{type(exc).__name__}: {exc}"})
            raise
    # the other ranks wait here while rank 0 reads the checkpoint: a wait on storage
    header = share_from_main(header)
    if header["error"]:
        raise CheckpointError(header["error"])
    # rank 0 has read everything now: the rest goes over the training group
    rng_states = [saved["rng"] if rank == 0 else None]
    dist.broadcast_object_list(rng_states, src=0)
    if header["legacy"]:  # rare and small enough: every rank takes the whole state
        whole = [optimizer_state]
        dist.broadcast_object_list(whole, src=0)
        optimizer_state = whole[0]
    _load_full_state(model, optimizer, weights, optimizer_state, ckpt_dir, True, header["legacy"])
    return {"train_state": header["train_state"], "rng": rng_states[0]}


def weights_mismatch(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> str:
    """What is missing or unexpected in ``weights`` for ``model`` ("" when they match):
    ``set_model_state_dict`` does not refuse a missing tensor itself."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if not (missing or unexpected):
        return ""
    return (
        f"{where}: weights do not match the model config "
        f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
    )


def _load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    where: str,
    from_rank0: bool,
    legacy: bool,
) -> None:
    """``from_rank0``: rank 0 holds the weights, the others empty dicts; each rank keeps what
    it needs (its shard under FSDP, everything otherwise). ``legacy``: an optimizer state keyed
    by position (written before checkpoints keyed it by name), whole on every rank."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=True, broadcast_from_rank0=from_rank0)
    # One order for every caller (each tensor is a collective under FSDP): safetensors returns
    # them in an order that differs from process to process.
    weights = {name: weights[name] for name in sorted(weights)}
    try:
        set_model_state_dict(model, weights, options=options)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{where}: weights do not match the model config: {exc}") from exc
    if legacy:
        optimizer.load_state_dict(optimizer_state)
        return
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def _keyed_by_position(optimizer_state: dict[str, Any]) -> bool:
    return any(isinstance(key, int) for key in optimizer_state.get("state", {}))


def save_checkpoint(
    run_dir: str,
    weights: dict[str, torch.Tensor],
    model_cfg: dict,
    preprocess_cfg: dict,
    optimizer_state: dict[str, Any],
    state: TrainState,
    info: dict[str, Any],
    rng_states: list[dict[str, Any]],
) -> str:
    """Write a checkpoint (weights and optimizer state from ``full_state``, every rank's random
    state from ``training.rng.gather_states``) and then point LATEST at it; returns its URL."""
    ckpt_dir = url_join(run_dir, "checkpoints", checkpoint_name(state.step))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "flip": info}
    # Stream each file to storage: a serialised copy in memory of a ViT-H/14's weights and
    # optimizer state would double the process's footprint.
    _write_weights(url_join(ckpt_dir, WEIGHTS_FILE), weights)
    write_bytes_atomic(url_join(ckpt_dir, CONFIG_FILE), json.dumps(config, indent=2).encode())
    with open_atomic(url_join(ckpt_dir, STATE_FILE)) as handle:
        torch.save(
            {
                "optimizer": optimizer_state,
                "train_state": state.__dict__,
                "rng": rng_states,
            },
            handle,
        )
    write_bytes_atomic(
        url_join(run_dir, "checkpoints", LATEST_FILE), checkpoint_name(state.step).encode()
    )
    return ckpt_dir


def _write_weights(url: str, weights: dict[str, torch.Tensor]) -> None:
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    if is_local(url):
        _, path = fsspec.core.url_to_fs(url)
        with atomic_local_path(path) as tmp:
            save_safetensors_file(weights, tmp)
    else:  # safetensors writes local files only; remote stores get the serialised bytes
        write_bytes_atomic(url, save_safetensors(weights))


def read_train_state(ckpt_dir: str) -> dict[str, Any]:
    """The train state, read with ``weights_only=True``: tensors, numbers, strings and
    containers only. A file holding anything else is refused, not unpickled: whoever can write
    the bucket must not be able to run code on every training node."""
    url = url_join(ckpt_dir, STATE_FILE)
    with fsspec.open(url, "rb") as handle:
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{url} holds objects other than tensors and plain values (or was written by "
                "an earlier version of this trainer): refused, since loading it would run "
                f"code from storage ({str(err).splitlines()[0]})"
            ) from err
