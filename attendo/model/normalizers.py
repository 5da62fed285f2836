"""Attention normalizers (``model.attention_normalizer``): softmax, sparsemax and 1.5-entmax,
masked. All map scores z (..., n) to a probability vector over the last axis:

- softmax: p_j = exp(z_j) / sum_k exp(z_k); every valid position gets weight > 0.
- sparsemax (Martins & Astudillo 2016): the Euclidean projection of z onto the simplex,
  p = [z - tau]_+ with tau chosen so that sum p = 1 (their Algorithm 1, sort-based). Positions
  with z_j <= tau get exactly 0.
- 1.5-entmax (Peters et al. 2019, alpha = 1.5): p = [z/2 - tau]_+^2 with sum p = 1, tau
  found exactly by their sort-based Algorithm 2. Sparse like sparsemax, but smoother.

Masking: ``invalid`` (broadcastable to z) is True at positions that must get no weight
(padding, future positions); a score of -inf counts as invalid too (the location scorer gives
-inf past its ``max_len``). Invalid positions get exactly 0, and a row with one valid position
gives it weight 1. A row with no valid position gives all zeros (softmax: NaN, as torch does).

sparsemax and entmax15 are :class:`torch.autograd.Function` s with the closed-form backward
passes (Martins & Astudillo 2016, sec. 2.5; Peters et al. 2019, Proposition 2):
sparsemax: dz = s * (g - sum(s g) / sum(s)), s the support indicator;
entmax15: dz = r * (g - sum(r g) / sum(r)), r = sqrt(p).
They compute in float32 at least (float64 stays float64), so bf16/fp16 scores under autocast
are upcast; the result is returned in that compute dtype (callers cast as with softmax).
"""

from __future__ import annotations

import torch
from torch import Tensor

NORMALIZERS = ("softmax", "sparsemax", "entmax15")


def _prepare(z: Tensor, invalid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Upcast to >= fp32, shift by the row max of the valid scores (stability) and sort.
    Returns the shifted scores with -inf at invalid positions (..., n), the sorted scores with 0
    in place of -inf (..., n) (invalid ones sort last, so they never enter the cumulative sums
    of a valid prefix), and the number of valid positions per row (..., 1)."""
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    bad = torch.isneginf(z) if invalid is None else torch.isneginf(z) | invalid
    z = z.masked_fill(bad, float("-inf"))
    n_valid = (~bad).sum(-1, keepdim=True)  # (..., 1)
    top = z.max(-1, keepdim=True).values
    # an all-invalid row is not shifted
    z = z - torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    zs = torch.sort(z, dim=-1, descending=True).values
    zs = zs.masked_fill(torch.isneginf(zs), 0.0)
    return z, zs, n_valid


def _in_prefix(zs: Tensor, n_valid: Tensor) -> tuple[Tensor, Tensor]:
    """k = 1..n as a row (n,) in zs's dtype, and whether k <= n_valid (..., n)."""
    k = torch.arange(1, zs.size(-1) + 1, device=zs.device, dtype=zs.dtype)
    return k, k <= n_valid


class SparsemaxFunction(torch.autograd.Function):
    """sparsemax over the last axis, invalid positions excluded (see the module docstring)."""

    @staticmethod
    def forward(ctx, z: Tensor, invalid: Tensor | None = None) -> Tensor:
        z, zs, n_valid = _prepare(z, invalid)
        k, ok = _in_prefix(zs, n_valid)
        cs = zs.cumsum(-1)  # (..., n)
        # support size k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)} (the support is a prefix)
        support = ((1 + k * zs > cs) & ok).sum(-1, keepdim=True).clamp_min(1)
        tau = (cs.gather(-1, support - 1) - 1) / support.to(zs.dtype)  # (..., 1)
        p = torch.clamp(z - tau, min=0)  # -inf - tau -> exactly 0
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, g: Tensor):
        (p,) = ctx.saved_tensors
        s = (p > 0).to(p.dtype)
        g = g.to(p.dtype)
        mean = (g * s).sum(-1, keepdim=True) / s.sum(-1, keepdim=True).clamp_min(1)
        return s * (g - mean), None


class Entmax15Function(torch.autograd.Function):
    """1.5-entmax over the last axis, invalid positions excluded (see the module docstring)."""

    @staticmethod
    def forward(ctx, z: Tensor, invalid: Tensor | None = None) -> Tensor:
        z, zs, n_valid = _prepare(z, invalid)
        z, zs = z / 2, zs / 2
        k, ok = _in_prefix(zs, n_valid)
        # Peters et al. 2019, Algorithm 2: for support size k, tau_k = M_k - sqrt(delta_k) with
        # M_k the mean and delta_k = (1 - k (mean of squares - M_k^2)) / k of the k largest
        mean = zs.cumsum(-1) / k
        mean_sq = (zs * zs).cumsum(-1) / k
        ss = k * (mean_sq - mean * mean)
        delta = ((1 - ss) / k).clamp_min(0)
        tau = mean - delta.sqrt()  # (..., n)
        support = ((tau <= zs) & ok).sum(-1, keepdim=True).clamp_min(1)
        tau_star = tau.gather(-1, support - 1)  # (..., 1)
        p = torch.clamp(z - tau_star, min=0) ** 2
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, g: Tensor):
        (p,) = ctx.saved_tensors
        r = p.sqrt()  # p^(2 - alpha), alpha = 1.5
        gr = g.to(p.dtype) * r
        total = r.sum(-1, keepdim=True)
        q = gr.sum(-1, keepdim=True) / torch.where(total > 0, total, torch.ones_like(total))
        return gr - q * r, None


def sparsemax(z: Tensor, invalid: Tensor | None = None) -> Tensor:
    """sparsemax over the last axis; invalid (broadcastable, True = no weight) or None."""
    return SparsemaxFunction.apply(z, None if invalid is None else invalid.expand_as(z))


def entmax15(z: Tensor, invalid: Tensor | None = None) -> Tensor:
    """1.5-entmax over the last axis; invalid (broadcastable, True = no weight) or None."""
    return Entmax15Function.apply(z, None if invalid is None else invalid.expand_as(z))


def normalize(scores: Tensor, name: str, invalid: Tensor | None = None) -> Tensor:
    """``name`` (one of NORMALIZERS) over the last axis of scores with invalid positions at 0.
    softmax keeps scores' dtype (as ``torch.softmax``; autocast upcasts it itself); sparsemax
    and entmax15 return float32 (or float64) whatever the input."""
    if name == "softmax":
        if invalid is not None:
            scores = scores.masked_fill(invalid, float("-inf"))
        return torch.softmax(scores, dim=-1)
    if name == "sparsemax":
        return sparsemax(scores, invalid)
    if name == "entmax15":
        return entmax15(scores, invalid)
    raise ValueError(f"unknown attention normalizer {name!r}; choose one of {list(NORMALIZERS)}")
