"""The text tower cut after each caption's end-of-text token: same features, same gradients,
same step as open_clip's whole-context tower; the length groups the fewest tokens allow."""

import copy
import itertools

import open_clip
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flipcommon.errors import UserError
from training.loss import contrastive_loss
from training.masking import set_mask_ratio
from training.model import build_model
from training.optim import build_optimizer
from training.step import forward_backward
from training.text_lengths import (
    LengthGroupedCLIP,
    caption_lengths,
    group_text_by_length,
    length_limits,
    told_caption_lengths,
)

CAPTIONS = [
    "a cat",
    "a red apple on a wooden table in the afternoon sun",
    "word " * 100,  # longer than the context: truncated, its end-of-text token at the last slot
    "dog",
    "a photo of a big house with a garden and a fence",
    "grinning face with smiling eyes",
    "a b c d e f g h",
    "hello world",
]


def tokens_cost(lengths, limits):
    return sum(next(limit for limit in limits if n <= limit) for n in lengths)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=12), st.integers(1, 4))
def test_length_limits_leave_the_fewest_tokens(lengths, max_groups):
    limits = length_limits(lengths, max_groups)
    assert limits == sorted(limits) and len(limits) <= max_groups
    assert limits[-1] == max(lengths)  # every caption fits a group
    distinct = sorted(set(lengths))
    best = min(
        tokens_cost(lengths, list(chosen) + [distinct[-1]])
        for k in range(max_groups)
        for chosen in itertools.combinations(distinct[:-1], k)
    )
    assert tokens_cost(lengths, limits) == best


