"""The Transformer decoder's decoding fast paths, kept apart so that
:mod:`attendo.model.transformer` reads like the paper. None changes what is computed (tested).

- Deferred reorder: beam search reorders the rows of the state at every step. The
  self-attention cache (L x (B, H, t, d)) would be copied twice per step (reorder, then append
  the new position); :class:`TransformerDecoderState` only records the order (``state.order``)
  and the next step applies it while it appends (:func:`extend_cache`), one copy of the cache.
- Grouped cross-attention: after ``state.repeat_rows(k)`` (beam expansion) the k beams of a
  sentence share one copy of its cross-attention memory (``state.group`` = k), and their k
  queries attend to it together (:func:`grouped_attention`), (n, H, k, d) against
  (n, H, S, d), instead of k copies of the memory. Pruning finished sentences keeps the
  sharing when whole groups are kept (:func:`whole_groups`); anything else gives every row its
  own memory again.

Shapes: B rows, H heads, t tokens decoded so far, S source length, d = D / H, L layers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import scaled_dot
from .interfaces import DecoderState
from .normalizers import normalize


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, key_pad_mask: Tensor | None, g: int,
                      normalizer: str, p: float, training: bool, need_weights: bool
                      ) -> tuple[Tensor, Tensor | None]:
    """Attention for q (B, H, 1, d) in groups of g rows over k, v (B / g, H, S, d): each
    group's queries attend together, (n, H, g, d) against (n, H, S, d). Returns the heads'
    contexts (B, 1, H*d) (before the output projection W_o) and the weights (B, H, 1, S) when
    need_weights. p: attention dropout."""
    B, H, Tq, d = q.shape
    if Tq != 1 or B % g or k.size(0) * g != B:
        raise ValueError(f"grouped attention needs one query per row and B = {g} x memory rows")
    n = B // g
    qg = q.view(n, g, H, d).transpose(1, 2)  # (n, H, g, d)
    scores = scaled_dot(qg, k)  # (n, H, g, S)
    invalid = None if key_pad_mask is None else key_pad_mask.view(n, 1, g, -1)
    w = normalize(scores.float(), normalizer, invalid).to(q.dtype)
    ctx = (F.dropout(w, p, training) @ v).transpose(1, 2).reshape(B, 1, H * d)  # (B, 1, D)
    weights = w.transpose(1, 2).reshape(B, H, 1, -1) if need_weights else None  # (B, H, 1, S)
    return ctx, weights


def whole_groups(idx: Tensor, g: int) -> Tensor | None:
    """If idx (B,) selects whole groups of g consecutive rows, in order within each group
    (rows j*g ... j*g + g-1), the group numbers j (B / g,); else None."""
    if g == 1:
        return idx
    if idx.numel() % g:
        return None
    rows = idx.view(-1, g)
    first = rows[:, :1]
    in_order = torch.equal(rows - first, torch.arange(g, device=idx.device).expand_as(rows))
    if bool((first % g != 0).any()) or not in_order:
        return None
    return torch.div(first.squeeze(1), g, rounding_mode="floor")


def extend_cache(past: Tensor, new: Tensor, order: Tensor | None) -> Tensor:
    """The rows ``order`` of the cache past (B', H, t, d) (all rows when None), then new
    (B, H, T, d) appended along time -> (B, H, t+T, d), in one copy of the cache: a beam
    reorder and the append share it."""
    if order is None:
        return torch.cat([past, new], 2)
    B, H, T, d = new.shape
    t = past.size(2)
    out = new.new_empty(B, H, t + T, d)
    torch.index_select(past, 0, order, out=out[:, :, :t])
    out[:, :, t:] = new
    return out


@dataclass
class TransformerDecoderState(DecoderState):
    # one contiguous (B, H, *, d) tensor per layer: a slice [:, i] of one (B, L, H, *, d)
    # tensor would be copied by every matrix product that reads it, at every step
    self_k: tuple[Tensor, ...]  # L x (B, H, t, d) self-attention keys of the t tokens so far
    self_v: tuple[Tensor, ...]  # L x (B, H, t, d) ... and their values
    cross_k: tuple[Tensor, ...]  # L x (B, H, S, d) cross-attention keys of the encoder states
    cross_v: tuple[Tensor, ...]  # L x (B, H, S, d) ... and values
    src_pad_mask: Tensor  # (B, S) True at padding
    t: int = 0  # tokens decoded so far = position of the next one (all rows advance together)
    src_ext: Tensor | None = None  # (B, S) source ids in the extended vocabulary (model.copy)
    n_ext: int = 0  # extra (source-only) words in the extended vocabulary of this batch
    # (B,) deferred reorder: row b of the cache is row order[b] of self_k/self_v (None: as is)
    order: Tensor | None = None
    group: int = 1  # rows per cross_k/cross_v row (grouped cross-attention)

    PER_SOURCE: ClassVar[frozenset[str]] = frozenset({"cross_k", "cross_v", "src_pad_mask",
                                                      "src_ext"})

    def index_select(self, idx: Tensor, same_source: bool = False):
        order = idx if self.order is None else self.order.index_select(0, idx)
        rest = dataclasses.replace(self, self_k=(), self_v=(), order=None, cross_k=(), cross_v=())
        rest = DecoderState.index_select(rest, idx, same_source)
        cross_k, cross_v, group = self.cross_k, self.cross_v, self.group
        if not same_source:
            whole = whole_groups(idx, group)  # memory rows when idx keeps whole groups
            if whole is None:  # give every row its own memory again
                whole, group = torch.div(idx, group, rounding_mode="floor"), 1
            cross_k = tuple(c.index_select(0, whole) for c in cross_k)
            cross_v = tuple(c.index_select(0, whole) for c in cross_v)
        return dataclasses.replace(rest, self_k=self.self_k, self_v=self.self_v, order=order,
                                   cross_k=cross_k, cross_v=cross_v, group=group)

    def repeat_rows(self, k: int):
        n = self.src_pad_mask.size(0)
        idx = torch.arange(n, device=self.src_pad_mask.device).repeat_interleave(k)
        out = dataclasses.replace(self, cross_k=(), cross_v=()).index_select(idx)
        return dataclasses.replace(out, cross_k=self.cross_k, cross_v=self.cross_v,
                                   group=self.group * k)

    def cache(self, i: int) -> tuple[Tensor, Tensor]:
        """Layer i's self-attention keys and values (B, H, t, d), in the state's row order."""
        k, v = self.self_k[i], self.self_v[i]
        if self.order is None:
            return k, v
        return k.index_select(0, self.order), v.index_select(0, self.order)

