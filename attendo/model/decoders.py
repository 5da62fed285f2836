"""The recurrent decoder (Bahdanau et al. 2015; Luong et al. 2015) behind the step interface
of :mod:`attendo.model.interfaces`. Coverage: :mod:`.coverage`; copy: :mod:`.copy`; sparse and
local attention: :mod:`.attention` (the state counts the target step ``t``, on which local-m
centres its window).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import coverage as cov_
from .attention import AdditiveScorer, Attention, build_scorer
from .copy import TINY, check_src_ext, p_gen_info, p_gen_layer, unk_extended
from .dropout import Dropout
from .fused_rnn import fused_decode
from .interfaces import Decoder, DecoderState, EncoderOutput, OutputLayer

__all__ = ["RNNDecoder", "RNNDecoderState", "OutputLayer", "TINY"]  # TINY, OutputLayer: bench/


@dataclass
class RNNDecoderState(DecoderState):
    h: Tensor  # (B, L, H) hidden per layer
    c: Tensor | None  # (B, L, H) LSTM cell per layer, else None
    attn_vec: Tensor  # (B, O) previous attentional vector h~_{i-1} (input feeding)
    memory: Tensor  # (B, S, D_enc) encoder states h_j
    keys: Tensor | None  # (B, S, *) scorer-prepared keys
    src_pad_mask: Tensor  # (B, S) True at padding
    cov: Tensor | None = None  # (B, S) coverage sum_{i'<i} a_i' (model.coverage), else None
    src_ext: Tensor | None = None  # (B, S) source ids in the extended vocabulary (model.copy)
    n_ext: int = 0  # extra (source-only) words in the extended vocabulary of this batch
    t: int = 0  # target steps taken so far (local-m attention centres its window on it)
    peak: Tensor | None = None  # (B,) the last step's attention peak (local: previous), else None

    PER_SOURCE: ClassVar[frozenset[str]] = frozenset({"memory", "keys", "src_pad_mask", "src_ext"})


def to_autocast_dtype(x: Tensor) -> Tensor:
    """x in autocast's lower precision when autocast is on (else x itself). The recurrent
    decoder casts what every step reads (encoder states, embeddings) once per batch, so that
    autocast does not cast it again at every step, forward and backward."""
    device = x.device.type
    return x.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else x


class RNNDecoder(Decoder):
    """Recurrent decoder with optional attention (Bahdanau et al. 2015; Luong et al. 2015).

    attention == "none": P(y_i | ...) = softmax(W s_i), the plain encoder-decoder whose
    only view of the source is the bridged final encoder state.
    Otherwise e_ij = f(query, h_j), a_i = softmax(e_i), c_i = sum_j a_ij h_j and
    h~_i = tanh(W_c [c_i; s_i]); P(y_i | ...) = softmax(W_o h~_i).

    style "bahdanau": query = s_{i-1}; c_i is part of the RNN input for step i.
    style "luong": query = s_i (the RNN runs first). With input feeding (Luong sec. 3.3)
    h~_{i-1} is concatenated to the RNN input in either style.

    coverage: the scorer also sees cov_i = sum_{i'<i} a_i' (``info["coverage"]``: cov_i, before
    step i's attention). copy: the pointer-generator output over V + n_ext with
    p_gen = sigmoid(W_gen [c_i; s_i; x_i]) (``info["p_gen"]``), x_i the embedded y_{i-1} and
    s_i the top RNN output (See et al. 2017, eq. 8); an extended ``y_prev`` is fed back as <unk>.
    The settings come validated by ``ModelConfig``.
    """

    def __init__(self, vocab_size: int, emb_dim: int, hidden: int, enc_dim: int,
                 enc_final_dim: int, layers: int = 1, rnn_type: str = "gru",
                 attention: str = "additive", style: str = "bahdanau", input_feeding: bool = True,
                 bridge: bool = True, out_dim: int | None = None, tie_output: bool = False,
                 dropout: float = 0.0, location_max_len: int = 256, pad_id: int = 0,
                 coverage: bool = False, copy: bool = False, unk_id: int = 1,
                 normalizer: str = "softmax", window: int = 0, local: str = "monotonic",
                 context_gate: bool = False, coverage_window: int = 1):
        super().__init__()
        self.vocab_size = vocab_size
        self.coverage, self.copy, self.unk_id = coverage, copy, unk_id
        self.hidden, self.layers, self.rnn_type, self.style = hidden, layers, rnn_type, style
        self.use_attn = attention != "none"
        self.input_feeding = input_feeding and self.use_attn
        self.out_dim = (out_dim or hidden) if self.use_attn else hidden
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        rnn_in = emb_dim
        if self.use_attn and style == "bahdanau":
            rnn_in += enc_dim
        if self.input_feeding:
            rnn_in += self.out_dim
        cell = nn.LSTMCell if rnn_type == "lstm" else nn.GRUCell
        self.cells = nn.ModuleList([cell(rnn_in if i == 0 else hidden, hidden)
                                    for i in range(layers)])
        self.bridge_h = nn.Linear(enc_final_dim, hidden) if bridge else None
        self.bridge_c = nn.Linear(enc_final_dim, hidden) if bridge and rnn_type == "lstm" else None
        if self.use_attn:
            self.attention = Attention(
                build_scorer(attention, hidden, enc_dim, location_max_len, coverage=coverage,
                             coverage_window=coverage_window),
                normalizer=normalizer, window=window, local=local, query_dim=hidden,
            )
            self.W_c = nn.Linear(enc_dim + hidden, self.out_dim, bias=False)
        # Show, Attend and Tell's beta = sigmoid(w . query + b), a scalar gate on the context
        self.gate = nn.Linear(hidden, 1) if context_gate and self.use_attn else None
        if copy:
            self.W_gen = p_gen_layer(enc_dim, hidden, emb_dim)
        self.dropout = Dropout(dropout)
        self.out = nn.Linear(self.out_dim, vocab_size)
        if tie_output:  # the config checks out_dim == emb_dim
            self.out.weight = self.embed.weight

    def init_state(self, enc: EncoderOutput, src_ext: Tensor | None = None, n_ext: int = 0
                   ) -> RNNDecoderState:
        """The state before the first step; src_ext (B, S) and n_ext are for copy only."""
        B = enc.src_pad_mask.size(0)
        if self.copy:
            check_src_ext(src_ext)
        zeros = enc.out.new_zeros(B, self.layers, self.hidden)
        h, c = zeros, (zeros if self.rnn_type == "lstm" else None)
        if self.bridge_h is not None and enc.final_h is not None:
            h = torch.tanh(self.bridge_h(self._match_layers(enc.final_h)))
            if self.bridge_c is not None and enc.final_c is not None:
                c = torch.tanh(self.bridge_c(self._match_layers(enc.final_c)))
        return RNNDecoderState(
            h=h, c=c, attn_vec=enc.out.new_zeros(B, self.out_dim),
            memory=to_autocast_dtype(enc.out),  # read by every step's weighted sum
            keys=self.attention.prepare(enc.out) if self.use_attn else None,
            src_pad_mask=enc.src_pad_mask,
            cov=cov_.initial_coverage(enc.out, enc.src_pad_mask) if self.coverage else None,
            src_ext=src_ext if self.copy else None, n_ext=n_ext if self.copy else 0,
            peak=(enc.src_pad_mask.new_full((B,), -1, dtype=torch.long)  # local: previous
                  if self.use_attn and self.attention.local == "previous" else None))

    def _match_layers(self, final: Tensor) -> Tensor:
        """(B, L_enc, D) -> (B, L_dec, D): top encoder layer for any extra decoder layers."""
        L = final.size(1)
        if L == self.layers:
            return final
        if L > self.layers:
            return final[:, L - self.layers :]
        return torch.cat([final, final[:, -1:].expand(-1, self.layers - L, -1)], dim=1)

    def _rnn(self, x: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """x (B, In); h, c (B, L, H) -> top output (B, H), new h, new c."""
        hs, cs = [], []
        h_layers = h.unbind(1)
        c_layers = c.unbind(1) if c is not None else None
        for i, cell in enumerate(self.cells):
            if c_layers is None:
                hi = cell(x, h_layers[i])
            else:
                hi, ci = cell(x, (h_layers[i], c_layers[i]))
                cs.append(ci)
            hs.append(hi)
            x = self.dropout(hi) if i + 1 < self.layers else hi
        return x, torch.stack(hs, 1), (torch.stack(cs, 1) if c is not None else None)

    def _attend(self, query: Tensor, state: RNNDecoderState) -> tuple[Tensor, Tensor]:
        """query (B, H) -> context (B, D_enc), weights (B, S)."""
        cov = None if state.cov is None else state.cov.unsqueeze(1)  # (B, 1, S)
        ctx, a = self.attention(query.unsqueeze(1), state.keys, state.memory, state.src_pad_mask,
                                cov, step=state.t, peak=state.peak)
        ctx = ctx.squeeze(1)
        if self.gate is not None:
            ctx = torch.sigmoid(self.gate(query)) * ctx  # (B, 1) * (B, D_enc)
        return ctx, a.squeeze(1)

    def _advance(self, emb: Tensor, state: RNNDecoderState) -> tuple[Tensor, RNNDecoderState, dict]:
        """One decoder step from embedded y_{i-1} (B, E): attentional vector (B, O) before
        dropout, new state, info."""
        parts = [emb]
        info: dict[str, Tensor] = {}
        if self.use_attn and self.style == "bahdanau":
            ctx, a = self._attend(state.h[:, -1], state)
            parts.append(ctx)
        if self.input_feeding:
            parts.append(state.attn_vec)
        s, h, c = self._rnn(torch.cat(parts, -1), state.h, state.c)
        if not self.use_attn:
            return s, dataclasses.replace(state, h=h, c=c, attn_vec=s, t=state.t + 1), info
        if self.style == "luong":
            ctx, a = self._attend(s, state)
        vec = torch.tanh(self.W_c(torch.cat([ctx, s], -1)))  # (B, O)
        info["attn"] = a
        cov = cov_.advance(state.cov, a, info) if self.coverage else state.cov
        if self.copy:
            info.update(p_gen_info(self.W_gen, ctx, s, emb))  # (B,)
        peak = None if state.peak is None else a.argmax(-1)  # (B,)
        state = dataclasses.replace(state, h=h, c=c, attn_vec=vec, cov=cov, t=state.t + 1,
                                    peak=peak)
        return vec, state, info

    def step(self, y_prev: Tensor, state: RNNDecoderState, need_info: bool = True
             ) -> tuple[Tensor, RNNDecoderState, dict]:
        """y_prev (B,) -> log P(y_i | ...) (B, V) (B, V + n_ext with copy), new state,
        {"attn": (B, S)} (+ "coverage" (B, S), "p_gen" (B,)). The attention is part of the
        step, so info costs nothing extra and need_info is ignored."""
        if self.copy:  # a copied source-only word is fed back as <unk>
            y_prev = unk_extended(y_prev, self.vocab_size, self.unk_id)
        emb = to_autocast_dtype(self.dropout(self.embed(y_prev)))  # (B, E)
        vec, state, info = self._advance(emb, state)
        lp = self._step_log_probs(self.dropout(vec), info, state.src_ext, state.n_ext)
        return lp, state, info

    fused: bool = True  # use attendo.model.fused_rnn where it applies (set False to compare)

    def fusable(self) -> bool:
        """Whether :meth:`forward` can run as one fused autograd node (:mod:`.fused_rnn`): one
        GRU layer, Luong-style global additive attention with softmax, no coverage."""
        return (self.fused and self.rnn_type == "gru" and self.layers == 1 and self.use_attn
                and self.style == "luong" and type(self.attention.scorer) is AdditiveScorer
                and self.attention.normalizer == "softmax" and not self.attention.window
                and self.attention.scorer.w_c is None and not self.coverage
                and self.W_c.bias is None and self.gate is None)

    def forward(self, tgt_in: Tensor, state: RNNDecoderState) -> tuple[Tensor, dict]:
        """tgt_in (B, T) -> features (B, T, O), {"attn": (B, T, S)} (+ "coverage" (B, T, S),
        "p_gen", "p_gen_logit" (B, T), "src_ext" (B, S)): the same as T steps."""
        if self.copy:
            tgt_in = unk_extended(tgt_in, self.vocab_size, self.unk_id)
        emb = to_autocast_dtype(self.dropout(self.embed(tgt_in)))  # (B, T, E)
        if self.fusable():
            vecs_, attn, ch = fused_decode(
                emb, state.h[:, 0], state.memory, state.keys, state.src_pad_mask, self.cells[0],
                self.attention.scorer.W_1.weight, self.attention.scorer.v_a.weight[0],
                self.W_c.weight, self.input_feeding, want_ch=self.copy)
            info = {"attn": attn}
            if self.copy:  # p_gen for all steps at once
                info.update(p_gen_info(self.W_gen, ch, emb), src_ext=state.src_ext)  # (B, T)
            return self.dropout(vecs_), info
        vecs: list[Tensor] = []
        infos: dict[str, list[Tensor]] = {}
        # unbind once: slicing emb[:, t] per step would make backward allocate T full-size grads
        for emb_t in emb.unbind(1):
            vec, state, info = self._advance(emb_t, state)
            vecs.append(vec)
            for name, value in info.items():
                infos.setdefault(name, []).append(value)
        out = {name: torch.stack(values, 1) for name, values in infos.items()}
        if self.copy:
            out["src_ext"] = state.src_ext
        return self.dropout(torch.stack(vecs, 1)), out  # one dropout mask draw for all steps