def assert_close_to_scale(actual, expected, name=""):
    """Equal up to float32 rounding of sums in another order: relative to the tensor's scale."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale, msg=name)


def grouped_and_plain(groups: int, name: str = "flip_micro", variant: str = "openclip"):
    torch.manual_seed(0)
    plain, _, reg = build_model(name, variant)
    grouped = copy.deepcopy(plain)
    assert group_text_by_length(grouped, groups)
    assert type(plain) is open_clip.CLIP and isinstance(grouped, LengthGroupedCLIP)
    return grouped, plain, open_clip.get_tokenizer(reg)


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_features_and_gradients_match_the_whole_context(groups):
    grouped, plain, tokenizer = grouped_and_plain(groups)
    text = tokenizer(CAPTIONS)
    assert caption_lengths(text)[2] == text.shape[1]  # one caption fills the context
    ours, theirs = grouped.encode_text(text), plain.encode_text(text)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    (ours * torch.linspace(-1, 1, ours.numel()).view_as(ours)).sum().backward()
    (theirs * torch.linspace(-1, 1, theirs.numel()).view_as(theirs)).sum().backward()
    for (name, p), q in zip(grouped.named_parameters(), plain.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None, name
            continue
        assert_close_to_scale(p.grad, q.grad, name)


def test_paper_variant_context_is_cut_the_same_way():
    grouped, plain, tokenizer = grouped_and_plain(3, variant="paper")
    text = tokenizer(CAPTIONS)
    assert text.shape[1] == 32
    torch.testing.assert_close(
        grouped.encode_text(text, normalize=True), plain.encode_text(text, normalize=True)
    )


def test_a_masked_training_step_matches_open_clips():
    """Loss and every gradient at mask ratio 0.5 with the same masks (same seed): the grouped
    model against the whole-context one. (Weights after one AdamW step are not compared: its
    first update is lr × sign(gradient), so gradients that round to either side of 0 flip it.)"""
    grouped, plain, tokenizer = grouped_and_plain(4)
    text = tokenizer(CAPTIONS)
    images = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    results = []
    for model in (grouped, plain):
        set_mask_ratio(model.train(), 0.5)
        torch.manual_seed(7)
        image_features, text_features, _ = model(images, text)
        loss = contrastive_loss(image_features, text_features, model.logit_scale)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert all(g is not None for g in grads_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert_close_to_scale(a, b)


def test_checkpoint_layout_is_open_clips_and_zero_groups_is_the_whole_context():
    grouped, plain, tokenizer = grouped_and_plain(4)
    assert grouped.state_dict().keys() == plain.state_dict().keys()
    loaded = open_clip.create_model("flip_micro-openclip")
    loaded.load_state_dict(grouped.state_dict())  # plain open_clip takes the weights as they are
    grouped.text_length_groups = 0
    text = tokenizer(CAPTIONS)
    assert torch.equal(grouped.encode_text(text), plain.encode_text(text))


def test_negative_groups_is_a_user_error():
    model, _, _ = build_model("flip_micro")
    with pytest.raises(UserError, match="text_length_groups"):
        group_text_by_length(model, -1)


def test_the_optimizer_is_fused():
    model, _, _ = build_model("flip_micro")
    assert build_optimizer(model, 1e-3, 0.2, (0.9, 0.95)).defaults["fused"] is True


def _refuse_device_reads(monkeypatch):
    """Reading lengths from the tokens inside the model (a device sync on a GPU) now raises."""

    def refused(text):
        raise AssertionError("caption lengths read from the tokens inside the model")

    monkeypatch.setattr("training.text_lengths.caption_lengths", refused)


@pytest.mark.parametrize("groups", [1, 3])
def test_lengths_told_from_the_host_give_the_same_features(groups, monkeypatch):
    grouped, plain, tokenizer = grouped_and_plain(groups)
    text = tokenizer(CAPTIONS)
    lengths = caption_lengths(text)
    _refuse_device_reads(monkeypatch)
    with told_caption_lengths(grouped, lengths):
        ours = grouped.encode_text(text)
    torch.testing.assert_close(ours, plain.encode_text(text), rtol=1e-5, atol=1e-5)
    assert grouped.told_lengths is None  # for that forward only
    with told_caption_lengths(grouped, lengths[:-1]), pytest.raises(ValueError, match="told"):
        grouped.encode_text(text)


@pytest.mark.parametrize("accum_steps,views", [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_a_step_told_the_lengths_reads_none_from_the_device_and_matches(
    accum_steps, views, monkeypatch
):
    """The step with micro-batches and views, told the lengths once for the batch, gives the
    loss and gradients of the step that reads them inside the model, and never reads them."""
    torch.manual_seed(0)
    model, _, reg = build_model("flip_micro")
    assert group_text_by_length(model, 4)
    set_mask_ratio(model.train(), 0.5)
    text = open_clip.get_tokenizer(reg)(CAPTIONS)
    images = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    results = []
    for told in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        with monkeypatch.context() as patch:
            lengths = caption_lengths(text) if told else None
            if told:
                _refuse_device_reads(patch)
            loss = forward_backward(
                model,
                model,
                images,
                text,
                lambda: torch.autocast("cpu", enabled=False),
                accum_steps,
                views,
                lengths,
            )
        results.append((loss, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_read, grads_read), (loss_told, grads_told) = results
    torch.testing.assert_close(loss_told, loss_read)
    for name, grad in grads_read.items():
        torch.testing.assert_close(grads_told[name], grad, msg=name)


def test_training_tells_the_model_the_lengths_of_every_batch(tmp_path, shard_set, monkeypatch):
    """A micro run (a phase with two micro-batches per step, one with two views) in which the
    model may not read lengths from the tokens: the trainer reads them on the host."""
    from tests.conftest import micro_train_config
    from training.config import PhaseConfig
    from training.trainer import train

    config = micro_train_config(str(tmp_path / "run"), str(shard_set))
    config.phases = [
        PhaseConfig("pretrain", mask_ratio=0.5, samples=16, base_lr=1e-3, micro_batch=4),
        PhaseConfig("unmasked_tuning", mask_ratio=0.0, samples=8, base_lr=1e-4, views=2),
    ]
    _refuse_device_reads(monkeypatch)
    assert train(config)
