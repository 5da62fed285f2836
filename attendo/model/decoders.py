"""Decoders behind one step interface.

Every decoder implements

    init_state(enc: EncoderOutput) -> state
    step(y_prev (B,), state, need_info=True) -> (log_probs (B, V), state, info)
    forward(tgt_in (B, T), state) -> (features (B, T, O), info)     # teacher forcing
    log_probs(features (N, O), info_rows) -> (N, V)

where ``info`` is a dict of per-step tensors (at least ``"attn"``: (B, S) from step,
(B, T, S) from forward; ``step(..., need_info=False)`` may leave out what the output does
not need, which search asks for when nobody reads info) and ``state`` has
``index_select(idx)`` so beam search can reorder and prune it without knowing which
decoder it holds.

Coverage (``model.coverage``, RNN decoder): the state carries cov_i = sum_{i'<i} a_i' (B, S),
which the scorer sees (see :mod:`attendo.model.attention`); ``info["coverage"]`` is cov_i,
the coverage *before* step i's attention is added.

Copy (``model.copy``, See et al. 2017, sec. 2.2): the decoder also gives
p_gen = sigmoid(w_c . c_i + w_s . s_i + w_x . x_i + b) (``info["p_gen"]``), and the output is
P(w) = p_gen P_vocab(w) + (1 - p_gen) sum_{j: x_j = w} a_ij over the target vocabulary
extended with the sentence's source-only words (ids V, V+1, ...; ``src_ext`` in the state
and the batch). ``step`` then returns log-probabilities over V + n_ext and maps an extended
``y_prev`` back to <unk> before embedding it. ``forward`` also returns ``"p_gen_logit"``
(B, T) and ``"src_ext"`` (B, S), which :meth:`OutputLayer.token_loss` and
:meth:`OutputLayer.log_probs` need. The mixture is computed in log space, so a saturated
p_gen (0 or 1) gives no NaN.

Sparse and local attention (``model.attention_normalizer``, ``model.attention_window`` and
``model.local``, RNN decoder): see :mod:`attendo.model.attention`. The state counts the target
step ``t`` (local-m centres its window on it). Either turns the fused teacher-forced pass off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AdditiveScorer, Attention, build_scorer
from .dropout import Dropout
from .encoders import EncoderOutput
from .fused_rnn import fused_decode
from .loss import smoothed_cross_entropy

# log(0) stand-in where a gradient must flow: log(TINY) = -87.3 (float32's smallest normal)
TINY = torch.finfo(torch.float32).tiny


class DecoderState:
    """Base for decoder states: every tensor field (or tuple of tensors, e.g. one per layer)
    is batch-first and reorders together.

    ``PER_SOURCE`` names the fields that depend only on the source sentence of a row (encoder
    memory and what is precomputed from it). Beam search reorders rows within each
    sentence's beam at every step; it passes ``same_source=True`` so those fields, identical
    across a sentence's beams, are not copied again (for a Transformer they are the
    cross-attention keys and values of every layer: the largest part of the state).
    """

    PER_SOURCE: ClassVar[frozenset[str]] = frozenset()

    def index_select(self, idx: Tensor, same_source: bool = False):
        """Keep/reorder/duplicate batch rows: row k of the result is row idx[k] of self.

        same_source: the caller promises that row idx[k] has the same source as row k (a
        reorder within each sentence's beam), so PER_SOURCE fields are kept as they are.
        """
        changes = {}
        for f in dataclasses.fields(self):
            if same_source and f.name in self.PER_SOURCE:
                continue
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value.index_select(0, idx)
            elif isinstance(value, tuple) and value and isinstance(value[0], Tensor):
                changes[f.name] = tuple(v.index_select(0, idx) for v in value)  # per layer
        return dataclasses.replace(self, **changes)

    def repeat_rows(self, k: int):
        """Each row k times in a row (row b becomes rows b*k ... b*k + k-1): beam search's
        expansion of every sentence into its beam. A state may keep what depends only on
        the source once per group of k rows (the Transformer's cross-attention memory)."""
        first = next(
            v for v in (getattr(self, f.name) for f in dataclasses.fields(self))
            if isinstance(v, Tensor)
        )
        return self.index_select(torch.arange(first.size(0), device=first.device).repeat_interleave(k))


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

    PER_SOURCE: ClassVar[frozenset[str]] = frozenset({"memory", "keys", "src_pad_mask", "src_ext"})


def copy_log_probs(
    lp_vocab: Tensor, p_gen_logit: Tensor, attn: Tensor, src_ext: Tensor, n_ext: int
) -> Tensor:
    """The pointer-generator distribution in log space (See et al. 2017, eq. 9).

    log P(w) = log(p_gen P_vocab(w) + (1 - p_gen) sum_{j: src_ext_j = w} a_j) over the extended
    vocabulary V + n_ext. lp_vocab (..., V), p_gen_logit (...), attn and src_ext (..., S)
    -> (..., V + n_ext). Words neither in the vocabulary nor in the source get exactly -inf.
    log p_gen and log(1 - p_gen) come from logsigmoid of the logit, so they stay finite when
    p_gen saturates. For decoding and inspection; the training loss uses
    :meth:`OutputLayer.token_loss`, whose gradients stay finite everywhere.
    """
    width = lp_vocab.size(-1) + n_ext
    p_gen_logit, attn = p_gen_logit.float(), attn.float()  # bf16 under autocast: sum in fp32
    gen = F.logsigmoid(p_gen_logit).unsqueeze(-1) + lp_vocab  # (..., V)
    gen = F.pad(gen, (0, n_ext), value=float("-inf"))  # (..., V + n_ext)
    mass = attn.new_zeros(*attn.shape[:-1], width).scatter_add_(-1, src_ext, attn)
    copy = F.logsigmoid(-p_gen_logit).unsqueeze(-1) + mass.log()  # -inf where no mass
    return torch.logaddexp(gen, copy)


def to_autocast_dtype(x: Tensor) -> Tensor:
    """x in autocast's lower precision when autocast is on (else x itself). The recurrent
    decoder casts what every step reads (encoder states, embeddings) once per batch, so that
    autocast does not cast it again at every step, forward and backward."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return x
    return x.to(torch.get_autocast_dtype(device))


def coverage_loss(attn: Tensor, cov: Tensor, keep: Tensor) -> Tensor:
    """sum_i sum_j min(a_ij, cov_ij) over the target positions where keep is True
    (See et al. 2017, eq. 12). attn, cov (B, T, S); keep (B, T) -> scalar."""
    return torch.minimum(attn, cov).sum(-1)[keep].sum()


class OutputLayer:
    """The output distribution shared by the decoders: a linear layer ``self.out`` over the
    decoder features, mixed with the copy distribution when ``self.copy`` (the mixture needs
    ``info`` from :meth:`forward`: attention, p_gen logit and ``src_ext``)."""

    out: nn.Linear
    vocab_size: int
    copy: bool = False

    def token_loss(
        self, features: Tensor, info: dict, target: Tensor, keep: Tensor, label_smoothing: float
    ) -> tuple[Tensor, Tensor]:
        """Summed (label-smoothed) loss and summed NLL over the positions where keep is True.

        features (B, T, O), target and keep (B, T). The output layer runs only on kept
        positions: it is the most expensive matrix product of an RNN model.
        """
        if self.copy:
            return self._copy_token_loss(features, info, target, keep, label_smoothing)
        logits = self.logits(features[keep])  # (N, V)
        return smoothed_cross_entropy(logits, target[keep], label_smoothing)

    def _copy_token_loss(
        self, features: Tensor, info: dict, target: Tensor, keep: Tensor, label_smoothing: float
    ) -> tuple[Tensor, Tensor]:
        """token_loss of the pointer-generator: target holds extended ids (Batch.tgt_out_ext).

        Only the gold word's probability is mixed: log P(y) = logaddexp(log p_gen +
        log P_vocab(y), log(1 - p_gen) + log copy(y)), with copy(y) clamped at TINY so no
        gradient meets log(0). Label smoothing spreads its mass over the fixed target
        vocabulary of the final (mixed) distribution: -mean_{w < V} log P(w); the
        sentence's extra source-only words get none. The (N, V) mixture is never built: a
        word no source position holds has no copy mass, so its log P(w) is log p_gen +
        log P_vocab(w), summed over the whole vocabulary in one pass; only the source's own
        words (each once) are mixed. (Building it took most of a training step with a
        20,000-word vocabulary.)
        """
        V = self.vocab_size
        lp = torch.log_softmax(self.logits(features[keep]).float(), dim=-1)  # (N, V)
        gold = target[keep]  # (N,) extended ids
        attn = info["attn"][keep].float()  # (N, S)
        src_ext = info["src_ext"].unsqueeze(1).expand(-1, keep.size(1), -1)[keep]  # (N, S)
        logit = info["p_gen_logit"][keep].float()  # (N,)
        log_gen, log_cp = F.logsigmoid(logit), F.logsigmoid(-logit)  # log p_gen, log(1 - p_gen)
        gen_gold = lp.gather(1, gold.clamp(max=V - 1).unsqueeze(1)).squeeze(1)
        gen_gold = torch.where(gold < V, gen_gold, float("-inf")) + log_gen
        copy_gold = (attn * (src_ext == gold.unsqueeze(1))).sum(-1)  # (N,)
        nll = -torch.logaddexp(gen_gold, log_cp + copy_gold.clamp_min(TINY).log()).sum()
        if label_smoothing == 0:
            return nll, nll
        ids = src_ext.clamp(max=V)  # (N, S); source-only (extended) words all become V
        same = ids.unsqueeze(2) == ids.unsqueeze(1)  # (N, S, S): positions j, k hold one word
        mass = (same * attn.unsqueeze(1)).sum(-1)  # (N, S): copy mass of the word at j
        earlier = torch.ones_like(same[0]).tril(-1)  # (S, S): k < j
        use = ~(same & earlier).any(-1) & (ids < V) & (mass > 0)  # first position, in V, mass
        gen = lp.gather(1, ids.clamp(max=V - 1)) + log_gen.unsqueeze(1)  # (N, S)
        mix = torch.logaddexp(gen, log_cp.unsqueeze(1) + torch.where(use, mass, 1.0).log())
        total = V * log_gen + lp.sum(-1) + torch.where(use, mix - gen, 0.0).sum(-1)  # (N,)
        loss = (1 - label_smoothing) * nll - label_smoothing * (total / V).sum()
        return loss, nll

    def log_probs(self, features: Tensor, info: dict | None = None) -> Tensor:
        """features (..., O) -> log-probabilities over the target vocabulary (..., V); with
        copy, over the extended vocabulary (..., V + n_ext), info from :meth:`forward`."""
        lp = torch.log_softmax(self.out(features).float(), dim=-1)  # fp32 even under autocast
        if not self.copy:
            return lp
        assert info is not None, "a copy decoder needs info (attention, p_gen) for log_probs"
        attn, src_ext = info["attn"], info["src_ext"]  # (..., S), (B, S)
        if attn.dim() == 3:
            src_ext = src_ext.unsqueeze(1).expand_as(attn)  # (B, T, S)
        n_ext = max(0, int(src_ext.max()) + 1 - self.vocab_size) if src_ext.numel() else 0
        return copy_log_probs(lp, info["p_gen_logit"], attn, src_ext, n_ext)

    def _step_log_probs(self, features: Tensor, info: dict, src_ext, n_ext: int) -> Tensor:
        """log_probs for one decoding step; with copy, consumes info["p_gen_logit"]."""
        lp = torch.log_softmax(self.out(features).float(), dim=-1)  # (B, V) fp32 even under autocast
        if not self.copy:
            return lp
        return copy_log_probs(lp, info.pop("p_gen_logit"), info["attn"], src_ext, n_ext)

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

    coverage: the scorer also sees cov_i = sum_{i'<i} a_i' (Tu et al. 2016; See et al. 2017).
    copy: pointer-generator output with p_gen = sigmoid(W_gen [c_i; s_i; x_i]), x_i the
    embedded y_{i-1} and s_i the top RNN output (See et al. 2017, eq. 8).
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
        coverage: bool = False,
        copy: bool = False,
        unk_id: int = 1,
        normalizer: str = "softmax",
        window: int = 0,
        local: str = "monotonic",
    ):
        super().__init__()
        if (coverage or copy or window) and attention == "none":
            raise ValueError("coverage, copy and local attention need attention (attention='none' given)")
        if copy and window and local == "predictive":
            raise ValueError("copy needs attention weights that sum to 1; local-p's do not")
        self.vocab_size = vocab_size
        self.coverage, self.copy, self.unk_id = coverage, copy, unk_id
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
            self.attention = Attention(
                build_scorer(attention, hidden, enc_dim, location_max_len, coverage=coverage),
                normalizer=normalizer, window=window, local=local, query_dim=hidden,
            )
            self.W_c = nn.Linear(enc_dim + hidden, self.out_dim, bias=False)
        if copy:
            self.W_gen = nn.Linear(enc_dim + hidden + emb_dim, 1)  # [w_c; w_s; w_x], b_ptr
        self.dropout = Dropout(dropout)
        self.out = nn.Linear(self.out_dim, vocab_size)
        if tie_output:
            if self.out_dim != emb_dim:
                raise ValueError(f"tie_output needs out_dim ({self.out_dim}) == emb_dim ({emb_dim})")
            self.out.weight = self.embed.weight

    # -- state -------------------------------------------------------------------------
    def init_state(
        self, enc: EncoderOutput, src_ext: Tensor | None = None, n_ext: int = 0
    ) -> RNNDecoderState:
        """The state before the first step. src_ext (B, S) and n_ext: the source in the
        extended vocabulary, needed (only) by a copy decoder."""
        B, S = enc.src_pad_mask.shape
        if self.copy and src_ext is None:
            raise ValueError("a copy decoder needs src_ext, the source in the extended vocabulary")
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
            memory=to_autocast_dtype(enc.out),  # read by every step's weighted sum
            keys=self.attention.prepare(enc.out) if self.use_attn else None,
            src_pad_mask=enc.src_pad_mask,
            cov=enc.out.new_zeros(B, S) if self.coverage else None,
            src_ext=src_ext if self.copy else None,
            n_ext=n_ext if self.copy else 0,
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
        cov = None if state.cov is None else state.cov.unsqueeze(1)  # (B, 1, S)
        ctx, a = self.attention(
            query.unsqueeze(1), state.keys, state.memory, state.src_pad_mask, cov, step=state.t
        )
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
        if not self.use_attn:
            return s, dataclasses.replace(state, h=h, c=c, attn_vec=s, t=state.t + 1), info
        if self.style == "luong":
            ctx, a = self._attend(s, state)
        vec = torch.tanh(self.W_c(torch.cat([ctx, s], -1)))  # (B, O)
        info["attn"] = a
        cov = state.cov
        if self.coverage:
            info["coverage"] = cov  # before this step's attention
            cov = cov + a
        if self.copy:
            info.update(self._p_gen(torch.cat([ctx, s, emb], -1)))  # (B,)
        state = dataclasses.replace(state, h=h, c=c, attn_vec=vec, cov=cov, t=state.t + 1)
        return vec, state, info

    def _p_gen(self, chx: Tensor) -> dict[str, Tensor]:
        """p_gen = sigmoid(W_gen [c_i; s_i; x_i]) and its logit from ``chx`` (..., D + H + E),
        one step or all steps at once."""
        logit = self.W_gen(chx).squeeze(-1)  # (...)
        return {"p_gen": torch.sigmoid(logit), "p_gen_logit": logit}

    def step(self, y_prev: Tensor, state: RNNDecoderState, need_info: bool = True
             ) -> tuple[Tensor, RNNDecoderState, dict]:
        """y_prev (B,) -> log P(y_i | ...) (B, V) (B, V + n_ext with copy), new state,
        {"attn": (B, S)} (+ "coverage" (B, S), "p_gen" (B,)). The attention is part of the
        step, so info costs nothing extra and need_info is ignored."""
        if self.copy:  # a copied source-only word is fed back as <unk>
            y_prev = y_prev.masked_fill(y_prev >= self.vocab_size, self.unk_id)
        emb = to_autocast_dtype(self.dropout(self.embed(y_prev)))  # (B, E)
        vec, state, info = self._advance(emb, state)
        return self._step_log_probs(self.dropout(vec), info, state.src_ext, state.n_ext), state, info

    # -- teacher forcing ---------------------------------------------------------------
    fused: bool = True  # use attendo.model.fused_rnn where it applies (set False to compare)

    def fusable(self) -> bool:
        """Whether :meth:`forward` can run as one fused autograd node (see
        :mod:`attendo.model.fused_rnn`): one GRU layer, Luong-style additive attention with
        softmax, global (not local), no coverage (copy is fine)."""
        return (
            self.fused
            and self.rnn_type == "gru"
            and self.layers == 1
            and self.use_attn
            and self.style == "luong"
            and type(self.attention.scorer) is AdditiveScorer
            and self.attention.normalizer == "softmax"
            and not self.attention.window
            and self.attention.scorer.w_c is None
            and not self.coverage
            and self.W_c.bias is None
        )

    def forward(self, tgt_in: Tensor, state: RNNDecoderState) -> tuple[Tensor, dict]:
        """tgt_in (B, T) -> features (B, T, O), {"attn": (B, T, S)} (+ "coverage" (B, T, S),
        "p_gen" (B, T) and, for the loss, "p_gen_logit" (B, T), "src_ext" (B, S)): the same
        as T steps."""
        if self.copy:
            tgt_in = tgt_in.masked_fill(tgt_in >= self.vocab_size, self.unk_id)
        emb = to_autocast_dtype(self.dropout(self.embed(tgt_in)))  # (B, T, E)
        if self.fusable():
            vecs_, attn, ch = fused_decode(
                emb, state.h[:, 0], state.memory, state.keys, state.src_pad_mask, self.cells[0],
                self.attention.scorer.W_1.weight, self.attention.scorer.v_a.weight[0],
                self.W_c.weight, self.input_feeding, want_ch=self.copy,
            )
            info = {"attn": attn}
            if self.copy:  # p_gen for all steps at once
                info.update(self._p_gen(torch.cat([ch, emb], -1)), src_ext=state.src_ext)  # (B, T)
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
