"""Self-attention: the Transformer encoder and decoder (Vaswani et al. 2017).

Every token is a query over every token: Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
(sec. 3.2.1), computed by ``heads`` heads with their own projections, concatenated and
projected by W_o (sec. 3.2.2). A layer is self-attention (+ cross-attention over the encoder
states in the decoder) and a position-wise feed-forward network, each wrapped in dropout,
a residual connection and LayerNorm (sec. 3.1), either after the residual ("post", the paper)
or before the sub-layer ("pre", Wang et al. 2019, which trains without a careful warm-up).

Shapes: B batch, T target length, S source length, D = d_model, H heads, d = D / H,
L layers. Masks follow attendo's one convention: ``src_pad_mask`` (B, S) is True at padding.

The decoder implements the same step interface as :class:`~attendo.model.decoders.RNNDecoder`.
Its state caches, per layer, the keys and values of the tokens decoded so far (growing by one
per step) and of the encoder states (computed once in ``init_state``), all batch-first, so
``state.index_select`` reorders them for beam search like any other state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .decoders import DecoderState, OutputLayer
from .dropout import Dropout
from .encoders import EncoderOutput
from .normalizers import NORMALIZERS, normalize

# --------------------------------------------------------------------------- attention


def attention_mask(key_pad_mask: Tensor | None, causal: bool, Tq: int, Tk: int,
                   device: torch.device) -> Tensor | None:
    """Boolean mask, True where query i may attend to key j, broadcastable to (B, H, Tq, Tk).

    key_pad_mask: (B, Tk), True at padding. causal: query i sees keys j <= i (Tq == Tk).
    """
    allowed = None
    if key_pad_mask is not None:
        allowed = ~key_pad_mask[:, None, None, :]  # (B, 1, 1, Tk)
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
    asked for; then it computes them explicitly and returns them per head (B, H, Tq, Tk).
    Both paths give the same output (tested). Weights are returned, never stored.

    ``normalizer`` (``model.attention_normalizer``): softmax, or sparsemax / 1.5-entmax (see
    :mod:`attendo.model.normalizers`), which always take the explicit-weights path (SDPA only
    does softmax); masked positions get exactly zero weight.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, kv_dim: int | None = None,
                 normalizer: str = "softmax"):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        if normalizer not in NORMALIZERS:
            raise ValueError(
                f"unknown attention normalizer {normalizer!r}; choose one of {list(NORMALIZERS)}"
            )
        self.normalizer = normalizer
        self.heads, self.d_head, self.dropout = heads, d_model // heads, dropout
        self.is_self = kv_dim is None
        if self.is_self:
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

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_pad_mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
        group: int = 1,
    ) -> tuple[Tensor, Tensor | None]:
        """q (B, H, Tq, d), k and v (B, H, Tk, d) -> out (B, Tq, D), weights (B, H, Tq, Tk) or None.

        key_pad_mask (B, Tk) True at padding keys; causal: query i sees keys j <= i.
        The returned weights are those before attention dropout (what the model attends to).
        group > 1 (one query per row, cross-attention in beam search): rows come in groups of
        ``group`` that share one memory, and k, v hold it once per group (B / group, H, Tk, d).
        """
        if group > 1:
            return self._attend_grouped(q, k, v, key_pad_mask, group, need_weights)
        B, H, Tq, d = q.shape
        Tk = k.size(2)
        p = self.dropout if self.training else 0.0
        weights = None
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
            scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, Tq, Tk)
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

    def _attend_grouped(self, q: Tensor, k: Tensor, v: Tensor, key_pad_mask: Tensor | None,
                        g: int, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """attend for q (B, H, 1, d) in groups of g rows over k, v (B / g, H, S, d): each
        group's queries attend together, (n, H, g, d) against (n, H, S, d)."""
        B, H, Tq, d = q.shape
        if Tq != 1 or B % g or k.size(0) * g != B:
            raise ValueError(f"grouped attention needs one query per row and B = {g} x memory rows")
        n = B // g
        qg = q.view(n, g, H, d).transpose(1, 2)  # (n, H, g, d)
        scores = qg @ k.transpose(-2, -1) / math.sqrt(d)  # (n, H, g, S)
        invalid = None if key_pad_mask is None else key_pad_mask.view(n, 1, g, -1)
        w = normalize(scores.float(), self.normalizer, invalid).to(q.dtype)
        p = self.dropout if self.training else 0.0
        ctx = (F.dropout(w, p, self.training) @ v).transpose(1, 2).reshape(B, 1, H * d)  # (B, 1, D)
        weights = w.transpose(1, 2).reshape(B, H, 1, -1) if need_weights else None  # (B, H, 1, S)
        return self.W_o(ctx), weights

    def forward(
        self, x: Tensor, key_pad_mask: Tensor | None = None, causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Self-attention over x (B, T, D) -> out (B, T, D), weights (B, H, T, T) or None."""
        q, k, v = self.project_qkv(x)
        return self.attend(q, k, v, key_pad_mask, causal, need_weights)


# --------------------------------------------------------------------------- positions


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
                "(model.max_positions); raise it, or cap input and output lengths below it"
            )
        return self.weight[offset : offset + T]


def build_positions(kind: str, dim: int, max_len: int) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalPositions(dim, max_len)
    if kind == "learned":
        return LearnedPositions(dim, max_len)
    raise ValueError(f"unknown positions {kind!r}; choose sinusoidal or learned")


def mean_pool(out: Tensor, src_pad_mask: Tensor) -> Tensor:
    """Mean of the non-padding states: out (B, S, D) -> (B, 1, D), a stand-in for an RNN's final
    state so that an RNN decoder's bridge can start from a non-recurrent encoder."""
    keep = (~src_pad_mask).unsqueeze(-1).to(out.dtype)  # (B, S, 1)
    return ((out * keep).sum(1) / keep.sum(1).clamp(min=1)).unsqueeze(1)


# --------------------------------------------------------------------------- layers


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, applied at every position (sec. 3.3)."""

    def __init__(self, d_model: int, ff_dim: int, dropout: float = 0.0):
        super().__init__()
        self.W_1 = nn.Linear(d_model, ff_dim)
        self.W_2 = nn.Linear(ff_dim, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.W_2(self.dropout(F.relu(self.W_1(x))))


class _Residual(nn.Module):
    """x + Dropout(sublayer(.)) with LayerNorm before the sub-layer ("pre") or after the
    residual sum ("post"). Subclasses call ``self._in(x, norm)``, run the sub-layer on it,
    then ``self._out(x, y, norm)``."""

    def __init__(self, norm: str, dropout: float):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.pre_norm = norm == "pre"
        self.dropout = Dropout(dropout)

    def _in(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        return norm(x) if self.pre_norm else x

    def _out(self, x: Tensor, y: Tensor, norm: nn.LayerNorm) -> Tensor:
        x = x + self.dropout(y)
        return x if self.pre_norm else norm(x)


class TransformerEncoderLayer(_Residual):
    """Self-attention over the source, then the feed-forward network (sec. 3.1)."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float = 0.1,
                 attn_dropout: float = 0.1, norm: str = "pre", normalizer: str = "softmax"):
        super().__init__(norm, dropout)
        self.self_attn = MultiHeadAttention(d_model, heads, attn_dropout, normalizer=normalizer)
        self.ff = FeedForward(d_model, ff_dim, dropout)
        self.norm_attn, self.norm_ff = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, x: Tensor, src_pad_mask: Tensor, need_weights: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        """x (B, S, D) -> (B, S, D), self-attention weights (B, H, S, S) or None."""
        y, w = self.self_attn(self._in(x, self.norm_attn), src_pad_mask, need_weights=need_weights)
        x = self._out(x, y, self.norm_attn)
        x = self._out(x, self.ff(self._in(x, self.norm_ff)), self.norm_ff)
        return x, w


