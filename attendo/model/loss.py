"""Label-smoothed cross-entropy over the output vocabulary in one autograd node.

The output layer's softmax is the largest elementwise cost of training. Written with plain
autograd, a label-smoothed loss walks the (N, V) matrix (tens of MB) many times: a float copy,
log_softmax, the gather and mean backward, their sum and log_softmax_backward.

Here the loss needs only three numbers per row: with lse = logsumexp(x) over the logits x,
NLL = lse - x_gold and the smoothing term -mean_w log P(w) = lse - mean(x). The backward is
``softmax - (1 - eps) * onehot - eps / V`` with softmax = exp(x - lse). Both passes walk the
rows in blocks of about a million entries (BLOCK_ELEMENTS), so the float copy of a block and
every pass over it stay in the CPU cache; nothing (N, V) is saved for the backward but the
logits themselves (no log-probability matrix).
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK_ELEMENTS = 1 << 20  # entries per block: 4 MB in float32, cache-sized


def _blocks(n_rows: int, width: int):
    rows = max(1, BLOCK_ELEMENTS // max(1, width))
    for start in range(0, n_rows, rows):
        yield start, min(n_rows, start + rows)


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, gold: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        N, V = logits.shape
        lse = logits.new_empty(N, dtype=torch.float32)  # logsumexp of each row
        mean = logits.new_empty(N, dtype=torch.float32) if eps else None  # mean logit per row
        with torch.autocast(logits.device.type, enabled=False):
            for s, e in _blocks(N, V):
                x = logits[s:e].float()  # (rows, V) fp32 whatever the logits
                torch.logsumexp(x, dim=-1, out=lse[s:e])
                if mean is not None:
                    torch.mean(x, dim=-1, out=mean[s:e])
            gold_logit = logits.gather(1, gold.unsqueeze(1)).squeeze(1).float()  # (N,)
            nll = (lse - gold_logit).sum()
            loss = nll.clone() if not eps else (1 - eps) * nll + eps * (lse - mean).sum()
        ctx.save_for_backward(logits, gold, lse)
        ctx.eps = eps
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, g_loss: Tensor, _g_nll: Tensor):
        logits, gold, lse = ctx.saved_tensors
        eps = ctx.eps
        N, V = logits.shape
        g = g_loss.float()
        grad = torch.empty_like(logits)
        buf = None  # one fp32 block, reused
        hot = (-(1 - eps) * g).expand(N, 1)  # (N, 1) the gold entries' extra gradient
        with torch.autocast(logits.device.type, enabled=False):
            for s, e in _blocks(N, V):
                if buf is None:
                    buf = logits.new_empty(e - s, V, dtype=torch.float32)
                b = buf[: e - s]
                torch.sub(logits[s:e], lse[s:e].unsqueeze(1), out=b)
                b.exp_().mul_(g)  # softmax * g
                if eps:
                    b.sub_(g * (eps / V))
                b.scatter_add_(1, gold[s:e].unsqueeze(1), hot[s:e])
                grad[s:e].copy_(b)
        return grad, None, None


def smoothed_cross_entropy(logits: Tensor, gold: Tensor, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """logits (N, V), gold (N,) -> summed loss (label smoothing eps spreads eps uniformly over
    all V entries, as ``F.cross_entropy(label_smoothing=eps)`` does) and summed NLL (no grad).
    """
    return _SmoothedCrossEntropy.apply(logits, gold, eps)
