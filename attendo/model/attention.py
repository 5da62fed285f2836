"""Attention scorers and the shared masked softmax + weighted sum.

At decoder step i the scorer gives e_ij = f(s_i, h_j) for every source position j;
a_ij = softmax_j(e_ij) over non-padding positions and c_i = sum_j a_ij h_j
(Bahdanau et al. 2015, sec. 3.1; Luong et al. 2015, sec. 3.1).

Each scorer has two parts so that per-step work stays small during decoding:
``prepare(keys)`` runs once per source batch (e.g. W_2 h_j for the additive scorer) and
``score(query, prepared, cov)`` runs at every step. Weights are returned, never stored.

Coverage (Tu et al. 2016; See et al. 2017, sec. 2.3). With ``model.coverage`` the decoder
passes cov_ij = sum_{i' < i} a_i'j, the attention source position j has received so far, to
the scorer (after :meth:`Scorer.add_coverage`), so that it can learn to look elsewhere:

- additive: inside the tanh, e_ij = v_a^T tanh(W_1 s_i + W_2 h_j + w_c cov_ij) with a learned
  vector w_c (See et al. 2017, eq. 11);
- dot, scaled_dot, general, location: these have no hidden layer to put it in, so a learned
  scalar is added to the score, e_ij = f(s_i, h_j) + w_c cov_ij (w_c < 0 steers attention
  away from positions already covered; w_c = 0 ignores coverage).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def masked_softmax(scores: Tensor, src_pad_mask: Tensor) -> Tensor:
    """Softmax over the last axis with padding positions forced to exactly zero weight.

    scores: (B, Tq, S); src_pad_mask: (B, S), True at padding. Returns (B, Tq, S).
    """
    scores = scores.masked_fill(src_pad_mask.unsqueeze(1), float("-inf"))
    return torch.softmax(scores, dim=-1)


class Scorer(nn.Module):
    """Base class: e = f(query, keys). Subclasses define prepare and score.

    ``score`` takes an optional coverage ``cov`` (B, Tq, S); it is used only after
    :meth:`add_coverage` created the weight ``w_c``.
    """

    def __init__(self):
        super().__init__()
        self.register_parameter("w_c", None)  # the coverage weight, see add_coverage

    def prepare(self, keys: Tensor) -> Tensor:
        """keys: (B, S, Dk) -> per-batch precomputation (B, S, *)."""
        return keys

    def score(self, query: Tensor, prepared: Tensor, cov: Tensor | None = None) -> Tensor:
        """query: (B, Tq, Dq); prepared: from prepare; cov (B, Tq, S) -> scores (B, Tq, S)."""
        raise NotImplementedError

    def add_coverage(self) -> None:
        """Let coverage enter the scores: e_ij + w_c cov_ij with a learned scalar w_c."""
        self.w_c = nn.Parameter(torch.zeros(()))

    def _with_coverage(self, scores: Tensor, cov: Tensor | None) -> Tensor:
        if cov is None or self.w_c is None:
            return scores
        return scores + self.w_c * cov  # (B, Tq, S)


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
        return self._with_coverage(e, cov)


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
        return self._with_coverage(torch.bmm(query, prepared.transpose(1, 2)), cov)  # (B, Tq, S)


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

    def add_coverage(self) -> None:
        self.w_c = nn.Parameter(torch.zeros(self.v_a.in_features))  # (A,)

    def score(self, query: Tensor, prepared: Tensor, cov: Tensor | None = None) -> Tensor:
        q = self.W_1(query)  # (B, Tq, A)
        pre = q.unsqueeze(2) + prepared.unsqueeze(1)  # (B, Tq, S, A)
        if cov is not None and self.w_c is not None:
            pre = pre + cov.unsqueeze(-1) * self.w_c  # (B, Tq, S, A)
        return self.v_a(torch.tanh(pre)).squeeze(-1)  # (B, Tq, S)


class LocationScorer(Scorer):
    """Luong location-based: a_i = softmax(W_a s_i), scores over source *positions* only.

    The layer has one output per position up to ``max_len``; positions beyond it get no
    weight (score -inf), so sources longer than max_len cannot be attended past it.
    """

    def __init__(self, query_dim: int, key_dim: int, max_len: int = 256):
        super().__init__()
        self.W_a = nn.Linear(query_dim, max_len)
        self.max_len = max_len

    def prepare(self, keys: Tensor) -> Tensor:
        return keys

    def score(self, query: Tensor, prepared: Tensor, cov: Tensor | None = None) -> Tensor:
        S = prepared.size(1)
        e = self.W_a(query)  # (B, Tq, max_len)
        if S <= self.max_len:
            e = e[..., :S]
        else:
            e = F.pad(e, (0, S - self.max_len), value=float("-inf"))  # (B, Tq, S)
        return self._with_coverage(e, cov)


SCORERS: dict[str, type[Scorer]] = {
    "dot": DotScorer,
    "scaled_dot": ScaledDotScorer,
    "general": GeneralScorer,
    "additive": AdditiveScorer,
    "location": LocationScorer,
}


def build_scorer(
    name: str, query_dim: int, key_dim: int, location_max_len: int = 256, coverage: bool = False
) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown attention scorer {name!r}; choose one of {sorted(SCORERS)}")
    if name == "location":
        scorer: Scorer = LocationScorer(query_dim, key_dim, location_max_len)
    else:
        scorer = SCORERS[name](query_dim, key_dim)
    if coverage:
        scorer.add_coverage()
    return scorer


class Attention(nn.Module):
    """A scorer plus the shared masked softmax and weighted sum."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.scorer = scorer

    def prepare(self, keys: Tensor) -> Tensor:
        return self.scorer.prepare(keys)

    def forward(
        self,
        query: Tensor,
        prepared: Tensor,
        values: Tensor,
        src_pad_mask: Tensor,
        cov: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """query (B, Tq, Dq), values (B, S, Dv), coverage cov (B, Tq, S) or None
        -> context (B, Tq, Dv), weights (B, Tq, S)."""
        weights = masked_softmax(self.scorer.score(query, prepared, cov), src_pad_mask)
        return torch.bmm(weights, values), weights