class TransformerDecoderLayer(_Residual):
    """Masked self-attention over the target prefix, cross-attention over the encoder states,
    then the feed-forward network (sec. 3.1)."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, enc_dim: int, dropout: float = 0.1,
                 attn_dropout: float = 0.1, norm: str = "pre", normalizer: str = "softmax"):
        super().__init__(norm, dropout)
        self.self_attn = MultiHeadAttention(d_model, heads, attn_dropout, normalizer=normalizer)
        self.cross_attn = MultiHeadAttention(
            d_model, heads, attn_dropout, kv_dim=enc_dim, normalizer=normalizer
        )
        self.ff = FeedForward(d_model, ff_dim, dropout)
        self.norm_self = nn.LayerNorm(d_model)
        self.norm_cross = nn.LayerNorm(d_model)
        self.norm_ff = nn.LayerNorm(d_model)

    def forward(
        self,
        x: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        src_pad_mask: Tensor,
        past_k: Tensor | None = None,
        past_v: Tensor | None = None,
        need_weights: bool = False,
        past_order: Tensor | None = None,
        group: int = 1,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """x (B, T, D); cross_k, cross_v (B, H, S, d) of the encoder states.

        past_k, past_v None: teacher forcing, x is the whole prefix and self-attention is causal.
        Otherwise (B', H, t, d) cached keys/values of the t earlier positions, which x follows;
        past_order (B,): row b's cache is row past_order[b] of past_k and past_v (a beam
        reorder not applied yet; None: the rows as they are). group: cross_k and cross_v hold
        one memory per group of that many rows (see MultiHeadAttention.attend).
        Returns x (B, T, D), self-attention keys and values incl. x's (B, H, t+T, d),
        cross-attention weights (B, H, T, S) when need_weights, and the cross-attention
        sub-layer's output (B, T, D) (its context, W_o [heads], which copy's p_gen reads).
        """
        q, k, v = self.self_attn.project_qkv(self._in(x, self.norm_self))  # (B, H, T, d) each
        if past_k is not None:
            k, v = _extend(past_k, k, past_order), _extend(past_v, v, past_order)  # (B, H, t+T, d)
        y, _ = self.self_attn.attend(q, k, v, causal=past_k is None)
        x = self._out(x, y, self.norm_self)
        q = self.cross_attn.project_q(self._in(x, self.norm_cross))
        ctx, w = self.cross_attn.attend(
            q, cross_k, cross_v, src_pad_mask, need_weights=need_weights, group=group
        )
        x = self._out(x, ctx, self.norm_cross)
        x = self._out(x, self.ff(self._in(x, self.norm_ff)), self.norm_ff)
        return x, k, v, w, ctx


def _whole_groups(idx: Tensor, g: int) -> Tensor | None:
    """If idx (B,) selects whole groups of g consecutive rows, in order within each group
    (rows j*g ... j*g + g-1), the group numbers j (B / g,); else None."""
    if g == 1:
        return idx
    if idx.numel() % g:
        return None
    rows = idx.view(-1, g)
    first = rows[:, :1]
    if bool((first % g != 0).any()) or not torch.equal(rows - first, torch.arange(g, device=idx.device).expand_as(rows)):
        return None
    return torch.div(first.squeeze(1), g, rounding_mode="floor")


def _extend(past: Tensor, new: Tensor, order: Tensor | None) -> Tensor:
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


class _EmbeddedTokens(nn.Module):
    """Token embeddings scaled by sqrt(D) (sec. 3.4) plus positions, then dropout."""

    def __init__(self, vocab_size: int, d_model: int, positions: str, max_positions: int,
                 dropout: float, pad_id: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.pos = build_positions(positions, d_model, max_positions)
        self.scale = math.sqrt(d_model)
        self.emb_dropout = Dropout(dropout)

    def _embed(self, ids: Tensor, offset: int = 0) -> Tensor:
        """ids (B, T) -> (B, T, D) for positions offset .. offset+T-1."""
        x = self.embed(ids) * self.scale + self.pos(ids.size(1), offset)
        return self.emb_dropout(x)


def _init_transformer(module: nn.Module, d_model: int) -> None:
    """Xavier-uniform matrices, zero biases, N(0, D^-1/2) embeddings with a zero padding row
    (the initialisation of fairseq's Transformer; embeddings are scaled by sqrt(D) on use)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, LearnedPositions):
                nn.init.normal_(m.weight, std=d_model**-0.5)
        for m in module.modules():  # after the Linears: a tied output layer shares this weight
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=d_model**-0.5)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()


