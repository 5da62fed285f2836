"""Decode-time ensembles: several trained models that share the target vocabulary and the
source side, searched as one. At each step the members' next-token distributions are averaged,

    log P(y | ...) = log(1/n sum_i P_i(y | ...)) = logsumexp_i(log P_i(y | ...)) - log n   (fp32),

behind the decoder step interface of :mod:`attendo.model.interfaces`, so greedy and beam
search (and the Translator) use an :class:`Ensemble` as they use a ``Seq2Seq``. A member that
copies (a pointer-generator) gives V + n_ext columns, the others V: they get -inf
(probability 0) for the source-only words, and such a word is fed back to them as <unk>.
:func:`check_compatible` checks the members' codecs before they are joined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from .copy import unk_extended
from .interfaces import Decoder, DecoderState
from .seq2seq import Seq2Seq

if TYPE_CHECKING:
    from ..data.prepare import Codec, ImageCodec

PER_HEAD = "attn_heads"  # one member's (B, L, H, S) head weights: no common heads to average


@dataclass
class EnsembleState(DecoderState):
    """The members' states (one each, in member order), reordered together."""

    members: tuple[DecoderState, ...]

    def index_select(self, idx: Tensor, same_source: bool = False) -> EnsembleState:
        return EnsembleState(tuple(s.index_select(idx, same_source) for s in self.members))

    def repeat_rows(self, k: int) -> EnsembleState:
        return EnsembleState(tuple(s.repeat_rows(k) for s in self.members))

    @property
    def src_pad_mask(self) -> Tensor:
        """(B, S) True at padding: the first member's (all members read the same source)."""
        return self.members[0].src_pad_mask


def _mean(values: list[Tensor | None]) -> Tensor | None:
    """Elementwise mean (fp32) of tensors of one shape; None if one is missing or differs."""
    if any(v is None or v.shape != values[0].shape for v in values):
        return None
    return torch.stack([v.float() for v in values]).mean(0)


class EnsembleDecoder(nn.Module):
    """The members' decoders as one decoder behind ``step``, with the capabilities a
    :class:`~attendo.model.interfaces.Decoder` declares."""

    def __init__(self, decoders: list[Decoder]):
        super().__init__()
        sizes = sorted({d.vocab_size for d in decoders})
        if len(sizes) != 1:
            raise UsageError(f"an ensemble needs members with one target vocabulary, got "
                             f"{len(decoders)} decoders with target sizes {sizes}")
        self.decoders = nn.ModuleList(decoders)
        self.vocab_size: int = sizes[0]

    @property
    def has_attention(self) -> bool:
        return any(d.has_attention for d in self.decoders)

    @property
    def copies(self) -> bool:
        return any(d.copies for d in self.decoders)

    @property
    def has_coverage(self) -> bool:
        return all(d.has_coverage for d in self.decoders)

    def cross_attention_heads(self) -> None:
        """None: the members' heads are no common set of heads."""
        return None

    def step(self, y_prev: Tensor, state: EnsembleState, need_info: bool = True
             ) -> tuple[Tensor, EnsembleState, dict]:
        """y_prev (B,) -> log of the members' mean probability (B, V') in fp32 (V' = V + n_ext
        when a member copies), new state, info: "attn" (B, S) the mean over the members that
        attend, any other key the mean when every member gives it with one shape (nothing with
        need_info=False). One member: its own log-probabilities and info (less "attn_heads"),
        bit for bit."""
        if len(self.decoders) == 1:
            lp, s, info = self.decoders[0].step(y_prev, state.members[0], need_info)
            info.pop(PER_HEAD, None)
            return lp, EnsembleState((s,)), info
        lps, states, infos = [], [], []
        for d, s in zip(self.decoders, state.members):
            y = y_prev if d.copies or not self.copies else unk_extended(y_prev, d.vocab_size,
                                                                       d.unk_id)
            lp, s, info = d.step(y, s, need_info)
            lps.append(lp.float())
            states.append(s)
            infos.append(info)
        width = max(lp.size(-1) for lp in lps)
        lp = None
        for m in lps:  # log(p_1 + ... + p_n), one elementwise pass per member
            m = m if m.size(-1) == width else F.pad(m, (0, width - m.size(-1)), value=-math.inf)
            lp = m if lp is None else torch.logaddexp(lp, m)
        lp = lp.sub_(math.log(len(lps)))  # (B, V')
        return lp, EnsembleState(tuple(states)), self._mean_info(infos) if need_info else {}

    def _mean_info(self, infos: list[dict]) -> dict[str, Tensor]:
        attn = [i.get("attn") for d, i in zip(self.decoders, infos) if d.has_attention]
        out = {"attn": _mean(attn)} if attn else {}
        for key in infos[0]:
            if key not in ("attn", PER_HEAD):
                out[key] = _mean([i.get(key) for i in infos])
        return {k: v for k, v in out.items() if v is not None}


