"""The FLIP trainer: masking, loss, optimiser, schedule, loader robustness, runs and resume."""

import io
import json
import math
import tarfile
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flipcommon.checkpoints import (
    STATE_FILE,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_weights_into,
    read_config,
    read_weights,
)
from training import checkpoint as ckpt
from training.loss import contrastive_loss
from training.masking import PatchRemoval, kept_count, remove_patches, set_mask_ratio
from training.model import build_model, model_cfg
from training.optim import build_optimizer, decays, lr_at, lr_at_time, scaled_lr


def test_remove_patches_keeps_cls_and_a_random_subset():
    batch, length, width = 3, 16, 4
    tokens = torch.arange(batch * (length + 1) * width, dtype=torch.float).view(
        batch, length + 1, width
    )
    out = remove_patches(tokens, 0.75)
    assert out.shape == (batch, 1 + kept_count(length, 0.75), width) == (3, 5, 4)
    torch.testing.assert_close(out[:, 0], tokens[:, 0])  # CLS never dropped
    for b in range(batch):
        rows = {tuple(r.tolist()) for r in tokens[b, 1:]}
        kept = [tuple(r.tolist()) for r in out[b, 1:]]
        assert set(kept) <= rows and len(set(kept)) == len(kept)  # real, distinct patches


def test_kept_count_matches_the_paper():
    assert kept_count(196, 0.5) == 98
    assert kept_count(256, 0.75) == 64
    assert kept_count(196, 0.0) == 196


def test_patch_removal_only_in_training_mode():
    module = PatchRemoval(0.5)
    tokens = torch.randn(2, 17, 8)
    module.eval()
    assert module(tokens) is tokens
    module.train()
    assert module(tokens).shape == (2, 9, 8)


def test_masked_model_sees_fewer_tokens_and_full_images_at_eval():
    model, _, _ = build_model("flip_micro")
    set_mask_ratio(model, 0.75)
    seen = []
    model.visual.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    images = torch.randn(2, 3, 32, 32)
    model.train()
    model.encode_image(images)
    model.eval()
    model.encode_image(images)
    assert seen[0][1] == 1 + 4 and seen[1][1] == 1 + 16


def test_paper_variant_uses_average_pooling_and_32_tokens():
    cfg = model_cfg("vit_b16", "paper")
    assert cfg["vision_cfg"]["pool_type"] == "avg"
    assert cfg["text_cfg"]["context_length"] == 32
    assert model_cfg("vit_b16")["text_cfg"]["context_length"] == 77


@pytest.mark.parametrize(
    "name,embed,width,layers",
    [
        ("vit_b16", 512, 768, 12),
        ("vit_l16", 768, 1024, 24),
        ("vit_l14", 768, 1024, 24),
        ("vit_h14", 1024, 1280, 32),
    ],
)
def test_paper_model_shapes(name, embed, width, layers):
    cfg = model_cfg(name)
    assert (cfg["embed_dim"], cfg["vision_cfg"]["width"], cfg["vision_cfg"]["layers"]) == (
        embed,
        width,
        layers,
    )


def test_contrastive_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(6, 8), dim=-1)
    txt = F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07))
    logits = img @ txt.T / 0.07
    expected = 0.0
    for i in range(6):
        expected += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    torch.testing.assert_close(
        contrastive_loss(img, txt, scale), expected / 12, rtol=1e-5, atol=1e-5
    )


