"""The Transformer's multi-head attention. Shapes: B batch, Tq queries, Tk keys, D = d_model,
H heads, d = D / H; ``key_pad_mask`` (B, Tk) is True at padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import scaled_dot
from .normalizers import normalize
from .transformer_fast import grouped_attention


def attention_mask(key_pad_mask: Tensor | None, causal: bool, Tq: int, Tk: int,
                   device: torch.device) -> Tensor | None:
    """Boolean mask, True where query i may attend to key j, broadcastable to (B, H, Tq, Tk).
    key_pad_mask: (B, Tk), True at padding. causal: query i sees keys j <= i (Tq == Tk)."""
    allowed = None if key_pad_mask is None else ~key_pad_mask[:, None, None, :]  # (B, 1, 1, Tk)
    if causal:
        tril = torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril()  # (Tq, Tk)
        allowed = tril if allowed is None else allowed & tril
    return allowed


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, sec. 3.2.2).

    head_h = softmax(Q W_q^h (K W_k^h)^T / sqrt(d)) V W_v^h;  out = [head_1; ...; head_H] W_o.

    Self-attention (``kv_dim=None``) projects Q, K and V with one fused matrix W_qkv;
    cross-attention projects queries with W_q and the memory with W_kv (keys and values
    fused), so the memory's keys and values can be computed once per source batch.

    ``attend`` uses ``F.scaled_dot_product_attention`` (fused kernels) unless the weights are
    asked for or ``normalizer`` (``model.attention_normalizer``) is sparsemax / 1.5-entmax
    (:mod:`attendo.model.normalizers`; SDPA only does softmax); then it computes the weights
    explicitly and returns them per head (B, H, Tq, Tk). Both paths give the same output
    (tested). Masked positions get exactly zero weight.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, kv_dim: int | None = None,
                 normalizer: str = "softmax"):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.normalizer = normalizer
        self.heads, self.d_head, self.dropout = heads, d_model // heads, dropout
        if kv_dim is None:
            self.W_qkv = nn.Linear(d_model, 3 * d_model)
        else:
            self.W_q = nn.Linear(d_model, d_model)
            self.W_kv = nn.Linear(kv_dim, 2 * d_model)
        self.W_o = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor, n: int) -> tuple[Tensor, ...]:
        """(B, T, n*D) -> n tensors (B, H, T, d)."""
        B, T, _ = x.shape
        x = x.view(B, T, n, self.heads, self.d_head).permute(2, 0, 3, 1, 4)  # (n, B, H, T, d)
        return x.unbind(0)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention: x (B, T, D) -> q, k, v, each (B, H, T, d)."""
        return self._split(self.W_qkv(x), 3)  # type: ignore[return-value]

    def project_q(self, x: Tensor) -> Tensor:
        """Cross-attention queries: x (B, T, D) -> (B, H, T, d)."""
        return self._split(self.W_q(x), 1)[0]

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention memory: (B, S, D_kv) -> k, v, each (B, H, S, d)."""
        return self._split(self.W_kv(memory), 2)  # type: ignore[return-value]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_pad_mask: Tensor | None = None,
               causal: bool = False, need_weights: bool = False, group: int = 1
               ) -> tuple[Tensor, Tensor | None]:
        """q (B, H, Tq, d), k and v (B, H, Tk, d) -> out (B, Tq, D), weights (B, H, Tq, Tk) or None.

        key_pad_mask (B, Tk) True at padding keys; causal: query i sees keys j <= i.
        The returned weights are those before attention dropout (what the model attends to).
        group > 1 (one query per row, cross-attention in beam search): rows come in groups of
        ``group`` that share one memory, and k, v hold it once per group (B / group, H, Tk, d);
        see :func:`~attendo.model.transformer_fast.grouped_attention`.
        """
        p = self.dropout if self.training else 0.0
        if group > 1:
            ctx, weights = grouped_attention(q, k, v, key_pad_mask, group, self.normalizer, p,
                                             self.training, need_weights)
            return self.W_o(ctx), weights
        B, H, Tq, d = q.shape
        Tk, weights = k.size(2), None
        # one query per row (incremental decoding) on CPU: the fused kernel's tiling costs more
        # than three plain operations (bench/sdpa_one_query.py)
        plain = Tq == 1 and q.device.type == "cpu"
        if not need_weights and not plain and self.normalizer == "softmax":
            if causal and key_pad_mask is None:  # the fused kernel builds the causal mask itself
                ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:
                mask = attention_mask(key_pad_mask, causal, Tq, Tk, q.device)
                ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            scores = scaled_dot(q, k)  # (B, H, Tq, Tk)
            mask = attention_mask(key_pad_mask, causal, Tq, Tk, q.device)
            if self.normalizer != "softmax":
                invalid = None if mask is None else ~mask
                weights = normalize(scores.float(), self.normalizer, invalid).to(q.dtype)
            else:
                if mask is not None:
                    scores = scores.masked_fill(~mask, float("-inf"))
                weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, H, Tq, Tk)
            ctx = F.dropout(weights, p, self.training) @ v  # (B, H, Tq, d)
            if not need_weights:
                weights = None
        ctx = ctx.transpose(1, 2).reshape(B, Tq, H * d)  # (B, Tq, D)
        return self.W_o(ctx), weights

    def forward(self, x: Tensor, key_pad_mask: Tensor | None = None, causal: bool = False,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Self-attention over x (B, T, D) -> out (B, T, D), weights (B, H, T, T) or None."""
        q, k, v = self.project_qkv(x)
        return self.attend(q, k, v, key_pad_mask, causal, need_weights)
