"""Label-smoothed cross-entropy over the output vocabulary in one autograd node.

The output layer's softmax is the largest elementwise cost of training (N target tokens x V
vocabulary entries, V = 8000 or more). Written with plain autograd, a label-smoothed loss
walks the (N, V) matrix many times: a float copy, log_softmax, the gather and mean backward
(zero-filled and broadcast (N, V) gradients), their sum and log_softmax_backward. Here the
backward is ``softmax - (1 - eps) * onehot - eps / V`` computed in place in one buffer.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, gold: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        with torch.autocast(logits.device.type, enabled=False):
            lp = torch.log_softmax(logits.float(), dim=-1)  # (N, V) fp32 whatever the logits
            nll = -lp.gather(1, gold.unsqueeze(1)).sum()
            loss = nll.clone() if eps == 0 else (1 - eps) * nll - eps * lp.mean(-1).sum()
        ctx.save_for_backward(lp, gold)
        ctx.eps, ctx.dtype = eps, logits.dtype
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, g_loss: Tensor, _g_nll: Tensor):
        lp, gold = ctx.saved_tensors
        eps, V = ctx.eps, lp.size(-1)
        g_loss = g_loss.float()
        grad = lp.exp().mul_(g_loss)  # softmax * g (N, V)
        if eps:
            grad.sub_(g_loss * (eps / V))
        hot = (-(1 - eps) * g_loss).expand(gold.size(0), 1).to(grad.dtype)
        grad.scatter_add_(1, gold.unsqueeze(1), hot)
        return grad.to(ctx.dtype), None, None


def smoothed_cross_entropy(logits: Tensor, gold: Tensor, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """logits (N, V), gold (N,) -> summed loss (label smoothing eps spreads eps uniformly over
    all V entries, as ``F.cross_entropy(label_smoothing=eps)`` does) and summed NLL (no grad).
    """
    return _SmoothedCrossEntropy.apply(logits, gold, eps)
