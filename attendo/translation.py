"""What a search hypothesis becomes for the user: a :class:`Translation` (detokenized text,
pieces, scores, attention trimmed to the real source, per-step info), with a copy model's
source-only words written verbatim and, when asked, each ``<unk>`` replaced through attention
(:mod:`attendo.unk`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .data.prepare import Codec
from .data.vocab import Vocab
from .search import Hypothesis
from .unk import UNK, replace_unknowns

SPM_KINDS = ("bpe", "unigram")


@dataclass
class Translation:
    text: str  # detokenized output
    src_tokens: list[str]  # source pieces the model saw
    tgt_tokens: list[str]  # output pieces, with "</s>" last when the model ended the sentence
    score: float  # search score (length-normalised log-probability)
    log_prob: float
    attention: np.ndarray | None = None  # (len(tgt_tokens), len(src_tokens)), rows sum to 1
    info: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. p_gen: (len(tgt_tokens),)
    nbest: list[Translation] = field(default_factory=list)  # all n-best, best first (incl. this)
    # copy models: p_gen of each output token (len(tgt_tokens),), 1 = generated, 0 = copied
    p_gen: np.ndarray | None = None
    # coverage models: coverage before each output token (len(tgt_tokens), len(src_tokens))
    coverage: np.ndarray | None = None
    # return_alignment: (source word, output word) links, 0-based whitespace words of the input
    # and of ``text`` (argmax of attention, see attendo.align); None when not asked for
    alignment: list[tuple[int, int]] | None = None
    unk_replaced: int = 0  # replace_unk: how many <unk> were replaced by a source word

    def to_dict(self, with_attention: bool = True) -> dict:
        """A JSON-ready dict (``json.dumps(..., allow_nan=False)`` works): a score that is not
        finite (a model that gives no finite score, see :func:`attendo.search.beam_search`)
        is None, as in the server's answers."""
        d = {
            "text": self.text,
            "score": _finite_or_none(self.score),
            "src_tokens": self.src_tokens,
            "tgt_tokens": self.tgt_tokens,
        }
        if with_attention and self.attention is not None:
            d["attention"] = np.round(self.attention, 4).tolist()
        if self.p_gen is not None:
            d["p_gen"] = np.round(self.p_gen, 4).tolist()
        if with_attention and self.coverage is not None:
            d["coverage"] = np.round(self.coverage, 4).tolist()
        if self.alignment is not None:
            d["alignment"] = [list(x) for x in self.alignment]
        if self.nbest and len(self.nbest) > 1:
            d["nbest"] = [{"text": h.text, "score": _finite_or_none(h.score)} for h in self.nbest]
        return d


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def to_translation(h: Hypothesis, tgt: Codec, src_pieces: list[str], n_src: int,
                   oovs: list[str] | None = None, unk_dict: dict[str, str] | None = None
                   ) -> Translation:
    """The Translation of hypothesis ``h`` with the target codec ``tgt``. ``n_src``: the
    source's memory positions (its pieces, or an image's regions), where attention is cut;
    ``oovs``: a copy model's source-only words; ``unk_dict`` (not None: replace unknown
    words)."""
    ids = h.tokens
    ended = bool(ids) and ids[-1] == Vocab.EOS
    body = ids[:-1] if ended else ids
    attn = None if h.attn is None else h.attn[: len(ids), :n_src].float().cpu().numpy()
    replaced = 0
    if oovs is not None:
        pieces, text = decode_copy(tgt, body, oovs)
    else:
        pieces = tgt.vocab.decode(body, strip=False)
        if unk_dict is not None and attn is not None and UNK in pieces:
            pieces, replaced = replace_unknowns(pieces, attn, src_pieces, unk_dict)
            text = decode_unknown_pieces(tgt, [p for p in pieces if p not in ("<s>", "<pad>")])
        else:
            text = tgt.tokenizer.decode(tgt.vocab.decode(body))
    tokens = pieces + (["</s>"] if ended else [])
    # per-head attention (T, L, H, S) and coverage (T, S) are trimmed to the real source
    # length like attention
    info = {
        k: (v[: len(tokens), ..., :n_src] if k in ("attn_heads", "coverage")
            else v[: len(tokens)]).float().cpu().numpy()
        for k, v in h.info.items()
    }
    return Translation(text, src_pieces, tokens, h.score, h.log_prob, attn, info,
                       p_gen=info.get("p_gen"), coverage=info.get("coverage"),
                       unk_replaced=replaced)


def decode_unknown_pieces(tgt: Codec, pieces: list[str]) -> str:
    """Text of output pieces some of which the tokenizer may not know (copied or replaced
    words): sentencepiece writes those as they are, word-boundary mark included, so the marks
    become spaces."""
    text = tgt.tokenizer.decode(pieces)
    if tgt.tokenizer.kind in SPM_KINDS:
        text = " ".join(text.replace("\u2581", " ").split())
    return text


def decode_copy(tgt: Codec, body: list[int], oovs: list[str]) -> tuple[list[str], str]:
    """Output pieces and text of a copy model: id V + k is the source-only piece oovs[k],
    written verbatim."""
    vocab, V = tgt.vocab, len(tgt.vocab)
    unk = Vocab.SPECIALS[Vocab.UNK]
    pieces = [vocab.itos[i] if i < V else (oovs[i - V] if i - V < len(oovs) else unk)
              for i in body]
    kept = []  # what vocab.decode(strip=True) keeps: stop at EOS, drop PAD/BOS
    for i, piece in zip(body, pieces):
        if i == Vocab.EOS:
            break
        if i not in (Vocab.PAD, Vocab.BOS):
            kept.append(piece)
    if any(i >= V for i in body):
        return pieces, decode_unknown_pieces(tgt, kept)
    return pieces, tgt.tokenizer.decode(kept)


def nbest_lines(out: list[Translation], n_best: int) -> str:
    """``attendo translate``'s output: one text per line, or with ``n_best`` > 1 each
    sentence's n-best as 'i ||| text ||| score' (an empty input still gets n lines)."""
    if n_best == 1:
        return "".join(t.text + "\n" for t in out)
    return "".join(f"{i} ||| {h.text} ||| {h.score:.4f}\n"
                   for i, t in enumerate(out) for h in (t.nbest or [t] * n_best))
