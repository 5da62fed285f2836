"""Attention rows to word links: teacher-forced attention, the methods (argmax, threshold,
shift, shift-threshold), pieces to words, per sentence pair or per Translation (see
:mod:`attendo.align` for the rules)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import diagnostics as dg
from .. import translator as _translator
from ..data.batching import collate, make_batches
from ..data.corpus import clean_text, clean_texts
from ..errors import UsageError
from .names import METHODS, SOFT_SYMMETRIZE, SYMMETRIZE, WORD_RULES  # noqa: F401 (re-exported)

Links = set[tuple[int, int]]


def is_transformer(model) -> bool:
    """Whether the model's attention comes per layer and head (a Transformer decoder)."""
    return model.attention_heads is not None


def pick_heads(heads: np.ndarray, layer: int | None, head: int | None,
               default_layer: int) -> np.ndarray:
    """(T, L, H, S) per-head cross-attention -> (T, S): layer ``layer`` (default
    ``default_layer``), head ``head`` or the mean of the heads."""
    L, H = heads.shape[1], heads.shape[2]
    layer = default_layer if layer is None else layer
    if not -L <= layer < L:
        raise UsageError(f"--layer {layer}: the model has {L} decoder layers (0..{L - 1}, "
                         "-1 = last)")
    a = heads[:, layer]
    if head is None:
        return a.mean(1)
    if not -H <= head < H:
        raise UsageError(f"--head {head}: the model has {H} heads (0..{H - 1}, -1 = last)")
    return a[:, head]


@torch.no_grad()
def forced_attention(
    translator, src: Sequence[str], tgt: Sequence[str], batch_size: int = 64,
    layer: int | None = None, head: int | None = None,
) -> list[tuple[list[str], list[str], np.ndarray] | None]:
    """Teacher-forced attention over a given target: per sentence (source pieces, target
    pieces, attention (len(target pieces) + 1, len(source pieces))), the last row the one
    that predicts ``</s>``; None for an empty side. With ``layer`` or ``head`` (Transformers
    only) the decoder is stepped one position at a time to get every layer's heads. Both
    sides are checked and cleaned as translator input is (a control character is a
    ``TextError`` naming ``src[i]`` or ``tgt[i]``)."""
    model = translator.model
    if translator.cfg.data.src_type != "text":
        raise UsageError("word alignment links source words: this is an image model")
    src, tgt = clean_texts(src, "src"), clean_texts(tgt, "tgt")
    if len(src) != len(tgt):
        raise UsageError(f"got {len(src)} source sentences but {len(tgt)} targets")
    if (layer is not None or head is not None) and not is_transformer(model):
        raise UsageError("--layer and --head are for Transformer decoders only")
    sp, tp = [translator.src.pieces(s) for s in src], [translator.tgt.pieces(r) for r in tgt]
    src_ids = [translator.src.vocab.encode(p) for p in sp]
    tgt_ids = [translator.tgt.vocab.encode(p) for p in tp]
    todo = [i for i in range(len(src)) if src_ids[i] and tgt_ids[i]]
    out: list[tuple[list[str], list[str], np.ndarray] | None] = [None] * len(src)
    was_training = model.training
    model.eval()
    for plan in make_batches([len(src_ids[i]) for i in todo], [len(tgt_ids[i]) for i in todo],
                             batch_size=batch_size, batch_type="sentences", shuffle=False):
        rows = [todo[k] for k in plan]
        b = collate([src_ids[i] for i in rows], [tgt_ids[i] for i in rows], rows)
        b = b.to(translator.device)
        # a pointer-generator needs the source in its extended vocabulary; the regular ids do
        # for attention, which does not depend on the extension
        extra = {"src_ext": b.src} if model.copies else {}
        if layer is None and head is None:
            _, info = model(b.src, b.src_lens, b.tgt_in, **extra)
            attn = info["attn"].float().cpu().numpy()  # (B, T + 1, S)
        else:
            state = model.start(b.src, b.src_lens, extra.get("src_ext"))
            steps = []
            for t in range(b.tgt_in.size(1)):
                _, state, info = model.decoder.step(b.tgt_in[:, t], state, need_info=True)
                steps.append(info["attn_heads"].float().cpu().numpy())  # (B, L, H, S)
            heads = np.stack(steps, 1)  # (B, T + 1, L, H, S)
            attn = np.stack([pick_heads(h, layer, head, model.decoder.attn_layer) for h in heads])
        for k, i in enumerate(rows):
            out[i] = (sp[i], tp[i], attn[k, : len(tgt_ids[i]) + 1, : len(src_ids[i])])
    model.train(was_training)
    return out