def test_contrastive_loss_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(64, 32), dim=-1)
    txt = F.normalize(torch.randn(64, 32), dim=-1)
    scale = torch.tensor(math.log(100.0), requires_grad=True)
    reference = contrastive_loss(img, txt, scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # bf16 features, as the towers give them under autocast
        loss = contrastive_loss(img.bfloat16(), txt.bfloat16(), scale)
        unguarded = (img.bfloat16() @ txt.bfloat16().T * 100).float()
    assert loss.dtype == torch.float32
    expected = contrastive_loss(img.bfloat16().float(), txt.bfloat16().float(), scale)
    assert torch.equal(loss, expected)  # the same fp32 arithmetic, only the inputs rounded
    assert unguarded.dtype == torch.float32 and not torch.equal(
        unguarded, img.bfloat16().float() @ txt.bfloat16().float().T * 100
    )  # what autocast would otherwise do to the logits
    assert abs(loss.item() - reference.item()) < 0.05


def test_uint8_batches_normalise_on_the_device_as_torchvision_would():
    from torchvision import transforms

    from training.data import ImageNormalizer

    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    expected = torch.stack([transforms.Normalize(mean, std)(x.float() / 255) for x in images])
    normalise = ImageNormalizer(mean, std, torch.device("cpu"))
    torch.testing.assert_close(normalise(images), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        normalise(expected)  # normalising twice would be silent garbage


def test_the_temperature_has_an_optimizer_group_of_its_own():
    """Under FSDP it is the one plain tensor among sharded ones: kept apart from them."""
    model, _, _ = build_model("flip_micro")
    optimizer = build_optimizer(model, 1e-3, 0.2, (0.9, 0.95))
    groups = [{id(p) for p in g["params"]} for g in optimizer.param_groups]
    assert {id(model.logit_scale)} in groups
    assert sum(len(g) for g in groups) == len(list(model.parameters()))
    assert optimizer.param_groups[-1]["weight_decay"] == 0.0


def test_weight_decay_spares_biases_norms_embeddings_and_temperature():
    model, _, _ = build_model("flip_micro")
    names = {n: decays(n, p) for n, p in model.named_parameters()}
    assert not names["logit_scale"]
    assert not names["positional_embedding"]
    assert not names["visual.positional_embedding"]
    assert not names["visual.class_embedding"]
    assert not any(v for n, v in names.items() if n.endswith(".bias") or "ln_" in n)
    assert names["visual.conv1.weight"]
    opt = build_optimizer(model, 1e-3, 0.2, (0.9, 0.95))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0, 0.0]
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_lr_schedule_warmup_then_cosine_to_zero():
    assert scaled_lr(4e-6, 32768) == pytest.approx(5.12e-4)
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)


def test_lr_schedule_on_a_clock():
    assert lr_at_time(0.0, 10.0, 2.0, 1.0) == 0.0
    assert lr_at_time(1.0, 10.0, 2.0, 1.0) == pytest.approx(0.5)
    assert lr_at_time(2.0, 10.0, 2.0, 1.0) == pytest.approx(1.0)
    assert lr_at_time(6.0, 10.0, 2.0, 1.0) == pytest.approx(0.5)
    assert lr_at_time(12.0, 10.0, 2.0, 1.0) == pytest.approx(0.0)


def test_timed_phases_run_for_their_training_time(tmp_path, shard_set):
    from tests.conftest import micro_train_config
    from training.config import PhaseConfig
    from training.trainer import train

    run_dir = tmp_path / "run"
    config = micro_train_config(str(run_dir), str(shard_set), checkpoint_every_s=1.0)
    config.phases = [
        PhaseConfig("pretrain", mask_ratio=0.75, seconds=2.0, warmup_seconds=0.5, base_lr=1e-3),
        PhaseConfig("unmasked_tuning", mask_ratio=0.0, seconds=1.0, base_lr=1e-4),
    ]
    final = train(config)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    longest_step = max(b["train_seconds"] - a["train_seconds"] for a, b in pairwise(records))
    pretrain = [r for r in records if r["mask_ratio"] == 0.75]
    assert 2.0 <= pretrain[-1]["train_seconds"] < 2.0 + longest_step + 1e-6
    info = read_config(final)["flip"]
    assert info["phase"] == "unmasked_tuning"
    assert 3.0 <= info["train_seconds"] < 3.0 + 2 * longest_step + 1e-6
    assert info["samples_seen"] == 8 * info["step"] == records[-1]["samples_seen"]
    # warmup then decay on the clock, to about zero at each phase's end
    assert pretrain[0]["lr"] < max(r["lr"] for r in pretrain)
    assert pretrain[-1]["lr"] < 0.05 * max(r["lr"] for r in pretrain)
    # periodic checkpoints on the training clock, besides the two phase ends
    checkpoints = list_checkpoints(str(run_dir))
    seconds = [read_config(c)["flip"]["train_seconds"] for c in checkpoints]
    assert seconds == sorted(seconds) and len(seconds) >= 3
    assert any(1.0 <= s < 2.0 for s in seconds)  # the one at 1 s, mid-pretraining


