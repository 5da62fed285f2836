"""Self-attention: the Transformer encoder and decoder (Vaswani et al. 2017).

Every token is a query over every token: Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
(sec. 3.2.1), computed by ``heads`` heads with their own projections, concatenated and
projected by W_o (sec. 3.2.2). A layer is self-attention (+ cross-attention over the encoder
states in the decoder) and a position-wise feed-forward network, each wrapped in dropout,
a residual connection and LayerNorm (sec. 3.1), either after the residual ("post", the paper)
or before the sub-layer ("pre", Wang et al. 2019, which trains without a careful warm-up).

Shapes: B batch, T target length, S source length, D = d_model, H heads, d = D / H,
L layers; ``src_pad_mask`` (B, S) is True at padding. The parts live beside this file:
:mod:`.multihead`, :mod:`.positions` and the decoding fast paths in :mod:`.transformer_fast`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .copy import check_src_ext, p_gen_info, p_gen_layer, unk_extended
from .dropout import Dropout
from .interfaces import Decoder, Encoder, EncoderOutput, padding_mask
from .multihead import MultiHeadAttention
from .positions import LearnedPositions, build_positions, mean_pool
from .transformer_fast import TransformerDecoderState, extend_cache


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
        self.cross_attn = MultiHeadAttention(d_model, heads, attn_dropout, kv_dim=enc_dim,
                                             normalizer=normalizer)
        self.ff = FeedForward(d_model, ff_dim, dropout)
        self.norm_self, self.norm_cross, self.norm_ff = (nn.LayerNorm(d_model) for _ in range(3))

    def forward(self, x: Tensor, cross_k: Tensor, cross_v: Tensor, src_pad_mask: Tensor,
                past_k: Tensor | None = None, past_v: Tensor | None = None,
                need_weights: bool = False, past_order: Tensor | None = None, group: int = 1
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """x (B, T, D); cross_k, cross_v (B, H, S, d) of the encoder states. past_k, past_v
        None: teacher forcing (causal self-attention over x); else (B', H, t, d) the cache of
        the t earlier positions, reordered by past_order (B,) (see transformer_fast), group:
        see MultiHeadAttention.attend. Returns x (B, T, D), self-attention keys and values
        incl. x's (B, H, t+T, d), cross-attention weights (B, H, T, S) when need_weights, and
        the cross-attention sub-layer's output (B, T, D), which copy's p_gen reads."""
        q, k, v = self.self_attn.project_qkv(self._in(x, self.norm_self))  # (B, H, T, d) each
        if past_k is not None:  # (B, H, t+T, d)
            k, v = extend_cache(past_k, k, past_order), extend_cache(past_v, v, past_order)
        y, _ = self.self_attn.attend(q, k, v, causal=past_k is None)
        x = self._out(x, y, self.norm_self)
        q = self.cross_attn.project_q(self._in(x, self.norm_cross))
        ctx, w = self.cross_attn.attend(q, cross_k, cross_v, src_pad_mask,
                                        need_weights=need_weights, group=group)
        x = self._out(x, ctx, self.norm_cross)
        x = self._out(x, self.ff(self._in(x, self.norm_ff)), self.norm_ff)
        return x, k, v, w, ctx


class _EmbeddedTokens(nn.Module):
    """Token embeddings scaled by sqrt(D) (sec. 3.4) plus positions, then dropout; and the
    initialisation both stacks share."""

    def __init__(self, vocab_size: int, d_model: int, positions: str, max_positions: int,
                 dropout: float, pad_id: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.pos = build_positions(positions, d_model, max_positions)
        self.scale = math.sqrt(d_model)
        self.emb_dropout = Dropout(dropout)
        self.d_model = self.out_dim = d_model

    def _embed(self, ids: Tensor, offset: int = 0) -> Tensor:
        """ids (B, T) -> (B, T, D) for positions offset .. offset+T-1."""
        x = self.embed(ids) * self.scale + self.pos(ids.size(1), offset)
        return self.emb_dropout(x)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier-uniform matrices, zero biases, N(0, D^-1/2) embeddings with a zero padding row
        (fairseq's Transformer initialisation; embeddings are scaled by sqrt(D) on use)."""
        std = self.d_model**-0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, LearnedPositions):
                nn.init.normal_(m.weight, std=std)
        for m in self.modules():  # after the Linears: a tied output layer shares this weight
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()


