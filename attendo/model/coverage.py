"""Coverage (Tu et al. 2016; See et al. 2017, sec. 2.3; Wu et al. 2016, sec. 7), in one place.

cov_i = sum_{i' < i} a_i', the attention each source position has received before step i.
An RNN decoder with ``model.coverage`` carries it in its state and its scorer sees it, so
that it can learn to look elsewhere: inside the additive tanh, e_ij = v_a^T tanh(W_1 s_i +
W_2 h_j + w_c cov_ij) with a learned vector w_c (See et al. 2017, eq. 11); the other scorers
have no hidden layer to put it in, so a learned scalar is added, e_ij = f(s_i, h_j) + w_c cov_ij.
With ``model.coverage_window`` k > 1 the score of j sees the coverage of j's neighbours
j-r..j+r too (k = 2r + 1), through a convolution over the coverage vector: w_c becomes (A, k)
(or (k,)). That is location-aware attention over the cumulative weights (Chorowski et al.
2015, eq. 5-9, their f_i = F * a_{i-1} with the running sum): "my left neighbour has been read,
I have not" is what a monotonic reader (digits, text lines) needs, at any length.
w_c starts at 0, so a model starts as if it had no coverage (See et al.'s phase two). The
loss is ``train.coverage_loss`` (lambda) times sum_i sum_j min(a_ij, cov_ij) (eq. 12-13), or
in Show, Attend and Tell's form (``train.coverage_loss_form: doubly_stochastic``, any attention
model) sum_j (1 - cov_{T+1,j})^2, the final coverage of each source position (Xu et al. 2015,
eq. 14); the decode-time penalty (any attention model) is GNMT's (``decode.coverage_penalty``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

COVERAGE_PARAM = "w_c"  # the coverage weight's name in a scorer (and in saved weights)
COVERAGE_FLOOR = 1e-10  # sum_i a_ij is floored here: an unattended word costs beta * log(1e-10)


def coverage_weight(*shape: int, window: int = 1) -> nn.Parameter:
    """The coverage weight w_c: () for the scalar form, (A,) inside the additive scorer, with
    a trailing (window,) axis when window > 1; 0."""
    return nn.Parameter(torch.zeros(*shape, window) if window > 1 else torch.zeros(shape))


def _neighbours(cov: Tensor, window: int) -> Tensor:
    """cov (B, Tq, S) -> (B, Tq, S, window): cov_{j-r} .. cov_{j+r} at each j. Positions
    before the first count as read (1), after the last as unread (0): with nothing else to
    say where the source starts (an image of columns without positions), "the left
    neighbour is read, I am not" marks the first position too."""
    r = window // 2
    cov = nn.functional.pad(cov, (r, 0), value=1.0)
    return nn.functional.pad(cov, (0, r)).unfold(-1, window, 1)


def coverage_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every coverage weight w_c of ``model``."""
    return [p for n, p in model.named_parameters() if n.endswith("." + COVERAGE_PARAM)]


def add_to_scores(scores: Tensor, w_c: Tensor | None, cov: Tensor | None) -> Tensor:
    """e_ij + w_c cov_ij (a scalar w_c): scores, cov (B, Tq, S). Unchanged without coverage."""
    if cov is None or w_c is None:
        return scores
    if w_c.dim() == 1:  # coverage_window: sum_k w_c[k] cov_{j+k-r}
        return scores + _neighbours(cov, w_c.size(0)) @ w_c  # (B, Tq, S)
    return scores + w_c * cov  # (B, Tq, S)


def add_to_features(pre: Tensor, w_c: Tensor | None, cov: Tensor | None) -> Tensor:
    """W_1 s_i + W_2 h_j + w_c cov_ij inside the additive scorer: pre (B, Tq, S, A), cov
    (B, Tq, S), w_c (A,). Unchanged without coverage."""
    if cov is None or w_c is None:
        return pre
    if w_c.dim() == 2:  # coverage_window: w_c (A, k) over cov_{j-r} .. cov_{j+r}
        return pre + _neighbours(cov, w_c.size(1)) @ w_c.t()  # (B, Tq, S, A)
    return pre + cov.unsqueeze(-1) * w_c  # (B, Tq, S, A)


def initial_coverage(memory: Tensor, src_pad_mask: Tensor) -> Tensor:
    """cov_0 = 0 (B, S), like the encoder states ``memory`` (B, S, D)."""
    return memory.new_zeros(src_pad_mask.shape)


def advance(cov: Tensor, attn: Tensor, info: dict) -> Tensor:
    """Record cov_i in ``info["coverage"]`` and return cov_{i+1} = cov_i + a_i (B, S)."""
    info["coverage"] = cov  # before this step's attention
    return cov + attn


def coverage_loss(attn: Tensor, cov: Tensor, keep: Tensor) -> Tensor:
    """sum_i sum_j min(a_ij, cov_ij) over the target positions where keep is True
    (See et al. 2017, eq. 12). attn, cov (B, T, S); keep (B, T) -> scalar."""
    return torch.minimum(attn, cov).sum(-1)[keep].sum()


def doubly_stochastic_loss(attn: Tensor, keep: Tensor, src_pad_mask: Tensor) -> Tensor:
    """sum_j (1 - sum_i a_ij)^2 over each sentence's real source positions j, the sum over its
    target positions i where keep (B, T) is True: attn (B, T, S), src_pad_mask (B, S) ->
    scalar. Zero when every position (every region of an image) is attended once in total."""
    final = (attn * keep.unsqueeze(-1)).sum(1)  # (B, S) the coverage after the last step
    return ((1.0 - final) ** 2).masked_fill(src_pad_mask, 0.0).sum()


def coverage_penalty(attn_sum: Tensor, src_pad_mask: Tensor | None, beta: float) -> Tensor:
    """GNMT coverage penalty beta * sum_j log(min(sum_i a_ij, 1)) (Wu et al. 2016, sec. 7):
    attn_sum (N, S) the attention each source position received over the whole output,
    src_pad_mask (N, S) True at padding (not counted) or None -> (N,), <= 0."""
    logs = attn_sum.float().clamp(min=COVERAGE_FLOOR, max=1.0).log()  # (N, S)
    if src_pad_mask is not None:
        logs = logs.masked_fill(src_pad_mask, 0.0)
    return beta * logs.sum(-1)