def _two_phase_cli(run_dir, shard_set, phases: str, *overrides: str):
    """``python -m training`` on the micro model with ``phases``; returns the finished process."""
    import subprocess
    import sys

    from tests.conftest import micro_training_args

    return subprocess.run(
        [sys.executable, *micro_training_args(run_dir, shard_set, phases, *overrides)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _logged_samples(run_dir) -> list[int]:
    """Samples seen at each logged step; every logged loss is finite."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records)
    return [r["samples_seen"] for r in records]


def test_a_phase_of_two_masked_views_trains_through_the_cli(tmp_path, shard_set):
    run_dir = tmp_path / "run"
    phases = (
        "phases=[{name: pretrain, mask_ratio: 0.5, views: 2, samples: 32, base_lr: 1.0e-3}, "
        "{name: unmasked_tuning, mask_ratio: 0.0, samples: 16, base_lr: 1.0e-4}]"
    )
    result = _two_phase_cli(run_dir, shard_set, phases, "log_every_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "phase pretrain: mask ratio 0.50 x 2 views, 4 steps" in result.stderr
    assert _logged_samples(run_dir) == [8, 16, 24, 32, 40, 48]  # pairs, not views
    bad = _two_phase_cli(run_dir, shard_set, phases.replace("views: 2", "views: 0"))
    assert bad.returncode == 2 and "phases[0].views: 0 is out of range" in bad.stderr


def test_any_resolution_is_open_clips_forward_at_full_size_and_trains_the_embedding_below():
    from training.resolution import downsample, enable_any_resolution

    torch.manual_seed(0)
    model, _, _ = build_model("flip_micro")  # 32 px, 8 px patches
    model.eval()
    images = torch.randn(3, 3, 32, 32)
    before = model.encode_image(images)
    enable_any_resolution(model)
    assert torch.equal(model.encode_image(images), before)  # open_clip's own code at 32 px
    seen = []
    model.visual.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    small = downsample(images, 16)
    assert small.shape == (3, 3, 16, 16)
    model.train()
    model.encode_image(small).sum().backward()
    assert seen[-1][1] == 1 + 4  # a 2x2 grid and the class token
    # the resized embedding is in the graph: its full-size parameter learns from small images
    grad = model.visual.positional_embedding.grad
    assert grad is not None and grad.shape == (1 + 16, 64) and grad[1:].abs().sum() > 0


def test_a_low_resolution_phase_then_full_size_tuning_through_the_cli(tmp_path, shard_set):
    run_dir = tmp_path / "run"
    phases = (
        "phases=[{name: pretrain, mask_ratio: 0.0, image_size: 16, samples: 32, base_lr: 1e-3}, "
        "{name: unmasked_tuning, mask_ratio: 0.0, samples: 16, base_lr: 1.0e-4}]"
    )
    result = _two_phase_cli(run_dir, shard_set, phases, "log_every_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "phase pretrain: mask ratio 0.00 at 16 px, 4 steps" in result.stderr
    assert _logged_samples(run_dir) == [8, 16, 24, 32, 40, 48]
    # the checkpoint is a plain open_clip model at its own size
    model, _, _ = build_model("flip_micro")
    checkpoint = latest_checkpoint(str(run_dir))
    load_weights_into(model, read_weights(checkpoint), checkpoint)
    assert model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    bad = _two_phase_cli(run_dir, shard_set, phases.replace("16,", "12,"))
    assert bad.returncode == 2 and "multiple of the model's 8 px patch" in bad.stderr


def test_two_phase_run_writes_checkpoints_metrics_and_plot(micro_run):
    latest = latest_checkpoint(str(micro_run))
    assert latest.endswith("step_00000006")  # 32/8 masked + 16/8 unmasked steps
    config = read_config(latest)
    assert config["flip"]["phase"] == "unmasked_tuning"
    assert config["flip"]["samples_seen"] == 48
    assert set(config["preprocess_cfg"]) >= {"size", "mean", "std"}
    records = [json.loads(line) for line in (micro_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["mask_ratio"] for r in records] == [0.5] * 4 + [0.0] * 2
    assert [r["samples_seen"] for r in records] == [8, 16, 24, 32, 40, 48]
    assert (micro_run / "training_curves.png").stat().st_size > 1000
    assert list((micro_run / "tensorboard").iterdir())
    assert (micro_run / "checkpoints" / "step_00000004").is_dir()  # phase-end checkpoint


def test_resume_continues_across_the_phase_boundary(tmp_path, shard_set):
    from tests.conftest import micro_train_config
    from training.trainer import train

    run_dir = tmp_path / "run"
    first = micro_train_config(str(run_dir), str(shard_set))
    first.phases = first.phases[:1]  # stop after the masked phase, as if killed there
    train(first)
    resumed = micro_train_config(str(run_dir), str(shard_set), resume=True)
    final = train(resumed)
    info = read_config(final)["flip"]
    assert info["step"] == 6 and info["samples_seen"] == 48
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("fresh", [False, True])
def test_a_phase_may_start_with_a_fresh_optimizer(tmp_path, shard_set, fresh):
    """fresh_optimizer on the unmasked phase: its Adam state counts only its own 2 steps (as a
    run started from the masked phase's weights would); off, the state carries all 6. Resumed
    at the phase boundary, the same."""
    from tests.conftest import micro_train_config
    from training.trainer import train

    config = micro_train_config(str(tmp_path / "run"), str(shard_set))
    config.phases[1].fresh_optimizer = fresh
    final = train(config)
    steps = {int(s["step"]) for s in ckpt.read_train_state(final)["optimizer"]["state"].values()}
    assert steps == ({2} if fresh else {6})
    first = micro_train_config(str(tmp_path / "resumed"), str(shard_set))
    first.phases = first.phases[:1]
    train(first)
    resumed = micro_train_config(str(tmp_path / "resumed"), str(shard_set), resume=True)
    resumed.phases[1].fresh_optimizer = fresh
    state = ckpt.read_train_state(train(resumed))["optimizer"]["state"]
    assert {int(s["step"]) for s in state.values()} == steps


def test_checkpoint_that_does_not_match_its_config_is_rejected(micro_run, tmp_path):
    latest = latest_checkpoint(str(micro_run))
    model, _, _ = build_model("flip_tiny")
    with pytest.raises(CheckpointError, match="do not match"):
        load_weights_into(model, read_weights(latest), latest)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_loader_skips_and_counts_broken_samples(tmp_path, shard_set):
    """Bad JPEG, missing caption, bad UTF-8, a truncated tar: skipped, counted, no crash."""

    from training.data import ShardSet

    good = sorted(shard_set.glob("*.tar"))[0]
    with tarfile.open(good) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    keys = sorted({n.split(".")[0] for n in members})[:6]
    broken = tmp_path / "broken.tar"
    with tarfile.open(broken, "w") as tar:
        for i, key in enumerate(keys):
            if i == 1:
                _add(tar, f"{key}.jpg", b"not a jpeg")
                _add(tar, f"{key}.txt", members[f"{key}.txt"])
            elif i == 2:
                _add(tar, f"{key}.jpg", members[f"{key}.jpg"])  # no caption
            elif i == 3:
                _add(tar, f"{key}.jpg", members[f"{key}.jpg"])
                _add(tar, f"{key}.txt", b"\xff\xfe bad utf-8 \xc3")
            else:
                _add(tar, f"{key}.jpg", members[f"{key}.jpg"])
                _add(tar, f"{key}.txt", members[f"{key}.txt"])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[:5000])
    shards = ShardSet([str(broken), str(truncated)], {"broken.tar": 6, "truncated.tar": 5})
    loader = tiny_loader(shards, workers=0)
    skipped, seen = 0, 0
    for _, (images, tokens, n_skipped) in zip(range(20), loader, strict=False):
        assert images.shape == (2, 3, 32, 32) and tokens.shape[0] == 2
        assert images.dtype == torch.uint8  # normalised on the device, not in shared memory
        skipped += n_skipped
        seen += 2
    assert seen == 40 and skipped > 0


def test_train_state_round_trips_in_both_optimizer_layouts():
    """Checkpoints name optimizer state by parameter (what FSDP needs); those written before,
    keyed by position, still resume."""
    torch.manual_seed(0)
    model, cfg, _ = build_model("flip_micro")
    optimizer = build_optimizer(model, 1e-3, 0.2, (0.9, 0.95))
    images = torch.randn(4, 3, 32, 32)
    tokens = torch.randint(1, 49407, (4, cfg["text_cfg"]["context_length"]))
    image_features, text_features, scale = model(images, tokens)
    contrastive_loss(image_features, text_features, scale).backward()
    optimizer.step()
    weights, by_name = ckpt.full_state(model, optimizer)
    assert all(isinstance(key, str) for key in by_name["state"])
    for saved in (by_name, optimizer.state_dict()):
        fresh, _, _ = build_model("flip_micro")
        fresh_optimizer = build_optimizer(fresh, 1e-3, 0.2, (0.9, 0.95))
        ckpt.restore_full_state(fresh, fresh_optimizer, dict(weights), saved, "test")
        for name, tensor in fresh.state_dict().items():
            torch.testing.assert_close(tensor, weights[name], msg=name)
        moments = [s["exp_avg"] for s in fresh_optimizer.state.values()]
        expected = [s["exp_avg"] for s in optimizer.state.values()]
        assert len(moments) == len(expected)
        for got, want in zip(moments, expected, strict=True):
            torch.testing.assert_close(got, want)
    del weights["logit_scale"]
    with pytest.raises(CheckpointError, match="do not match"):
        ckpt.restore_full_state(fresh, fresh_optimizer, weights, by_name, "test")


@pytest.mark.parametrize("gpus", [8, 64, 256])
@pytest.mark.parametrize("name", ["vit_b16", "vit_l14", "vit_l16", "vit_h14"])
def test_shipped_gpu_configs_split_their_batch_at_any_scale(name, gpus):
    from flipcommon.config import load_config
    from training.batching import split_batch
    from training.config import TrainConfig

    config = load_config(TrainConfig, Path(__file__).parent.parent / f"configs/train/{name}.yaml")
    assert config.micro_batch > 0
    for phase in config.phases:
        wanted = phase.micro_batch or config.micro_batch
        split = split_batch(config.batch_size, gpus, wanted)
        assert split.micro_batch <= wanted  # what one GPU holds is never exceeded
        assert split.micro_batch * split.accum_steps * gpus == config.batch_size
    assert config.grad_checkpointing == (name != "vit_b16")


def test_a_batch_that_cannot_split_is_a_clear_error():
    from training.batching import BatchSplitError, split_batch

    assert split_batch(64, 2, 8).accum_steps == 4 and split_batch(64, 2).accum_steps == 1
    with pytest.raises(BatchSplitError, match="does not divide among 3 processes"):
        split_batch(64, 3, 8)
    with pytest.raises(BatchSplitError, match="does not split into micro-batches of 12"):
        split_batch(64, 2, 12)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_train_state_that_would_run_code_is_refused(tmp_path):
    """Whoever can write the checkpoint bucket must not run code on the training nodes."""
    marker = tmp_path / "pwned"
    (tmp_path / "ckpt").mkdir()
    torch.save(
        {"train_state": {"step": 1}, "rng": _RunsCodeWhenUnpickled(str(marker))},
        tmp_path / "ckpt" / STATE_FILE,
    )
    with pytest.raises(CheckpointError, match="refused"):
        ckpt.read_train_state(str(tmp_path / "ckpt"))
    assert not marker.exists()


def test_random_state_survives_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    from training import rng

    rng.seed_rank(3, 1)
    saved = rng.gather_states()
    torch.save({"rng": saved}, tmp_path / "state.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)["rng"]
    rng.seed_rank(0, 0)
    assert rng.restore(loaded, 0, 1)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])
    assert not rng.restore(loaded, 0, 2)  # written by one rank, read by two: said, not exact


def tiny_loader(shards, **options):
    """A loader of 32-px images, 2 per batch, over ``shards``."""
    import open_clip

    from training.data import make_loader, train_transform

    return make_loader(
        shards,
        train_transform(32, 0.5),
        open_clip.get_tokenizer("RN50"),
        **{"batch_size": 2, "shuffle_buffer": 1, "seed": 0, **options},
    )


def test_no_prefetched_batches_with_workers_is_a_clear_error():
    from flipcommon.errors import UserError
    from training.data import ShardSet

    with pytest.raises(UserError, match="prefetch_batches"):
        tiny_loader(ShardSet(["unused.tar"], {"unused.tar": 1}), workers=1, prefetch_batches=0)


def test_a_resumed_run_drops_the_metrics_its_predecessor_logged_after_the_checkpoint(tmp_path):
    """The run that died flushed steps 1-6 (its checkpoint: step 4); the resumed run logs 5
    and 6 again, once each."""
    from training.observe import Progress, read_metrics

    log = tmp_path / "metrics.jsonl"
    log.write_text(
        "".join(json.dumps({"step": s, "samples_seen": 8 * s}) + "\n" for s in range(1, 7))
    )
    progress = Progress(str(tmp_path), 8, step=4, samples_seen=32, enabled=True)
    for step in (5, 6):
        progress.report(step, 8 * step, "pretrain", 1.0, {"lr": 0.1})
    progress.close()
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_restarted_stream_keeps_its_workers_and_gives_the_segment_a_fresh_one_would(
    shard_set, start_method
):
    """A restart at a checkpoint starts the segment from that step in the same two workers (no
    respawn), and its batches, crops included, are those of a loader started there afresh
    (what a resumed run does); a restart at the same step again begins it anew; close leaves
    no worker."""
    import multiprocessing

    from training.data import BatchStream, open_shard_set

    shards = open_shard_set(str(shard_set))
    options = {"workers": 2, "seed": 3, "shuffle_buffer": 8, "worker_start": start_method}

    def pids() -> set[int]:
        return {child.pid for child in multiprocessing.active_children()}

    before = pids()
    stream = BatchStream(tiny_loader(shards, **options), 0)
    next(stream)
    workers = pids() - before
    assert len(workers) == 2
    stream.restart(5)
    stream.restart(5)
    kept = [next(stream) for _ in range(3)]
    assert pids() - before == workers
    stream.close()
    assert pids() == before

    fresh = BatchStream(tiny_loader(shards, **options), 5)
    for (images, tokens, _), (images_fresh, tokens_fresh, _) in zip(
        kept, [next(fresh) for _ in range(3)], strict=True
    ):
        assert torch.equal(images, images_fresh) and torch.equal(tokens, tokens_fresh)
    fresh.close()


def test_a_restart_with_workers_blocked_in_a_read_starts_fresh_ones(tmp_path):
    """Storage that stops answering: the shard is a named pipe no one writes, so each worker
    blocks opening it and never hears the restart. After ``restart_deadline_s`` without a word
    the workers are killed and fresh ones begin the segment (they block too, and are killed
    at close)."""
    import multiprocessing
    import os
    import threading

    from training.data import BatchStream, ShardSet

    stalled = tmp_path / "stalled.tar"
    os.mkfifo(stalled)
    shards = ShardSet([str(stalled)], {"stalled.tar": 10})
    before = {child.pid for child in multiprocessing.active_children()}
    try:
        stream = BatchStream(
            tiny_loader(shards, workers=2, worker_start="fork"), 0, restart_deadline_s=2.0
        )
        first = {child.pid for child in multiprocessing.active_children()} - before
        restart = threading.Thread(target=stream.restart, args=(3,), daemon=True)
        restart.start()
        restart.join(timeout=120)
        assert not restart.is_alive()
        second = {child.pid for child in multiprocessing.active_children()} - before
        stream.close(kill=True)
        assert len(first) == 2 and len(second) == 2 and not first & second
        assert {child.pid for child in multiprocessing.active_children()} == before
    finally:
        # whatever failed, no worker is left blocked (holding pytest's output open)
        for child in multiprocessing.active_children():
            if child.pid not in before:
                child.kill()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_restart_leaves_a_segment_whose_shuffle_buffer_never_fills(shard_set, start_method):
    """Workers still filling their shuffle buffers (here one larger than the data ever drawn)
    leave the old segment at their next sample: the restart, which waits for every worker to
    start the new segment, returns (it would wait for ever otherwise). Under spawn the restart
    comes while the workers are still starting: they begin the segment they were started
    for, not the new one outside torch's message (whose fill would never end)."""
    import threading

    from training.data import BatchStream, open_shard_set

    shards = open_shard_set(str(shard_set))
    stream = BatchStream(
        tiny_loader(shards, workers=2, shuffle_buffer=10**7, worker_start=start_method), 0
    )
    restart = threading.Thread(target=stream.restart, args=(7,), daemon=True)
    restart.start()
    restart.join(timeout=120)
    stream.close(kill=True)
    assert not restart.is_alive()


@pytest.mark.parametrize("workers", [0, 2])
def test_opening_a_stream_leaves_the_runs_generator_alone_and_is_a_function_of_its_seed(
    shard_set, workers
):
    """The trainer opens the next stream before it saves the checkpoint (whose random state a
    resumed run restores), so opening one must not draw from the global generator; and the
    batches, crops included, follow from the stream's seed alone."""
    from training.data import open_shard_set

    shards = open_shard_set(str(shard_set))
    options = {"workers": workers, "seed": 3, "shuffle_buffer": 8}
    if workers:
        options["worker_start"] = "fork"
    firsts = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        batches = iter(tiny_loader(shards, **options))
        assert torch.equal(torch.get_rng_state(), before)
        if workers:  # the workers crop with their own generators
            firsts.append(next(batches))
        del batches
    if workers:
        (images_a, tokens_a, _), (images_b, tokens_b, _) = firsts
        assert torch.equal(images_a, images_b) and torch.equal(tokens_a, tokens_b)


def test_a_stopping_run_kills_its_streams_workers_at_once(shard_set):
    """On SIGTERM the checkpoint is written first; then the stream's workers are killed rather
    than waited for, even while they are still filling their shuffle buffers; an ordinary
    close of busy workers ends too."""
    import multiprocessing
    import time

    from training.data import BatchStream, open_shard_set

    shards = open_shard_set(str(shard_set))
    before = len(multiprocessing.active_children())
    for kill in (True, False):
        stream = BatchStream(
            tiny_loader(shards, workers=2, shuffle_buffer=10**7, worker_start="fork"), 0
        )
        time.sleep(0.5)  # the workers read into a buffer they never fill: always busy
        start = time.monotonic()
        stream.close(kill=kill)
        if kill:
            assert time.monotonic() - start < 3.0
        # without kill too (torch's own last resort, SIGTERM, is ignored by the workers)
        assert len(multiprocessing.active_children()) == before, kill