class TransformerEncoder(Encoder, _EmbeddedTokens):
    """Embeddings + positions, N self-attention layers (+ a final LayerNorm when pre-norm).

    Returns an :class:`EncoderOutput` whose ``out`` is zero at padding and whose ``final_h``
    is the mean of the non-padding states (B, 1, D), so an RNN decoder with ``bridge`` can
    start from it; ``final_c`` is None.
    """

    def __init__(self, vocab_size: int, d_model: int = 256, heads: int = 4, ff_dim: int = 1024,
                 layers: int = 6, dropout: float = 0.1, attn_dropout: float = 0.1,
                 norm: str = "pre", positions: str = "sinusoidal", max_positions: int = 512,
                 pad_id: int = 0, normalizer: str = "softmax"):
        super().__init__(vocab_size, d_model, positions, max_positions, dropout, pad_id)
        self.layers = nn.ModuleList([
            TransformerEncoderLayer(d_model, heads, ff_dim, dropout, attn_dropout, norm, normalizer)
            for _ in range(layers)])
        self.final_norm = nn.LayerNorm(d_model) if norm == "pre" else None
        self.reset_parameters()

    def _encode(self, src: Tensor, src_lens: Tensor, need_weights: bool
                ) -> tuple[EncoderOutput, list[Tensor | None]]:
        src_pad_mask = padding_mask(src_lens, src.size(1), src.device)
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


