"""Where a token is. Self-attention and convolutions see a set of vectors, not a sequence;
the position of each token is added to its embedding, either as fixed sinusoids (Vaswani et
al. 2017, sec. 3.5) or as one trained vector per position (Gehring et al. 2017, sec. 3.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalPositions(nn.Module):
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D))
    (Vaswani et al. 2017, sec. 3.5). Not trained and not saved; longer sequences than the
    precomputed table are computed on the fly."""

    def __init__(self, dim: int, max_len: int = 512):
        super().__init__()
        self.dim = dim
        self.register_buffer("pe", self.table(max_len, dim), persistent=False)

    @staticmethod
    def table(n: int, dim: int) -> Tensor:
        if torch.get_default_device().type == "meta":
            # a shape without values (size checks); meta arange would import torch's compiler
            return torch.empty(n, dim)
        pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)  # (n, 1)
        freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(n, dim)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
        return pe  # (n, D)

    def forward(self, T: int, offset: int = 0) -> Tensor:
        """Positions offset .. offset+T-1 -> (T, D)."""
        if offset + T > self.pe.size(0):
            return self.table(offset + T, self.dim).to(self.pe)[offset:]
        return self.pe[offset : offset + T]


class LearnedPositions(nn.Module):
    """One trained vector per position (Gehring et al. 2017, sec. 3.1), up to ``max_len``."""

    def __init__(self, dim: int, max_len: int = 512):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        nn.init.normal_(self.weight, std=dim**-0.5)

    def forward(self, T: int, offset: int = 0) -> Tensor:
        """Positions offset .. offset+T-1 -> (T, D)."""
        if offset + T > self.weight.size(0):
            raise ValueError(
                f"position {offset + T - 1} is beyond the {self.weight.size(0)} learned positions "
                "(model.max_positions); raise it, or cap input and output lengths below it")
        return self.weight[offset : offset + T]


POSITIONS: dict[str, type[nn.Module]] = {"sinusoidal": SinusoidalPositions,
                                          "learned": LearnedPositions}


def build_positions(kind: str, dim: int, max_len: int) -> nn.Module:
    return POSITIONS[kind](dim, max_len)  # model.positions, validated by the config


def mean_pool(out: Tensor, src_pad_mask: Tensor) -> Tensor:
    """Mean of the non-padding states: out (B, S, D) -> (B, 1, D), a stand-in for an RNN's final
    state so that an RNN decoder's bridge can start from a non-recurrent encoder."""
    keep = (~src_pad_mask).unsqueeze(-1).to(out.dtype)  # (B, S, 1)
    return ((out * keep).sum(1) / keep.sum(1).clamp(min=1)).unsqueeze(1)
