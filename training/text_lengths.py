"""The text tower without its padding work: each caption runs only up to its end-of-text token.

open_clip's text tower runs every caption over the whole context (77 tokens), padding included,
although captions are short (the demo corpus: 11.5 tokens on average). Under the tower's causal
attention mask a token's output depends only on the tokens before it, and a caption's feature is
read at its end-of-text token (``argmax`` pooling), so the positions after that token change
nothing: cutting them off gives the same features and gradients, up to the rounding of smaller
matrix products. Captions are sorted by length into a few groups, each cut to its longest
caption, so that one long caption does not make the whole batch pay the full context.

The model stays open_clip's ``CLIP`` (same parameters, same checkpoint layout); only its
``encode_text`` changes, through a subclass the model is switched to.

The group sizes are shapes, so the lengths must be on the host. Read from tokens on a GPU they
would stop the host until the device has caught up, on every text forward; the trainer
therefore reads them from the batch while it is still in host memory (an argmax over the
batch's tokens: ~1 ms for 4,096 captions) and tells the model (``told_caption_lengths``), and
the index tensors reach the device from pinned memory without waiting.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator, Sequence

import open_clip
import torch
import torch.nn.functional as F

from flipcommon.errors import UserError

log = logging.getLogger(__name__)


def caption_lengths(text: torch.Tensor) -> list[int]:
    """Tokens up to and including each caption's end-of-text token (the highest id in a row).

    On a GPU this reads one small tensor back to the host (a sync); on host tokens it is free.
    """
    return (text.argmax(dim=-1) + 1).tolist()


def length_limits(lengths: Sequence[int], max_groups: int) -> list[int]:
    """The ascending length limits of at most ``max_groups`` groups that leave the fewest
    tokens to compute (the sum over groups of captions × the group's limit).

    A caption goes to the first group whose limit holds it. Exact, by dynamic programming over
    the distinct lengths (at most the context length of them).
    """
    if not lengths or max_groups < 1:
        raise ValueError("length_limits needs captions and at least one group")
    per_length = collections.Counter(lengths)
    distinct = sorted(per_length)
    counts = [per_length[d] for d in distinct]
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + c)
    groups = min(max_groups, len(distinct))
    inf = float("inf")
    # cost[g][j]: fewest tokens for the captions of the first j distinct lengths in g groups
    cost = [[inf] * (len(distinct) + 1) for _ in range(groups + 1)]
    cut = [[0] * (len(distinct) + 1) for _ in range(groups + 1)]
    cost[0][0] = 0.0
    for g in range(1, groups + 1):
        for j in range(1, len(distinct) + 1):
            for i in range(g - 1, j):
                candidate = cost[g - 1][i] + (prefix[j] - prefix[i]) * distinct[j - 1]
                if candidate < cost[g][j]:
                    cost[g][j], cut[g][j] = candidate, i
    best_g = min(range(1, groups + 1), key=lambda g: cost[g][len(distinct)])
    limits, j = [], len(distinct)
    for g in range(best_g, 0, -1):
        limits.append(distinct[j - 1])
        j = cut[g][j]
    return limits[::-1]


def _encode_cut(model: open_clip.CLIP, text: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` (unnormalised) over a context cut to ``text``'s width."""
    length = text.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    # argmax pooling (``cuttable``) as open_clip's text_global_pool does it, with the row index
    # made on the device: its CPU arange would be copied over with a sync, here and in backward
    x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def _on_device(values: list[int], device: torch.device) -> torch.Tensor:
    """An index tensor on ``device`` without stopping the host: a copy from pageable memory
    would wait for the device; from pinned memory it is queued like a kernel."""
    tensor = torch.tensor(values, dtype=torch.long)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def encode_text_by_length(
    model: open_clip.CLIP,
    text: torch.Tensor,
    max_groups: int,
    lengths: Sequence[int] | None = None,
) -> torch.Tensor:
    """The text features of ``text`` (rows in input order), each length group at its width.
    ``lengths``: each row's ``caption_lengths``, when the caller read them on the host."""
    if lengths is None:
        lengths = caption_lengths(text)
    elif len(lengths) != text.shape[0]:
        raise ValueError(f"{len(lengths)} caption lengths told for {text.shape[0]} captions")
    limits = length_limits(lengths, max_groups)
    if len(limits) == 1:  # one group: the rows stay in place
        return _encode_cut(model, text[:, : limits[0]])
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    features, start = [], 0
    for limit in limits:
        end = start
        while end < len(order) and lengths[order[end]] <= limit:
            end += 1
        rows = _on_device(order[start:end], text.device)
        features.append(_encode_cut(model, text[rows, :limit]))
        start = end
    inverse = [0] * len(order)
    for position, row in enumerate(order):
        inverse[row] = position
    return torch.cat(features)[_on_device(inverse, text.device)]


def cuttable(model: torch.nn.Module) -> bool:
    """Whether cutting after the end-of-text token leaves this text tower's output unchanged:
    a causal mask and argmax pooling (open_clip's CLIP text tower as configured here)."""
    return (
        type(model) in (open_clip.CLIP, LengthGroupedCLIP)
        and model.attn_mask is not None
        and model.text_pool_type == "argmax"
    )


class LengthGroupedCLIP(open_clip.CLIP):
    """open_clip's CLIP whose text tower skips the padding (see the module docstring)."""

    text_length_groups: int = 0
    told_lengths: list[int] | None = None  # the next forward's caption lengths, read on the host

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.text_length_groups < 1:
            return super().encode_text(text, normalize)
        features = encode_text_by_length(self, text, self.text_length_groups, self.told_lengths)
        return F.normalize(features, dim=-1) if normalize else features


def groups_captions(model: torch.nn.Module) -> bool:
    """Whether ``model``'s text forwards cut captions into length groups (and so need their
    lengths on the host)."""
    return isinstance(model, LengthGroupedCLIP) and model.text_length_groups > 0


@contextlib.contextmanager
def told_caption_lengths(model: torch.nn.Module, lengths: list[int] | None) -> Iterator[None]:
    """Within the context, ``model``'s text forwards use ``lengths`` (``caption_lengths`` of the
    tokens they are given, read by the caller on the host) instead of reading them from the
    device. No effect on a model that does not group its captions, or with ``None``."""
    if lengths is None or not isinstance(model, LengthGroupedCLIP):
        yield
        return
    model.told_lengths = lengths
    try:
        yield
    finally:
        model.told_lengths = None


def group_text_by_length(model: torch.nn.Module, max_groups: int) -> bool:
    """Make ``model``'s text tower skip the padding, in at most ``max_groups`` length groups
    (0: open_clip's whole-context tower). Returns whether the model can and now does."""
    if max_groups < 0:
        raise UserError(f"text_length_groups must be 0 or more, got {max_groups}")
    if not cuttable(model):
        if max_groups:
            log.info("text tower of %s keeps its whole context", type(model).__name__)
        return False
    model.__class__ = LengthGroupedCLIP
    model.text_length_groups = max_groups
    return max_groups > 0
