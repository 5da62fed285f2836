"""Attention scorers and the shared masked softmax + weighted sum.

At decoder step i the scorer gives e_ij = f(s_i, h_j) for every source position j;
a_ij = softmax_j(e_ij) over non-padding positions and c_i = sum_j a_ij h_j
(Bahdanau et al. 2015, sec. 3.1; Luong et al. 2015, sec. 3.1).

Each scorer has two parts so that per-step work stays small during decoding:
``prepare(keys)`` runs once per source batch (e.g. W_2 h_j for the additive scorer) and
``score(query, prepared)`` runs at every step. Weights are returned, never stored.
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
    """Base class: e = f(query, keys). Subclasses define prepare and score."""

    def prepare(self, keys: Tensor) -> Tensor:
        """keys: (B, S, Dk) -> per-batch precomputation (B, S, *)."""
        return keys

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        """query: (B, Tq, Dq); prepared: from prepare -> scores (B, Tq, S)."""
        raise NotImplementedError


class DotScorer(Scorer):
    """Luong dot: e_ij = s_i . h_j. When the key size differs from the query size,
    keys are first mapped by a bias-free linear layer (needed for a bidirectional encoder)."""

    def __init__(self, query_dim: int, key_dim: int, scaled: bool = False):
        super().__init__()
        self.key_proj = None if query_dim == key_dim else nn.Linear(key_dim, query_dim, bias=False)
        self.scale = 1.0 / math.sqrt(query_dim) if scaled else 1.0

    def prepare(self, keys: Tensor) -> Tensor:
        return keys if self.key_proj is None else self.key_proj(keys)  # (B, S, Dq)

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        return torch.bmm(query, prepared.transpose(1, 2)) * self.scale  # (B, Tq, S)


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

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        return torch.bmm(query, prepared.transpose(1, 2))  # (B, Tq, S)


class AdditiveScorer(Scorer):
    """Bahdanau additive / concat / MLP: e_ij = v_a^T tanh(W_1 s_i + W_2 h_j)."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int | None = None):
        super().__init__()
        attn_dim = attn_dim or query_dim
        self.W_1 = nn.Linear(query_dim, attn_dim, bias=False)
        self.W_2 = nn.Linear(key_dim, attn_dim, bias=True)
        self.v_a = nn.Linear(attn_dim, 1, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        return self.W_2(keys)  # (B, S, A)

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        q = self.W_1(query)  # (B, Tq, A)
        hidden = torch.tanh(q.unsqueeze(2) + prepared.unsqueeze(1))  # (B, Tq, S, A)
        return self.v_a(hidden).squeeze(-1)  # (B, Tq, S)


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

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        S = prepared.size(1)
        e = self.W_a(query)  # (B, Tq, max_len)
        if S <= self.max_len:
            return e[..., :S]
        return F.pad(e, (0, S - self.max_len), value=float("-inf"))  # (B, Tq, S)


SCORERS: dict[str, type[Scorer]] = {
    "dot": DotScorer,
    "scaled_dot": ScaledDotScorer,
    "general": GeneralScorer,
    "additive": AdditiveScorer,
    "location": LocationScorer,
}


def build_scorer(name: str, query_dim: int, key_dim: int, location_max_len: int = 256) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown attention scorer {name!r}; choose one of {sorted(SCORERS)}")
    if name == "location":
        return LocationScorer(query_dim, key_dim, location_max_len)
    return SCORERS[name](query_dim, key_dim)


class Attention(nn.Module):
    """A scorer plus the shared masked softmax and weighted sum."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.scorer = scorer

    def prepare(self, keys: Tensor) -> Tensor:
        return self.scorer.prepare(keys)

    def forward(
        self, query: Tensor, prepared: Tensor, values: Tensor, src_pad_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """query (B, Tq, Dq), values (B, S, Dv) -> context (B, Tq, Dv), weights (B, Tq, S)."""
        weights = masked_softmax(self.scorer.score(query, prepared), src_pad_mask)
        return torch.bmm(weights, values), weights