def _rows(a: np.ndarray, n_tgt: int, method: str) -> np.ndarray:
    """The n_tgt attention rows ``method`` reads: row t for target piece t, or row t + 1 for
    the shift methods (the last piece keeps its own row when there is no next one)."""
    if method not in METHODS:
        raise UsageError(f"alignment method {method!r}: expected one of {', '.join(METHODS)}")
    if not method.startswith("shift"):
        return a[:n_tgt]
    rows = a[1 : n_tgt + 1]
    if len(rows) < n_tgt:  # no row after the last piece: it keeps its own
        rows = np.concatenate([rows, a[len(rows) : n_tgt]])
    return rows


def pick_links(rows: np.ndarray, method: str, threshold: float) -> Links:
    """(column, row) links of a (targets, sources) weight matrix: the argmax of each row
    (argmax, shift), or every weight >= threshold (threshold, shift-threshold). A row of
    zeros (a target word that attended only to ``</s>``) gets no link."""
    if method in ("argmax", "shift"):
        return {(int(s), t) for t, s in enumerate(rows.argmax(1)) if rows[t, s] > 0}
    ts, ss = np.nonzero(rows >= threshold)
    return {(int(s), int(t)) for t, s in zip(ts, ss)}


def piece_links(attn: np.ndarray, n_tgt: int, method: str = "argmax",
                threshold: float = 0.5) -> Links:
    """(source piece, target piece) links of ``n_tgt`` target pieces from attention rows
    (>= n_tgt rows, row t predicting piece t; see the module docstring for the methods)."""
    a = np.asarray(attn, dtype=np.float64)
    rows = _rows(a, n_tgt, method)  # checks the method, even with nothing to link
    return pick_links(rows, method, threshold) if n_tgt and a.size else set()


def word_weights(rows: np.ndarray, src_groups: Sequence[Sequence[int]],
                 tgt_groups: Sequence[Sequence[int]]) -> np.ndarray:
    """(target words, source words) weights of piece rows (target pieces, source pieces): the
    sum over the source word's pieces, averaged over the target word's pieces (the ``mean``
    rule). Columns of no source word (``</s>``) are left out."""
    src_of = np.zeros((rows.shape[1], len(src_groups)))
    for i, g in enumerate(src_groups):
        src_of[list(g), i] = 1.0
    tgt_of = np.zeros((len(tgt_groups), rows.shape[0]))
    for j, g in enumerate(tgt_groups):
        tgt_of[j, list(g)] = 1.0 / len(g)
    return tgt_of @ rows @ src_of


def pieces_to_words(links: Links, src_groups: Sequence[Sequence[int]],
                    tgt_groups: Sequence[Sequence[int]]) -> Links:
    """Word links from piece links: words are linked when any of their pieces are; pieces
    in no word (char tokenizer's "▁") are dropped."""
    sw = {p: w for w, g in enumerate(src_groups) for p in g}
    tw = {p: w for w, g in enumerate(tgt_groups) for p in g}
    return {(sw[s], tw[t]) for s, t in links if s in sw and t in tw}


def word_rows(attn: np.ndarray, src_pieces: list[str], tgt_pieces: list[str],
              kinds: tuple[str, str], n_src_words: int, n_tgt_words: int,
              method: str = "argmax") -> np.ndarray | None:
    """(target words, source words) weights of one sentence pair: the rows ``method`` reads,
    turned into word rows by the ``mean`` rule (:func:`word_weights`); None when the pieces
    do not group into ``n_src_words`` and ``n_tgt_words`` words."""
    sg, tg = dg.word_groups(src_pieces, kinds[0]), dg.word_groups(tgt_pieces, kinds[1])
    if len(sg) != n_src_words or len(tg) != n_tgt_words:
        return None
    a = np.asarray(attn, dtype=np.float64)
    rows = _rows(a, len(tgt_pieces), method)
    if not tg or not sg or a.size == 0:  # nothing to weigh: no links
        return np.zeros((len(tg), len(sg)))
    return word_weights(rows, sg, tg)