# --------------------------------------------------------------------------- encoder


class TransformerEncoder(_EmbeddedTokens):
    """Embeddings + positions, N self-attention layers (+ a final LayerNorm when pre-norm).

    Returns an :class:`EncoderOutput` whose ``out`` is zero at padding and whose ``final_h``
    is the mean of the non-padding states (B, 1, D), so an RNN decoder with ``bridge`` can
    start from it; ``final_c`` is None.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 256,
        heads: int = 4,
        ff_dim: int = 1024,
        layers: int = 6,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        norm: str = "pre",
        positions: str = "sinusoidal",
        max_positions: int = 512,
        pad_id: int = 0,
        normalizer: str = "softmax",
    ):
        super().__init__(vocab_size, d_model, positions, max_positions, dropout, pad_id)
        self.layers = nn.ModuleList(
            [TransformerEncoderLayer(d_model, heads, ff_dim, dropout, attn_dropout, norm, normalizer)
             for _ in range(layers)]
        )
        self.final_norm = nn.LayerNorm(d_model) if norm == "pre" else None
        self.d_model = self.out_dim = d_model
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_transformer(self, self.d_model)

    def _encode(self, src: Tensor, src_lens: Tensor, need_weights: bool
                ) -> tuple[EncoderOutput, list[Tensor | None]]:
        S = src.size(1)
        src_pad_mask = torch.arange(S, device=src.device)[None, :] >= src_lens.to(src.device)[:, None]
        x = self._embed(src)  # (B, S, D)
        weights = []
        for layer in self.layers:
            x, w = layer(x, src_pad_mask, need_weights)
            weights.append(w)
        if self.final_norm is not None:
            x = self.final_norm(x)
        x = x.masked_fill(src_pad_mask.unsqueeze(-1), 0.0)
        return EncoderOutput(x, src_pad_mask, final_h=mean_pool(x, src_pad_mask)), weights

    def forward(self, src: Tensor, src_lens: Tensor) -> EncoderOutput:
        """src (B, S) ids, src_lens (B,) -> EncoderOutput(out (B, S, D), src_pad_mask (B, S))."""
        return self._encode(src, src_lens, need_weights=False)[0]

    def self_attention(self, src: Tensor, src_lens: Tensor) -> Tensor:
        """Self-attention weights of every layer and head, for pictures: (B, L, H, S, S)."""
        return torch.stack(self._encode(src, src_lens, need_weights=True)[1], 1)


# --------------------------------------------------------------------------- decoder


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
    # (B,) pending row order of self_k and self_v: row b of the cache is row order[b] of the
    # stored tensors. index_select only records it; the next step applies it while it
    # appends the new position (one copy of the cache instead of two). None: as stored.
    order: Tensor | None = None
    # rows per cross_k/cross_v row: after repeat_rows(k) (beam search) the k beams of a
    # sentence share one copy of its memory, and cross-attention attends for them together
    group: int = 1

    PER_SOURCE: ClassVar[frozenset[str]] = frozenset({"cross_k", "cross_v", "src_pad_mask", "src_ext"})

    def index_select(self, idx: Tensor, same_source: bool = False):
        order = idx if self.order is None else self.order.index_select(0, idx)
        rest = dataclasses.replace(self, self_k=(), self_v=(), order=None, cross_k=(), cross_v=())
        rest = DecoderState.index_select(rest, idx, same_source)
        cross_k, cross_v, group = self.cross_k, self.cross_v, self.group
        if not same_source:
            whole = _whole_groups(idx, group)  # memory rows when idx keeps whole groups
            if whole is None:  # give every row its own memory again
                whole, group = torch.div(idx, group, rounding_mode="floor"), 1
            cross_k = tuple(c.index_select(0, whole) for c in cross_k)
            cross_v = tuple(c.index_select(0, whole) for c in cross_v)
        return dataclasses.replace(
            rest, self_k=self.self_k, self_v=self.self_v, order=order,
            cross_k=cross_k, cross_v=cross_v, group=group,
        )

    def repeat_rows(self, k: int):
        n = self.src_pad_mask.size(0)
        idx = torch.arange(n, device=self.src_pad_mask.device).repeat_interleave(k)
        out = dataclasses.replace(self, cross_k=(), cross_v=()).index_select(idx)
        return dataclasses.replace(
            out, cross_k=self.cross_k, cross_v=self.cross_v, group=self.group * k
        )

    def cache(self, i: int) -> tuple[Tensor, Tensor]:
        """Layer i's self-attention keys and values (B, H, t, d), in the state's row order."""
        k, v = self.self_k[i], self.self_v[i]
        if self.order is None:
            return k, v
        return k.index_select(0, self.order), v.index_select(0, self.order)


class TransformerDecoder(OutputLayer, _EmbeddedTokens):
    """Masked self-attention + cross-attention decoder behind attendo's step interface.

    ``step`` runs one position for the whole batch with cached keys/values; ``forward`` runs
    the whole target prefix at once under a causal mask (teacher forcing); both give the same
    outputs (tested). ``info["attn"]`` is the cross-attention of layer ``attn_layer`` averaged
    over heads; ``step`` also returns ``info["attn_heads"]`` (B, L, H, S), every layer and head.

    copy (See et al. 2017 on cross-attention): the copy distribution is ``info["attn"]`` (layer
    ``attn_layer``, mean over heads) and p_gen = sigmoid(W_gen [c_i; s_i; x_i]) with c_i that
    layer's cross-attention output (the heads' contexts projected by W_o), s_i the decoder
    output (after the final LayerNorm) and x_i the input embedding (scaled, plus position).
    """

    use_attn = True

    def __init__(
        self,
        vocab_size: int,
        enc_dim: int,
        d_model: int = 256,
        heads: int = 4,
        ff_dim: int = 1024,
        layers: int = 6,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        norm: str = "pre",
        positions: str = "sinusoidal",
        max_positions: int = 512,
        tie_output: bool = False,
        attn_layer: int = -1,
        pad_id: int = 0,
        copy: bool = False,
        unk_id: int = 1,
        normalizer: str = "softmax",
    ):
        super().__init__(vocab_size, d_model, positions, max_positions, dropout, pad_id)
        if not -layers <= attn_layer < layers:
            raise ValueError(f"attn_layer {attn_layer} is not one of {layers} layers")
        self.vocab_size = vocab_size
        self.copy, self.unk_id = copy, unk_id
        self.layers = nn.ModuleList(
            [TransformerDecoderLayer(d_model, heads, ff_dim, enc_dim, dropout, attn_dropout, norm,
                                     normalizer)
             for _ in range(layers)]
        )
        self.final_norm = nn.LayerNorm(d_model) if norm == "pre" else None
        self.out = nn.Linear(d_model, vocab_size)
        if tie_output:
            self.out.weight = self.embed.weight
        if copy:
            self.W_gen = nn.Linear(3 * d_model, 1)  # p_gen from [c_i; s_i; x_i]
        self.heads, self.d_head = heads, d_model // heads
        self.attn_layer = attn_layer % layers
        # guided alignment (train.guided_alignment): (layer, head) whose cross-attention the
        # teacher-forced forward returns as info["align_attn"]; set by the trainer, not saved
        self.align_head: tuple[int, int] | None = None
        self.d_model = self.out_dim = d_model
        self.reset_parameters()

    def cross_attention_heads(self) -> tuple[int, int]:
        """(layers, heads) of the cross-attention (``Seq2Seq.attention_heads``)."""
        return len(self.layers), self.heads

    def reset_parameters(self) -> None:
        _init_transformer(self, self.d_model)

    # -- state -------------------------------------------------------------------------
    def init_state(
        self, enc: EncoderOutput, src_ext: Tensor | None = None, n_ext: int = 0
    ) -> TransformerDecoderState:
        """The state before the first step; src_ext (B, S) and n_ext are for copy only."""
        if self.copy and src_ext is None:
            raise ValueError("a copy decoder needs src_ext, the source in the extended vocabulary")
        kv = [layer.cross_attn.project_kv(enc.out) for layer in self.layers]
        cross_k = tuple(k.contiguous() for k, _ in kv)  # L x (B, H, S, d)
        cross_v = tuple(v.contiguous() for _, v in kv)
        B, H, _, d = cross_k[0].shape
        empty = (cross_k[0].new_zeros(B, H, 0, d),) * len(self.layers)  # nothing decoded yet
        if not self.copy:
            return TransformerDecoderState(empty, empty, cross_k, cross_v, enc.src_pad_mask)
        return TransformerDecoderState(
            empty, empty, cross_k, cross_v, enc.src_pad_mask, src_ext=src_ext, n_ext=n_ext
        )

    def _top(self, x: Tensor) -> Tensor:
        return x if self.final_norm is None else self.final_norm(x)

    def _p_gen(self, info: dict, ctx: Tensor, top: Tensor, emb: Tensor) -> None:
        """Put p_gen and its logit into info: ctx, top, emb (..., D) -> (...)."""
        logit = self.W_gen(torch.cat([ctx, top, emb], -1)).squeeze(-1)
        info["p_gen"] = torch.sigmoid(logit)
        info["p_gen_logit"] = logit

    # -- one step ----------------------------------------------------------------------
    def step(self, y_prev: Tensor, state: TransformerDecoderState, need_info: bool = True
             ) -> tuple[Tensor, TransformerDecoderState, dict]:
        """y_prev (B,) -> log P(y_t | ...) (B, V) (B, V + n_ext with copy), new state,
        {"attn": (B, S), "attn_heads": (B, L, H, S)} (+ "p_gen" (B,) with copy).

        need_info=False: info is empty (with copy: only what the output needs, "attn" and
        p_gen) and cross-attention takes the fused path, without per-head weights."""
        if self.copy:  # a copied source-only word is fed back as <unk>
            y_prev = y_prev.masked_fill(y_prev >= self.vocab_size, self.unk_id)
        x = emb = self._embed(y_prev.unsqueeze(1), state.t)  # (B, 1, D)
        ks, vs, ws = [], [], []
        for i, layer in enumerate(self.layers):
            weights = need_info or (self.copy and i == self.attn_layer)
            x, k, v, w, ctx = layer(
                x, state.cross_k[i], state.cross_v[i], state.src_pad_mask,
                state.self_k[i], state.self_v[i], need_weights=weights, past_order=state.order,
                group=state.group,
            )
            ks.append(k)
            vs.append(v)
            if need_info:
                ws.append(w.squeeze(2))  # (B, H, S)
            if i == self.attn_layer:
                attn_ctx, attn_w = ctx, w
        info = {}
        if need_info:
            heads = torch.stack(ws, 1)  # (B, L, H, S)
            info = {"attn": heads[:, self.attn_layer].mean(1), "attn_heads": heads}
        elif self.copy:
            info = {"attn": attn_w.squeeze(2).mean(1)}  # (B, S)
        state = dataclasses.replace(
            state, self_k=tuple(ks), self_v=tuple(vs), t=state.t + 1, order=None
        )  # L x (B, H, t+1, d)
        top = self._top(x.squeeze(1))  # (B, D)
        if self.copy:
            self._p_gen(info, attn_ctx.squeeze(1), top, emb.squeeze(1))
        return self._step_log_probs(top, info, state.src_ext, state.n_ext), state, info

    # -- teacher forcing ---------------------------------------------------------------
    def forward(self, tgt_in: Tensor, state: TransformerDecoderState) -> tuple[Tensor, dict]:
        """tgt_in (B, T) -> features (B, T, D), {"attn": (B, T, S)}: all positions at once,
        each seeing only the earlier ones (causal mask). ``state`` must be fresh. With copy,
        info also has "p_gen" (B, T) and, for the loss, "p_gen_logit" (B, T), "src_ext" (B, S)."""
        if state.t != 0:
            raise ValueError("forward() needs a fresh state from init_state (no decoded tokens)")
        if self.copy:
            tgt_in = tgt_in.masked_fill(tgt_in >= self.vocab_size, self.unk_id)
        x = emb = self._embed(tgt_in)  # (B, T, D)
        attn = align_attn = None
        # guided alignment: its layer also takes the explicit-weights path (the others keep
        # the fused SDPA kernel); row t of its (B, T, S) weights predicts tgt_out[:, t]
        align_layer, align_head = self.align_head or (None, 0)
        for i, layer in enumerate(self.layers):
            need = i == self.attn_layer or i == align_layer
            x, _, _, w, ctx = layer(x, state.cross_k[i], state.cross_v[i],
                                    state.src_pad_mask, need_weights=need)
            if i == self.attn_layer:
                attn, attn_ctx = w.mean(1), ctx  # (B, T, S), (B, T, D)
            if i == align_layer:
                align_attn = w[:, align_head]  # (B, T, S)
        top = self._top(x)
        info = {"attn": attn}
        if align_attn is not None:
            info["align_attn"] = align_attn
        if self.copy:
            self._p_gen(info, attn_ctx, top, emb)
            info["src_ext"] = state.src_ext
        return top, info