class TransformerDecoder(Decoder, _EmbeddedTokens):
    """Masked self-attention + cross-attention decoder behind attendo's step interface.

    ``step`` runs one position with cached keys/values; ``forward`` the whole target prefix
    under a causal mask (teacher forcing); both give the same outputs (tested).
    ``info["attn"]`` is the cross-attention of layer ``attn_layer`` averaged over heads.

    copy: the copy distribution is ``info["attn"]`` and p_gen = sigmoid(W_gen [c_i; s_i; x_i])
    with c_i that layer's cross-attention output (after W_o), s_i the decoder output (after
    the final LayerNorm) and x_i the input embedding (scaled, plus position).
    """

    def __init__(self, vocab_size: int, enc_dim: int, d_model: int = 256, heads: int = 4,
                 ff_dim: int = 1024, layers: int = 6, dropout: float = 0.1,
                 attn_dropout: float = 0.1, norm: str = "pre", positions: str = "sinusoidal",
                 max_positions: int = 512, tie_output: bool = False, attn_layer: int = -1,
                 pad_id: int = 0, copy: bool = False, unk_id: int = 1,
                 normalizer: str = "softmax"):
        super().__init__(vocab_size, d_model, positions, max_positions, dropout, pad_id)
        self.vocab_size, self.copy, self.unk_id = vocab_size, copy, unk_id
        self.layers = nn.ModuleList([
            TransformerDecoderLayer(d_model, heads, ff_dim, enc_dim, dropout, attn_dropout, norm,
                                    normalizer) for _ in range(layers)])
        self.final_norm = nn.LayerNorm(d_model) if norm == "pre" else None
        self.out = nn.Linear(d_model, vocab_size)
        if tie_output:
            self.out.weight = self.embed.weight
        if copy:
            self.W_gen = p_gen_layer(d_model, d_model, d_model)  # p_gen from [c_i; s_i; x_i]
        self.heads, self.d_head = heads, d_model // heads
        self.attn_layer = attn_layer % layers
        # guided alignment (train.guided_alignment): (layer, head) whose cross-attention the
        # teacher-forced forward returns as info["align_attn"]; set by the trainer, not saved
        self.align_head: tuple[int, int] | None = None
        self.reset_parameters()

    def cross_attention_heads(self) -> tuple[int, int]:
        return len(self.layers), self.heads

    def init_state(self, enc: EncoderOutput, src_ext: Tensor | None = None, n_ext: int = 0
                   ) -> TransformerDecoderState:
        """The state before the first step; src_ext (B, S) and n_ext are for copy only."""
        if self.copy:
            check_src_ext(src_ext)
        kv = [layer.cross_attn.project_kv(enc.out) for layer in self.layers]
        cross_k = tuple(k.contiguous() for k, _ in kv)  # L x (B, H, S, d)
        cross_v = tuple(v.contiguous() for _, v in kv)
        B, H, _, d = cross_k[0].shape
        empty = (cross_k[0].new_zeros(B, H, 0, d),) * len(self.layers)  # nothing decoded yet
        return TransformerDecoderState(empty, empty, cross_k, cross_v, enc.src_pad_mask,
                                       src_ext=src_ext if self.copy else None,
                                       n_ext=n_ext if self.copy else 0)

    def top(self, x: Tensor) -> Tensor:
        """The decoder output s_i (what the output layer reads) from the last layer's x."""
        return x if self.final_norm is None else self.final_norm(x)

    def step(self, y_prev: Tensor, state: TransformerDecoderState, need_info: bool = True
             ) -> tuple[Tensor, TransformerDecoderState, dict]:
        """y_prev (B,) -> log P(y_t | ...) (B, V) (B, V + n_ext with copy), new state,
        {"attn": (B, S), "attn_heads": (B, L, H, S)} (+ "p_gen" (B,) with copy). need_info=False:
        info is empty (with copy: "attn" and p_gen) and cross-attention takes the fused path."""
        if self.copy:  # a copied source-only word is fed back as <unk>
            y_prev = unk_extended(y_prev, self.vocab_size, self.unk_id)
        x = emb = self._embed(y_prev.unsqueeze(1), state.t)  # (B, 1, D)
        ks, vs, ws = [], [], []
        for i, layer in enumerate(self.layers):
            weights = need_info or (self.copy and i == self.attn_layer)
            x, k, v, w, ctx = layer(x, state.cross_k[i], state.cross_v[i], state.src_pad_mask,
                                    state.self_k[i], state.self_v[i], need_weights=weights,
                                    past_order=state.order, group=state.group)
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
        state = dataclasses.replace(state, self_k=tuple(ks), self_v=tuple(vs), t=state.t + 1,
                                    order=None)  # L x (B, H, t+1, d)
        top = self.top(x.squeeze(1))  # (B, D)
        if self.copy:
            info.update(p_gen_info(self.W_gen, attn_ctx.squeeze(1), top, emb.squeeze(1)))
        return self._step_log_probs(top, info, state.src_ext, state.n_ext), state, info

    def forward(self, tgt_in: Tensor, state: TransformerDecoderState) -> tuple[Tensor, dict]:
        """tgt_in (B, T) -> features (B, T, D), {"attn": (B, T, S)}: all positions at once,
        each seeing only the earlier ones (causal mask). ``state`` must be fresh. With copy,
        info also has "p_gen" (B, T) and, for the loss, "p_gen_logit" (B, T), "src_ext" (B, S)."""
        if state.t != 0:
            raise ValueError("forward() needs a fresh state from init_state (no decoded tokens)")
        if self.copy:
            tgt_in = unk_extended(tgt_in, self.vocab_size, self.unk_id)
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
        top = self.top(x)
        info = {"attn": attn}
        if align_attn is not None:
            info["align_attn"] = align_attn
        if self.copy:
            info.update(p_gen_info(self.W_gen, attn_ctx, top, emb))
            info["src_ext"] = state.src_ext
        return top, info