def word_links(attn: np.ndarray, src_pieces: list[str], tgt_pieces: list[str],
               kinds: tuple[str, str], n_src_words: int, n_tgt_words: int,
               method: str = "argmax", threshold: float = 0.5, words: str = "any"
               ) -> Links | None:
    """Word links of one sentence pair, or None when its pieces do not group into
    ``n_src_words`` and ``n_tgt_words`` words. ``tgt_pieces`` without ``</s>``; ``words`` is
    the pieces-to-words rule (``any`` or ``mean``, see the module docstring)."""
    if words not in WORD_RULES:
        raise UsageError(f"pieces-to-words rule {words!r}: expected one of "
                         f"{', '.join(WORD_RULES)}")
    if words == "mean":
        w = word_rows(attn, src_pieces, tgt_pieces, kinds, n_src_words, n_tgt_words, method)
        return None if w is None else pick_links(w, method, threshold) if w.size else set()
    sg, tg = dg.word_groups(src_pieces, kinds[0]), dg.word_groups(tgt_pieces, kinds[1])
    if len(sg) != n_src_words or len(tg) != n_tgt_words:
        return None
    return pieces_to_words(piece_links(attn, len(tgt_pieces), method, threshold), sg, tg)


def tokenizer_kinds(translator) -> tuple[str, str]:
    """The (source, target) tokenizer kinds, which group pieces into words."""
    return translator.src.tokenizer.kind, translator.tgt.tokenizer.kind


def align_pairs(translator, src: Sequence[str], tgt: Sequence[str], method: str = "argmax",
                threshold: float = 0.5, layer: int | None = None, head: int | None = None,
                batch_size: int = 64, words: str = "any") -> list[Links | None]:
    """Teacher-forced word links (source word, target word) of each given sentence pair;
    None for a pair whose pieces do not map onto its words (or with an empty side)."""
    return [None if a is None else word_links(*a, method, threshold, words)
            for a in _pair_attention(translator, src, tgt, batch_size, layer, head)]


def pair_word_rows(translator, src: Sequence[str], tgt: Sequence[str], method: str = "argmax",
                   layer: int | None = None, head: int | None = None, batch_size: int = 64
                   ) -> list[np.ndarray | None]:
    """Teacher-forced (target words, source words) weights of each given pair (the rows
    ``method`` reads, ``mean`` rule), for :func:`average`; None as in :func:`align_pairs`."""
    return [None if a is None else word_rows(*a, method)
            for a in _pair_attention(translator, src, tgt, batch_size, layer, head)]


def _pair_attention(translator, src: Sequence[str], tgt: Sequence[str], batch_size: int,
                    layer: int | None, head: int | None) -> list[tuple | None]:
    """Per given pair, the leading arguments of :func:`word_links` from teacher-forced
    attention, or None for an empty side."""
    kinds = tokenizer_kinds(translator)
    src, tgt = clean_texts(src, "src"), clean_texts(tgt, "tgt")  # words of the cleaned text
    return [None if fa is None else (fa[2], fa[0], fa[1], kinds, len(s.split()), len(t.split()))
            for s, t, fa in zip(src, tgt, forced_attention(translator, src, tgt, batch_size,
                                                           layer, head))]


def translation_links(translator, t, src_text: str, method: str = "argmax",
                      threshold: float = 0.5, layer: int | None = None,
                      head: int | None = None, words: str = "any") -> Links | None:
    """Word links between the words of ``src_text`` and those of ``t.text``, for its
    Translation ``t`` made with attention; None when there is no attention or the pieces do
    not map onto the words."""
    args = _translation_attention(translator, t, src_text, layer, head)
    return None if args is None else word_links(*args, method, threshold, words)


def translation_word_rows(translator, t, src_text: str, method: str = "argmax",
                          layer: int | None = None, head: int | None = None
                          ) -> np.ndarray | None:
    """(target words, source words) weights of Translation ``t`` of ``src_text`` (``mean``
    rule), for :func:`average`; None as in :func:`translation_links`."""
    args = _translation_attention(translator, t, src_text, layer, head)
    return None if args is None else word_rows(*args, method)


def _translation_attention(translator, t, src_text: str, layer: int | None,
                           head: int | None) -> tuple | None:
    """The leading arguments of :func:`word_links` for a Translation, or None without
    attention."""
    attn = t.attention
    if attn is None:
        return None
    if layer is not None or head is not None:
        if "attn_heads" not in t.info:
            raise UsageError("--layer and --head are for Transformer decoders only")
        # default_layer -1 is not used when layer is given; with head only, the model's layer
        attn = pick_heads(t.info["attn_heads"], layer, head, translator.model.decoder.attn_layer)
    pieces = [p for p in t.tgt_tokens if p != "</s>"]
    src_text = clean_text(src_text)  # the words of the text the translator saw
    return (attn, t.src_tokens, pieces, tokenizer_kinds(translator), len(src_text.split()),
            len(t.text.split()))


# Translator.translate(return_alignment=True) links words with translation_links; decoding
# imports nothing from this layer above it, so the link is made here, when alignments load
_translator.word_links = translation_links