class Ensemble(nn.Module):
    """Several Seq2Seq models decoded as one: ``start``, ``decoder`` and the capabilities as
    a Seq2Seq's, for greedy and beam search and the Translator (not for training)."""

    def __init__(self, members: list[Seq2Seq]):
        super().__init__()
        if not members:
            raise UsageError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        self.decoder = EnsembleDecoder([m.decoder for m in members])

    @property
    def encoder(self) -> nn.Module:
        """The first member's encoder (e.g. for its self-attention)."""
        return self.members[0].encoder

    # the capabilities a caller may ask a Seq2Seq (see attendo.model.interfaces.Decoder)
    copies = property(lambda self: self.decoder.copies)
    has_attention = property(lambda self: self.decoder.has_attention)
    has_coverage = property(lambda self: self.decoder.has_coverage)
    attention_heads = property(lambda self: self.decoder.cross_attention_heads())  # None

    def start(self, src: Tensor, src_lens: Tensor, src_ext: Tensor | None = None,
              n_ext: int | None = None) -> EnsembleState:
        """Encode the batch with every member: their initial states (src_ext (B, S) and n_ext
        go to the members that copy)."""
        return EnsembleState(tuple(m.start(src, src_lens, src_ext, n_ext) if m.copies
                                   else m.start(src, src_lens) for m in self.members))


def check_compatible(names: list[str], codecs: list[tuple[Codec | ImageCodec, Codec]]) -> None:
    """Raise a UsageError at the first member (``names[i]``, its (source, target) codecs)
    whose target vocabulary or tokenizer, or source side, differs from the first member's."""
    for name, (src, tgt) in zip(names[1:], codecs[1:], strict=True):
        for side, mine, first in (("target", tgt, codecs[0][1]), ("source", src, codecs[0][0])):
            diff = _difference(side, mine, first, names[0])
            if diff:
                raise UsageError(f"{name}: {diff[0]}; an ensemble needs one {side} {diff[1]}")


def _difference(side: str, mine, first, first_name: str) -> tuple[str, str] | None:
    """(what differs between two codecs of one side, what an ensemble needs one of), or None."""
    if hasattr(mine, "vocab") != hasattr(first, "vocab"):
        kinds = ["text" if hasattr(c, "vocab") else "images" for c in (mine, first)]
        return f"its {side} is {kinds[0]}, {first_name}'s {kinds[1]}", "kind of input"
    if not hasattr(mine, "vocab"):  # image sources
        return None if mine.channels == first.channels else (
            f"its images have {mine.channels} channels, {first_name}'s {first.channels}", "format")
    a, b = mine.vocab.itos, first.vocab.itos
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if at is not None:
        return (f"its {side} vocabulary differs from {first_name}'s at id {at} "
                f"({a[at]!r} vs {b[at]!r})", "vocabulary")
    if len(a) != len(b):
        return f"its {side} vocabulary has {len(a)} entries, {first_name}'s {len(b)}", "vocabulary"
    ta, tb = mine.tokenizer, first.tokenizer
    if ta.kind != tb.kind:
        return f"its {side} tokenizer is {ta.kind!r}, {first_name}'s {tb.kind!r}", "tokenizer"
    if ta.files() != tb.files():
        return (f"its {side} tokenizer ({ta.kind}) has other model files than "
                f"{first_name}'s", "tokenizer")
    low = [getattr(c, "lowercase", False) for c in (mine, first)]
    if side == "source" and low[0] != low[1]:  # data.lowercase
        return f"its source lowercase is {low[0]}, {first_name}'s {low[1]}", "normalisation"
    return None
