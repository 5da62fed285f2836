"""The contracts between encoders, decoders and search, in one place.

An **encoder** (:class:`Encoder`) reads source ids into states h_1..h_n, the memory attention
looks at, and returns an :class:`EncoderOutput`: the memory (B, S, D_enc), its mask
(``src_pad_mask``, True at padding) and an optional summary state (``final_h``/``final_c``) an
RNN decoder's bridge starts from. Decoders only see that, so encoders and decoders mix.

A **decoder** (:class:`Decoder`) implements

    init_state(enc: EncoderOutput, src_ext=None, n_ext=0) -> state
    step(y_prev (B,), state, need_info=True) -> (log_probs (B, V), state, info)
    forward(tgt_in (B, T), state) -> (features (B, T, O), info)     # teacher forcing
    log_probs(features (N, O), info_rows) -> (N, V)
    token_loss(features, info, target, keep, label_smoothing) -> (loss, nll)

where ``info`` is a dict of per-step tensors (at least ``"attn"``: (B, S) from step,
(B, T, S) from forward; ``step(..., need_info=False)`` may leave out what the output does
not need) and ``state`` is a :class:`DecoderState`, which reorders itself
(``index_select(idx)``, ``repeat_rows(k)``) so beam search can reorder and prune it without
knowing which decoder it holds. What a caller may ask a decoder (and, through it,
``Seq2Seq``) is declared on :class:`Decoder`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .copy import copy_log_probs, copy_token_loss, extra_words
from .loss import smoothed_cross_entropy


@dataclass
class EncoderOutput:
    out: Tensor  # (B, S, D_enc) one state per source position
    src_pad_mask: Tensor  # (B, S) True at padding
    final_h: Tensor | None = None  # (B, L, D_final) last state per layer (directions concatenated)
    final_c: Tensor | None = None  # (B, L, D_final) LSTM cell, else None


def padding_mask(lens: Tensor, S: int, device: torch.device) -> Tensor:
    """(B,) lengths -> (B, S) True at padding."""
    return torch.arange(S, device=device)[None, :] >= lens.to(device)[:, None]


class Encoder(nn.Module):
    """An encoder: ``forward(src (B, S) ids, src_lens (B,)) -> EncoderOutput``; ``out_dim`` is
    D_enc, the size of its states."""

    out_dim: int


class DecoderState:
    """Base for decoder states: every tensor field (or tuple of tensors, e.g. one per layer)
    is batch-first and reorders together. ``PER_SOURCE`` names the fields that depend only on
    the source sentence of a row (encoder memory and what is precomputed from it): beam
    search's reorder within each sentence's beam (``same_source=True``) does not copy them
    again (for a Transformer, the cross-attention keys and values: most of the state)."""

    PER_SOURCE: ClassVar[frozenset[str]] = frozenset()

    def index_select(self, idx: Tensor, same_source: bool = False):
        """Keep/reorder/duplicate batch rows: row k of the result is row idx[k] of self.
        same_source: row idx[k] has the same source as row k, so PER_SOURCE fields are kept."""
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
        expansion of every sentence into its beam."""
        first = next(v for v in (getattr(self, f.name) for f in dataclasses.fields(self))
                     if isinstance(v, Tensor))
        idx = torch.arange(first.size(0), device=first.device).repeat_interleave(k)
        return self.index_select(idx)


class OutputLayer:
    """The output distribution shared by the decoders: a linear layer ``self.out`` over the
    decoder features, mixed with the copy distribution when ``self.copy`` (the mixture needs
    ``info`` from :meth:`forward`: attention, p_gen logit and ``src_ext``; see
    :mod:`attendo.model.copy`)."""

    out: nn.Linear
    vocab_size: int
    copy: bool = False

    def token_loss(self, features: Tensor, info: dict, target: Tensor, keep: Tensor,
                   label_smoothing: float) -> tuple[Tensor, Tensor]:
        """Summed (label-smoothed) loss and summed NLL over the positions where keep (B, T) is
        True; features (B, T, O). The output layer, the most expensive matrix product of an RNN
        model, runs only on kept positions."""
        logits = self.out(features[keep])  # (N, V)
        if self.copy:  # target holds extended ids (Batch.tgt_out_ext)
            return copy_token_loss(logits, info, target, keep, label_smoothing)
        return smoothed_cross_entropy(logits, target[keep], label_smoothing)

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
        n_ext = extra_words(src_ext, self.vocab_size)
        return copy_log_probs(lp, info["p_gen_logit"], attn, src_ext, n_ext)

    def _step_log_probs(self, features: Tensor, info: dict, src_ext, n_ext: int) -> Tensor:
        """log_probs for one decoding step; with copy, consumes info["p_gen_logit"]."""
        lp = torch.log_softmax(self.out(features).float(), dim=-1)  # (B, V), fp32
        if not self.copy:
            return lp
        return copy_log_probs(lp, info.pop("p_gen_logit"), info["attn"], src_ext, n_ext)


class Decoder(OutputLayer, nn.Module):
    """A decoder behind the step interface (see the module docstring), with the output layer
    and the capabilities a caller may ask about (from ``use_attn``, ``copy``, ``coverage``)."""

    use_attn: bool = True  # attends over the source (False for model.attention: none)
    copy: bool = False  # a pointer-generator (model.copy)
    coverage: bool = False  # keeps a coverage vector (model.coverage)

    @property
    def has_attention(self) -> bool:
        """Whether decoding attends over the source (attention weights to draw or align)."""
        return self.use_attn

    @property
    def copies(self) -> bool:
        """A pointer-generator: ``step`` gives V + n_ext columns, ``init_state`` needs src_ext."""
        return self.copy

    @property
    def has_coverage(self) -> bool:
        return self.coverage

    def cross_attention_heads(self) -> tuple[int, int] | None:
        """(layers, heads) of a multi-head cross-attention; None: one distribution per step."""
        return None

    def init_state(self, enc: EncoderOutput, src_ext: Tensor | None = None, n_ext: int = 0
                   ) -> DecoderState:
        raise NotImplementedError

    def step(self, y_prev: Tensor, state: DecoderState, need_info: bool = True
             ) -> tuple[Tensor, DecoderState, dict]:
        raise NotImplementedError
