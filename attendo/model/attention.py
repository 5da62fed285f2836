"""Attention scorers and the shared masked softmax + weighted sum.

At decoder step i the scorer gives e_ij = f(s_i, h_j) for every source position j;
a_ij = softmax_j(e_ij) over non-padding positions and c_i = sum_j a_ij h_j
(Bahdanau et al. 2015, sec. 3.1; Luong et al. 2015, sec. 3.1).

Each scorer has two parts so that per-step work stays small during decoding:
``prepare(keys)`` runs once per source batch (e.g. W_2 h_j for the additive scorer) and
``score(query, prepared, cov)`` runs at every step. Weights are returned, never stored.

A new scorer is one class (``__init__(query_dim, key_dim)``, ``prepare``, ``score``) and one
line in :data:`SCORERS`.

Coverage (``model.coverage``; see :mod:`attendo.model.coverage`): the scorer also sees
cov_ij = sum_{i' < i} a_i'j, inside the tanh for additive (e_ij = v_a^T tanh(W_1 s_i + W_2 h_j
+ w_c cov_ij)), as a learned scalar times cov_ij added to the score for the others.

Normalizer (``model.attention_normalizer``): a_i = softmax(e_i) by default, or sparsemax /
1.5-entmax (see :mod:`attendo.model.normalizers`), which give exactly zero weight to
low-scoring positions. Padding gets exactly zero weight with every normalizer.

Local attention (Luong et al. 2015, sec. 3.2; ``model.attention_window`` D > 0 with
``model.local``). Positions are 0-based, S_b the number of real source positions of row b and
i the 0-based target step. After scoring (so it works with every scorer):

- monotonic (local-m): p_i = min(i, S_b - 1); scores outside [p_i - D, p_i + D] are masked
  before normalizing, so those positions get exactly zero weight and the weights sum to 1.
- predictive (local-p): p_i = S_b * sigmoid(v_p^T tanh(W_p q_i)) in [0, S_b], q_i the
  attention query (s_i for Luong style, s_{i-1} for Bahdanau style); scores at positions j with
  |j - p_i| > D are masked, the rest normalized, and each weight multiplied by
  exp(-(j - p_i)^2 / (2 sigma^2)), sigma = D / 2 (Luong eq. 10). As in the paper the weights are
  not renormalized afterwards (they sum to <= 1) and the context is sum_j a_ij h_j. The
  Gaussian carries the gradient to p_i; the hard window edge carries none. At least one real
  position is always inside the window (D >= 1 and p_i in [0, S_b]).
- previous: p_i = argmax_j a_{i-1,j}, the peak of the step before (-1 before the first step),
  and the window masked as for local-m: attention moves on from where it last looked, the
  windowing of Chorowski et al. (2014; 2015: they centre it on the median of a_{i-1}) for
  readers that move monotonically (digits, text lines, speech). Nothing in it depends on how
  long the source is. RNN decoder, which carries the peak in its state; a window holding no
  real position gives the whole source.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import coverage as cov_
from .normalizers import normalize


def masked_softmax(scores: Tensor, src_pad_mask: Tensor) -> Tensor:
    """Softmax over the last axis with padding positions forced to exactly zero weight:
    scores (B, Tq, S), src_pad_mask (B, S) True at padding -> (B, Tq, S)."""
    scores = scores.masked_fill(src_pad_mask.unsqueeze(1), float("-inf"))
    return torch.softmax(scores, dim=-1)


def scaled_dot(q: Tensor, k: Tensor) -> Tensor:
    """Scaled dot-product scores q k^T / sqrt(d) (Vaswani et al. 2017, sec. 3.2.1):
    q (..., Tq, d), k (..., Tk, d) -> (..., Tq, Tk). The multi-head attention's (and its
    grouped fast path's); :class:`ScaledDotScorer` multiplies by 1 / sqrt(d) instead, which
    its saved models were trained with (not bit-identical to a division)."""
    return q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))


def masked_normalize(scores: Tensor, src_pad_mask: Tensor, normalizer: str = "softmax") -> Tensor:
    """:func:`masked_softmax` with any normalizer of :mod:`attendo.model.normalizers`;
    src_pad_mask: (B, S) or (B, Tq, S), True where no weight may go."""
    if normalizer == "softmax" and src_pad_mask.dim() == 2:
        return masked_softmax(scores, src_pad_mask)
    invalid = src_pad_mask if src_pad_mask.dim() == 3 else src_pad_mask.unsqueeze(1)
    return normalize(scores, normalizer, invalid)


class Scorer(nn.Module):
    """Base class: e = f(query, keys). Subclasses define prepare and score. ``score``'s
    coverage ``cov`` (B, Tq, S) is used only after :meth:`add_coverage` created ``w_c``."""

    def __init__(self):
        super().__init__()
        self.register_parameter("w_c", None)  # the coverage weight, see add_coverage

    def prepare(self, keys: Tensor) -> Tensor:
        """keys: (B, S, Dk) -> per-batch precomputation (B, S, *)."""
        return keys

    def score(self, query: Tensor, prepared: Tensor, cov: Tensor | None = None) -> Tensor:
        """query: (B, Tq, Dq); prepared: from prepare; cov (B, Tq, S) -> scores (B, Tq, S)."""
        raise NotImplementedError

    def add_coverage(self, window: int = 1) -> None:
        """Let coverage enter the scores: e_ij + w_c cov_ij with a learned scalar w_c (or a
        learned filter over the coverage of j's ``window`` neighbours)."""
        self.w_c = cov_.coverage_weight(window=window)


class DotScorer(Scorer):
    """Luong dot: e_ij = s_i . h_j. When the key size differs from the query size,
    keys are first mapped by a bias-free linear layer (needed for a bidirectional encoder)."""

    def __init__(self, query_dim: int, key_dim: int, scaled: bool = False):
        super().__init__()
        self.key_proj = None if query_dim == key_dim else nn.Linear(key_dim, query_dim, bias=False)
        self.scale = 1.0 / math.sqrt(query_dim) if scaled else 1.0

    def prepare(self, keys: Tensor) -> Tensor:
        return keys if self.key_proj is None else self.key_proj(keys)  # (B, S, Dq)

    def score(self, query: Tensor, prepared: Tensor, cov: Tensor | None = None) -> Tensor:
        e = torch.bmm(query, prepared.transpose(1, 2)) * self.scale  # (B, Tq, S)
        return cov_.add_to_scores(e, self.w_c, cov)


class ScaledDotScorer(DotScorer):
    """Scaled dot (Vaswani et al. 2017, sec. 3.2.1): e_ij = s_i . h_j / sqrt(d)."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__(query_dim, key_dim, scaled=True)


class GeneralScorer(Scorer):
    """Luong general (bilinear): e_ij = s_i^T W_a h_j. W_a h_j is computed once per batch."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.W_a = nn.Linear(key_dim, query_dim, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        return self.W_a(keys)  # (B, S, Dq)

    def score(self, query: Tensor, prepared: Tensor, cov: Tensor | None = None) -> Tensor:
        e = torch.bmm(query, prepared.transpose(1, 2))  # (B, Tq, S)
        return cov_.add_to_scores(e, self.w_c, cov)


class AdditiveScorer(Scorer):
    """Bahdanau additive / concat / MLP: e_ij = v_a^T tanh(W_1 s_i + W_2 h_j), with coverage
    v_a^T tanh(W_1 s_i + W_2 h_j + w_c cov_ij) (See et al. 2017, eq. 11)."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int | None = None):
        super().__init__()
        attn_dim = attn_dim or query_dim
        self.W_1 = nn.Linear(query_dim, attn_dim, bias=False)
        self.W_2 = nn.Linear(key_dim, attn_dim, bias=True)
        self.v_a = nn.Linear(attn_dim, 1, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        return self.W_2(keys)  # (B, S, A)

    def add_coverage(self, window: int = 1) -> None:
        self.w_c = cov_.coverage_weight(self.v_a.in_features, window=window)  # (A[, window])

    def score(self, query: Tensor, prepared: Tensor, cov: Tensor | None = None) -> Tensor:
        q = self.W_1(query)  # (B, Tq, A)
        pre = q.unsqueeze(2) + prepared.unsqueeze(1)  # (B, Tq, S, A)
        pre = cov_.add_to_features(pre, self.w_c, cov)  # (B, Tq, S, A)
        return self.v_a(torch.tanh(pre)).squeeze(-1)  # (B, Tq, S)


class LocationScorer(Scorer):
    """Luong location-based: a_i = softmax(W_a s_i), scores over source *positions* only:
    one output per position up to ``max_len``; positions beyond it get no weight (-inf)."""

    def __init__(self, query_dim: int, key_dim: int, max_len: int = 256):
        super().__init__()
        self.W_a = nn.Linear(query_dim, max_len)
        self.max_len = max_len

    def score(self, query: Tensor, prepared: Tensor, cov: Tensor | None = None) -> Tensor:
        S = prepared.size(1)
        e = self.W_a(query)  # (B, Tq, max_len)
        if S <= self.max_len:
            e = e[..., :S]
        else:
            e = F.pad(e, (0, S - self.max_len), value=float("-inf"))  # (B, Tq, S)
        return cov_.add_to_scores(e, self.w_c, cov)


SCORERS: dict[str, type[Scorer]] = {
    "dot": DotScorer, "scaled_dot": ScaledDotScorer, "general": GeneralScorer,
    "additive": AdditiveScorer, "location": LocationScorer,
}


def build_scorer(name: str, query_dim: int, key_dim: int, location_max_len: int = 256,
                 coverage: bool = False, coverage_window: int = 1) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown attention scorer {name!r}; choose one of {sorted(SCORERS)}")
    cls = SCORERS[name]
    if cls is LocationScorer:
        scorer = cls(query_dim, key_dim, location_max_len)
    else:
        scorer = cls(query_dim, key_dim)
    if coverage:
        scorer.add_coverage(coverage_window)
    return scorer


class Attention(nn.Module):
    """A scorer plus the shared masked normalizer (softmax by default) and weighted sum,
    optionally local (window > 0; see the module docstring). Settings come validated."""

    def __init__(self, scorer: Scorer, normalizer: str = "softmax", window: int = 0,
                 local: str = "monotonic", query_dim: int | None = None):
        super().__init__()
        self.scorer, self.normalizer, self.window = scorer, normalizer, window
        self.local = local if window else None
        if self.local == "predictive":  # query_dim: the decoder's hidden size
            self.W_p = nn.Linear(query_dim, query_dim, bias=False)
            self.v_p = nn.Linear(query_dim, 1, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        return self.scorer.prepare(keys)

    def aligned_position(self, query: Tensor, src_pad_mask: Tensor, step: int | Tensor,
                         peak: Tensor | None = None) -> Tensor:
        """p_i, the window centre (B, Tq) (float): local-m min(i, S_b - 1) with i = step + q for
        query q (step: the target step of the first query, int or (B,)); local-p
        S_b * sigmoid(v_p^T tanh(W_p q_i)); previous: ``peak`` (B,), the last step's argmax."""
        dtype = torch.promote_types(query.dtype, torch.float32)  # positions need fp32 at least
        if self.local == "previous":  # one query at a time (the RNN decoder's steps)
            return peak.to(dtype).unsqueeze(-1)  # (B, 1)
        S_b = (~src_pad_mask).sum(-1, keepdim=True).to(dtype)  # (B, 1)
        if self.local == "predictive":
            gate = self.v_p(torch.tanh(self.W_p(query))).squeeze(-1)  # (B, Tq)
            return S_b * torch.sigmoid(gate.to(dtype))
        i = torch.arange(query.size(1), device=query.device).unsqueeze(0)  # (1, Tq)
        i = i + (step.unsqueeze(-1) if isinstance(step, Tensor) else step)
        return torch.minimum(i.to(S_b.dtype), (S_b - 1).clamp_min(0))  # (B, Tq)

    def forward(self, query: Tensor, prepared: Tensor, values: Tensor, src_pad_mask: Tensor,
                cov: Tensor | None = None, step: int | Tensor = 0, peak: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """query (B, Tq, Dq), values (B, S, Dv), coverage cov (B, Tq, S) or None, step (local-m:
        the target step of query 0), peak (previous: (B,) the last step's attention peak)
        -> context (B, Tq, Dv), weights (B, Tq, S)."""
        scores = self.scorer.score(query, prepared, cov)
        if not self.window:
            weights = self._normalize(scores, src_pad_mask)
            return torch.bmm(weights, values), weights
        p = self.aligned_position(query, src_pad_mask, step, peak)  # (B, Tq)
        j = torch.arange(src_pad_mask.size(1), device=query.device, dtype=p.dtype)  # (S,)
        dist = j - p.unsqueeze(-1)  # (B, Tq, S)
        outside = (dist.detach().abs() > self.window) | src_pad_mask.unsqueeze(1)
        if self.local == "previous":  # past the last real position: keep the window non-empty
            outside = torch.where(outside.all(-1, keepdim=True), src_pad_mask.unsqueeze(1),
                                  outside)
        weights = self._normalize(scores, outside)
        if self.local == "predictive":
            sigma = self.window / 2
            weights = weights * torch.exp(-(dist * dist) / (2 * sigma * sigma)).to(weights.dtype)
        return torch.bmm(weights, values), weights

    def _normalize(self, scores: Tensor, invalid: Tensor) -> Tensor:
        """Masked weights; in scores' dtype like torch.softmax, except under autocast, where
        sparse normalizers keep their fp32 result (as autocast's softmax does)."""
        weights = masked_normalize(scores, invalid, self.normalizer)
        if weights.dtype != scores.dtype and not torch.is_autocast_enabled(scores.device.type):
            weights = weights.to(scores.dtype)
        return weights
