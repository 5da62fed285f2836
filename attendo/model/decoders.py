"""Decoders behind one step interface.

Every decoder implements

    init_state(enc: EncoderOutput) -> state
    step(y_prev (B,), state) -> (log_probs (B, V), state, info)
    forward(tgt_in (B, T), state) -> (features (B, T, O), info)     # teacher forcing
    log_probs(features (N, O), info_rows) -> (N, V)

where ``info`` is a dict of per-step tensors (at least ``"attn"``: (B, S) from step,
(B, T, S) from forward) and ``state`` has ``index_select(idx)`` so beam search can reorder
and prune it without knowing which decoder it holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention, build_scorer
from .encoders import EncoderOutput


class DecoderState:
    """Base for decoder states: every tensor field is batch-first and reorders together."""

    def index_select(self, idx: Tensor):
        """Keep/reorder/duplicate batch rows: row k of the result is row idx[k] of self."""
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value.index_select(0, idx)
        return dataclasses.replace(self, **changes)


@dataclass
class RNNDecoderState(DecoderState):
    h: Tensor  # (B, L, H) hidden per layer
    c: Tensor | None  # (B, L, H) LSTM cell per layer, else None
    attn_vec: Tensor  # (B, O) previous attentional vector h~_{i-1} (input feeding)
    memory: Tensor  # (B, S, D_enc) encoder states h_j
    keys: Tensor | None  # (B, S, *) scorer-prepared keys
    src_pad_mask: Tensor  # (B, S) True at padding


class OutputLayer:
    """The output distribution shared by the decoders: a linear layer ``self.out`` over the
    decoder features. Decoders whose distribution needs more than the features (copy)
    override :meth:`token_loss` and :meth:`log_probs`."""

    out: nn.Linear

    def token_loss(
        self, features: Tensor, info: dict, target: Tensor, keep: Tensor, label_smoothing: float
    ) -> tuple[Tensor, Tensor]:
        """Summed (label-smoothed) loss and summed NLL over the positions where keep is True.

        features (B, T, O), target and keep (B, T). The output layer runs only on kept
        positions: it is the most expensive matrix product of an RNN model.
        """
        logits = self.logits(features[keep]).float()  # (N, V)
        gold = target[keep]  # (N,)
        if label_smoothing == 0:
            nll = F.cross_entropy(logits, gold, reduction="sum")
            return nll, nll
        lp = torch.log_softmax(logits, dim=-1)  # once, for both the NLL and the smoothing term
        nll = -lp.gather(1, gold.unsqueeze(1)).sum()
        loss = (1 - label_smoothing) * nll - label_smoothing * lp.mean(-1).sum()
        return loss, nll

    def log_probs(self, features: Tensor, info: dict | None = None) -> Tensor:
        """features (..., O) -> log-probabilities over the target vocabulary (..., V)."""
        return torch.log_softmax(self.out(features), dim=-1)

    def logits(self, features: Tensor) -> Tensor:
        return self.out(features)


class RNNDecoder(OutputLayer, nn.Module):
    """Recurrent decoder with optional attention (Bahdanau et al. 2015; Luong et al. 2015).

    attention == "none": P(y_i | ...) = softmax(W s_i), the plain encoder-decoder whose
    only view of the source is the bridged final encoder state.
    Otherwise e_ij = f(query, h_j), a_i = softmax(e_i), c_i = sum_j a_ij h_j and
    h~_i = tanh(W_c [c_i; s_i]); P(y_i | ...) = softmax(W_o h~_i).

    style "bahdanau": query = s_{i-1}; c_i is part of the RNN input for step i.
    style "luong": query = s_i (the RNN runs first). With input feeding (Luong sec. 3.3)
    h~_{i-1} is concatenated to the RNN input in either style.
    """

    def __init__(
        self,
        vocab_size: int,
        emb_dim: int,
        hidden: int,
        enc_dim: int,
        enc_final_dim: int,
        layers: int = 1,
        rnn_type: str = "gru",
        attention: str = "additive",
        style: str = "bahdanau",
        input_feeding: bool = True,
        bridge: bool = True,
        out_dim: int | None = None,
        tie_output: bool = False,
        dropout: float = 0.0,
        location_max_len: int = 256,
        pad_id: int = 0,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.layers = layers
        self.rnn_type = rnn_type
        self.use_attn = attention != "none"
        self.style = style
        self.input_feeding = input_feeding and self.use_attn
        self.out_dim = out_dim or hidden
        if not self.use_attn and self.out_dim != hidden:
            self.out_dim = hidden
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        rnn_in = emb_dim
        if self.use_attn and style == "bahdanau":
            rnn_in += enc_dim
        if self.input_feeding:
            rnn_in += self.out_dim
        cell = nn.LSTMCell if rnn_type == "lstm" else nn.GRUCell
        self.cells = nn.ModuleList(
            [cell(rnn_in if i == 0 else hidden, hidden) for i in range(layers)]
        )
        self.bridge_h = nn.Linear(enc_final_dim, hidden) if bridge else None
        self.bridge_c = nn.Linear(enc_final_dim, hidden) if bridge and rnn_type == "lstm" else None
        if self.use_attn:
            self.attention = Attention(build_scorer(attention, hidden, enc_dim, location_max_len))
            self.W_c = nn.Linear(enc_dim + hidden, self.out_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(self.out_dim, vocab_size)
        if tie_output:
            if self.out_dim != emb_dim:
                raise ValueError(f"tie_output needs out_dim ({self.out_dim}) == emb_dim ({emb_dim})")
            self.out.weight = self.embed.weight

    # -- state -------------------------------------------------------------------------
    def init_state(self, enc: EncoderOutput) -> RNNDecoderState:
        B = enc.out.size(0)
        zeros = enc.out.new_zeros(B, self.layers, self.hidden)
        h, c = zeros, (zeros if self.rnn_type == "lstm" else None)
        if self.bridge_h is not None and enc.final_h is not None:
            h = torch.tanh(self.bridge_h(self._match_layers(enc.final_h)))
            if self.bridge_c is not None and enc.final_c is not None:
                c = torch.tanh(self.bridge_c(self._match_layers(enc.final_c)))
        return RNNDecoderState(
            h=h,
            c=c,
            attn_vec=enc.out.new_zeros(B, self.out_dim),
            memory=enc.out,
            keys=self.attention.prepare(enc.out) if self.use_attn else None,
            src_pad_mask=enc.src_pad_mask,
        )

    def _match_layers(self, final: Tensor) -> Tensor:
        """(B, L_enc, D) -> (B, L_dec, D): top encoder layer for any extra decoder layers."""
        L = final.size(1)
        if L == self.layers:
            return final
        if L > self.layers:
            return final[:, L - self.layers :]
        return torch.cat([final, final[:, -1:].expand(-1, self.layers - L, -1)], dim=1)

    # -- one step ----------------------------------------------------------------------
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
        ctx, a = self.attention(query.unsqueeze(1), state.keys, state.memory, state.src_pad_mask)
        return ctx.squeeze(1), a.squeeze(1)

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
        if self.use_attn:
            if self.style == "luong":
                ctx, a = self._attend(s, state)
            vec = torch.tanh(self.W_c(torch.cat([ctx, s], -1)))  # (B, O)
            info["attn"] = a
        else:
            vec = s
        state = dataclasses.replace(state, h=h, c=c, attn_vec=vec)
        return vec, state, info

    def step(self, y_prev: Tensor, state: RNNDecoderState) -> tuple[Tensor, RNNDecoderState, dict]:
        """y_prev (B,) -> log P(y_i | ...) (B, V), new state, {"attn": (B, S)}."""
        emb = self.dropout(self.embed(y_prev))  # (B, E)
        vec, state, info = self._advance(emb, state)
        return self.log_probs(self.dropout(vec), info), state, info

    # -- teacher forcing ---------------------------------------------------------------
    def forward(self, tgt_in: Tensor, state: RNNDecoderState) -> tuple[Tensor, dict]:
        """tgt_in (B, T) -> features (B, T, O), {"attn": (B, T, S)} (the same as T steps)."""
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E)
        vecs, attns = [], []
        # unbind once: slicing emb[:, t] per step would make backward allocate T full-size grads
        for emb_t in emb.unbind(1):
            vec, state, info = self._advance(emb_t, state)
            vecs.append(vec)
            if "attn" in info:
                attns.append(info["attn"])
        out = {"attn": torch.stack(attns, 1)} if attns else {}
        return self.dropout(torch.stack(vecs, 1)), out  # one dropout mask draw for all steps
