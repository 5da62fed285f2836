"""Word alignments read off attention: ``attendo align``, ``Translation.alignment`` and the AER
of ``attendo evaluate --align-gold``.

**Attention rows.** Row t of a decoder's attention is computed at the step whose input is
target piece t-1 (``<s>`` for t = 0) and which *predicts* piece t. Teacher forcing on a given
target of T pieces gives T + 1 rows (the last predicts ``</s>``).

**Methods** (links between source piece s and target piece t, then mapped to words):

- ``argmax``: each target piece t is linked to its most attended source piece, argmax of row t.
- ``threshold``: every (s, t) whose weight in row t is >= the threshold (0.5 by default).
- ``shift`` (Chen et al. 2020, "Accurate word alignment induction from neural machine
  translation"): argmax of row t + 1, the step whose *input* is piece t and which predicts
  piece t + 1. A Transformer decoder's cross-attention at the step that predicts a word tends
  to look at the source word aligned to the *previous* word; shifting by one removes that lag.
  The last piece of an output that stops without ``</s>`` has no next row and keeps its own.
- ``shift-threshold``: every (s, t) whose weight in row t + 1 is >= the threshold (the rows of
  ``shift``, the rule of ``threshold``); for a head trained with
  ``train.guided_alignment.shift``, which leaves target words unlinked as its links did.

**Transformers**: by default the cross-attention of the model's ``model.attn_layer`` averaged
over its heads (what the model reports as its attention); ``layer`` picks another layer
(0-based, -1 = last) and ``head`` one head instead of the average.

**Pieces to words.** Pieces are grouped into whitespace words by
:func:`attendo.diagnostics.word_groups` (sentencepiece: a piece starting with "▁" starts a
word; char: "▁" separates words). Two rules (``words``): ``any`` (the default, as Chen et al.
2020 and awesome-align do) links a source word and a target word when *any* of their pieces
are linked; ``mean`` first turns the rows into word rows, the weight of source word i for
target word j being the sum over i's pieces, averaged over j's pieces (so a word split in
three pieces gets one link from ``argmax``, not up to three), and applies the method to
those. Indices are of whitespace words of the given text (0-based). A
sentence whose pieces do not group into as many words as its text has (a tokenizer that
normalises the text) gets no links and is counted as skipped.

**Symmetrisation** of a forward (source -> target) and a reverse (target -> source) model's
links, both as (source word, target word): ``intersect``, ``union``, ``grow-diag`` and
``grow-diag-final`` as in Koehn et al. 2003 / Moses (``train-model.perl``, "grow-diag-final").
``average`` is soft: the method's rule applied to the mean of the two directions' word
weights (the ``mean`` rule's word rows, one transposed), before any link is picked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import diagnostics as dg
from .data.batching import collate, make_batches
from .data.corpus import clean_text, clean_texts

METHODS = ("argmax", "threshold", "shift", "shift-threshold")
WORD_RULES = ("any", "mean")  # pieces to words: see the module docstring
SYMMETRIZE = ("intersect", "union", "grow-diag", "grow-diag-final")  # of two link sets
SOFT_SYMMETRIZE = ("average",)  # of two directions' word weights: see average()
Links = set[tuple[int, int]]

# -- attention ------------------------------------------------------------------------------


def is_transformer(model) -> bool:
    from .model.transformer import TransformerDecoder

    return isinstance(model.decoder, TransformerDecoder)


def pick_heads(heads: np.ndarray, layer: int | None, head: int | None,
               default_layer: int) -> np.ndarray:
    """(T, L, H, S) per-head cross-attention -> (T, S): layer ``layer`` (default
    ``default_layer``), head ``head`` or the mean of the heads."""
    L, H = heads.shape[1], heads.shape[2]
    layer = default_layer if layer is None else layer
    if not -L <= layer < L:
        raise ValueError(f"--layer {layer}: the model has {L} decoder layers (0..{L - 1}, -1 = last)")
    a = heads[:, layer]
    if head is None:
        return a.mean(1)
    if not -H <= head < H:
        raise ValueError(f"--head {head}: the model has {H} heads (0..{H - 1}, -1 = last)")
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
    src, tgt = clean_texts(src, "src"), clean_texts(tgt, "tgt")
    if len(src) != len(tgt):
        raise ValueError(f"got {len(src)} source sentences but {len(tgt)} targets")
    if (layer is not None or head is not None) and not is_transformer(model):
        raise ValueError("--layer and --head are for Transformer decoders only")
    sp = [translator.src.pieces(s) for s in src]
    tp = [translator.tgt.pieces(r) for r in tgt]
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
        extra = {"src_ext": b.src} if getattr(model, "copies", False) else {}
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
            attn = np.stack([pick_heads(h, layer, head, model.decoder.attn_layer)
                             for h in heads])
        for k, i in enumerate(rows):
            out[i] = (sp[i], tp[i], attn[k, : len(tgt_ids[i]) + 1, : len(src_ids[i])])
    model.train(was_training)
    return out


# -- links ----------------------------------------------------------------------------------


def _rows(a: np.ndarray, n_tgt: int, method: str) -> np.ndarray:
    """The n_tgt attention rows ``method`` reads: row t for target piece t, or row t + 1 for
    the shift methods (the last piece keeps its own row when there is no next one)."""
    if method not in METHODS:
        raise ValueError(f"alignment method {method!r}: expected one of {', '.join(METHODS)}")
    if not method.startswith("shift"):
        return a[:n_tgt]
    rows = a[1 : n_tgt + 1]
    if len(rows) < n_tgt:  # no row after the last piece: it keeps its own
        rows = np.concatenate([rows, a[len(rows) : n_tgt]])
    return rows


def _pick(rows: np.ndarray, method: str, threshold: float) -> Links:
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
    rows = _rows(a, n_tgt, method)
    if n_tgt == 0 or a.size == 0:
        return set()
    return _pick(rows, method, threshold)


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
        raise ValueError(f"pieces-to-words rule {words!r}: expected one of "
                         f"{', '.join(WORD_RULES)}")
    if words == "mean":
        w = word_rows(attn, src_pieces, tgt_pieces, kinds, n_src_words, n_tgt_words, method)
        return None if w is None else _pick(w, method, threshold) if w.size else set()
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
    if t.attention is None:
        return None
    attn = t.attention
    if layer is not None or head is not None:
        if "attn_heads" not in t.info:
            raise ValueError("--layer and --head are for Transformer decoders only")
        # default_layer -1 is not used when layer is given; with head only, the model's layer
        attn = pick_heads(t.info["attn_heads"], layer, head,
                          getattr(translator.model.decoder, "attn_layer", -1))
    pieces = [p for p in t.tgt_tokens if p != "</s>"]
    src_text = clean_text(src_text)  # the words of the text the translator saw
    return (attn, t.src_tokens, pieces, tokenizer_kinds(translator), len(src_text.split()),
            len(t.text.split()))


# -- symmetrisation -------------------------------------------------------------------------

_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def symmetrize(fwd: Links, rev: Links, how: str = "grow-diag") -> Links:
    """Combine forward and reverse links, both as (source word, target word).

    grow-diag (Koehn's Moses): start from the intersection; repeatedly, for each link and
    each of its 8 neighbours (horizontal, vertical, diagonal) that is in the union, add the
    neighbour when its source or its target word is still unaligned, until nothing is added.
    grow-diag-final: then add each union link (forward links first, then reverse, in order)
    whose source or target word is still unaligned."""
    fwd, rev = set(fwd), set(rev)
    if how == "intersect":
        return fwd & rev
    if how == "union":
        return fwd | rev
    if how not in SYMMETRIZE:
        raise ValueError(f"symmetrisation {how!r}: expected one of {', '.join(SYMMETRIZE)}")
    union = fwd | rev
    a = fwd & rev
    src_done = {i for i, _ in a}
    tgt_done = {j for _, j in a}

    def add(i: int, j: int) -> None:
        a.add((i, j))
        src_done.add(i)
        tgt_done.add(j)

    added = True
    while added:
        added = False
        for i, j in sorted(a):
            for di, dj in _NEIGHBOURS:
                n = (i + di, j + dj)
                if n in union and n not in a and (n[0] not in src_done or n[1] not in tgt_done):
                    add(*n)
                    added = True
    if how == "grow-diag-final":
        for links in (fwd, rev):
            for i, j in sorted(links):
                if (i, j) not in a and (i not in src_done or j not in tgt_done):
                    add(i, j)
    return a


def average(fwd: np.ndarray, rev: np.ndarray, method: str = "threshold",
            threshold: float = 0.5) -> Links:
    """Soft symmetrisation: (source word, target word) links picked by ``method``'s rule
    (argmax of each target word's row, or every weight >= ``threshold``) from the mean of the
    forward word weights (target words, source words) and the transposed reverse ones
    (source words, target words), both from :func:`word_rows`. A link both directions
    half-believe can pass where a hard intersection or union of their links would drop or
    add it."""
    f, r = np.asarray(fwd, dtype=np.float64), np.asarray(rev, dtype=np.float64).T
    if f.shape != r.shape:
        raise ValueError(f"forward word weights {f.shape} and reverse ones transposed "
                         f"{r.shape} differ: not the same sentence pair")
    return _pick((f + r) / 2, method, threshold) if f.size else set()


def transpose(links: Links | None) -> Links | None:
    return None if links is None else {(j, i) for i, j in links}


# -- scoring --------------------------------------------------------------------------------


def score(links: Sequence[Links | None], gold: Sequence[dg.GoldAlignment]) -> dict[str, Any]:
    """AER, precision and recall over the sentences with links (None: skipped)."""
    totals = [0, 0, 0, 0]
    used = 0
    for a, g in zip(links, gold):
        if a is None:
            continue
        for k, v in enumerate(dg.aer_counts(a, g)):
            totals[k] += v
        used += 1
    e = dg.aer(*totals)
    p, r = dg.precision_recall(*totals)
    return {"aer": e, "precision": p, "recall": r, "sentences": used,
            "skipped": len(links) - used, "links": totals[0], "sure": totals[1]}


# -- attendo align --------------------------------------------------------------------------

# -- guided alignment (train.guided_alignment) ----------------------------------------------


def guided_targets(path: str | Path, src_texts: Sequence[str], tgt_texts: Sequence[str],
                   keep: Sequence[int], src_codec, tgt_codec, shift: bool = False
                   ) -> tuple[list[np.ndarray], int]:
    """Piece-level links for guided alignment training, from a Pharaoh file of word links
    (0-based ``i-j``, source word i, target word j; ``i?j`` counts too), one line per pair of
    ``src_texts``/``tgt_texts`` (the training corpus in file order).

    **Piece rule**: words are grouped into pieces by :func:`attendo.diagnostics.word_groups`;
    every piece of target word j is linked to every piece of every source word linked to j,
    so the target distribution of a target piece is uniform over those source pieces
    (:func:`attendo.data.batching.collate` normalises the rows). Pieces of unlinked target
    words (and the char tokenizer's "▁" pieces, which belong to no word) get no target and
    contribute nothing. A pair whose pieces do not group into as many words as its text has
    (a normalising tokenizer) gets no links and is counted in the second return value.

    **Rows**: the link of target piece t goes to attention row t, the row that predicts it
    (read by the ``argmax`` and ``threshold`` methods); with ``shift`` to row t + 1, whose
    input is piece t (read by the ``shift`` method; the row that predicts ``</s>`` takes the
    last piece's links).

    Returns, for each pair at ``keep`` (the indices :func:`~attendo.data.prepare.encode_pairs`
    kept), an int32 array (K, 2) of (attention row, source piece) links, and the number of
    such pairs left without links because their pieces do not map onto their words."""
    gold = dg.read_gold_alignments(path)
    if len(gold) != len(src_texts):
        raise dg.AlignmentFileError(
            f"{path}: {len(gold)} lines, but the training corpus has {len(src_texts)} pairs "
            "(train.guided_alignment.file needs one line of links per training pair, in "
            "data.train_src order)")
    kinds = src_codec.tokenizer.kind, tgt_codec.tokenizer.kind
    out: list[np.ndarray] = []
    unmapped = 0
    for i in keep:
        g, s_text, t_text = gold[i], src_texts[i], tgt_texts[i]
        ns, nt = len(s_text.split()), len(t_text.split())
        for a, b in sorted(g.possible):
            if a >= ns or b >= nt:
                raise dg.AlignmentFileError(
                    f"{path}:{g.line}: link {a}-{b} is outside the training pair (source has "
                    f"{ns} words, target {nt}; expected 0-based i < {ns}, j < {nt})")
        sg = dg.word_groups(src_codec.pieces(s_text), kinds[0])
        tg = dg.word_groups(tgt_codec.pieces(t_text), kinds[1])
        if len(sg) != ns or len(tg) != nt:
            unmapped += 1
            out.append(np.zeros((0, 2), np.int32))
            continue
        pairs = sorted({(t + shift, s) for a, b in g.possible for t in tg[b] for s in sg[a]})
        out.append(np.asarray(pairs, np.int32).reshape(-1, 2))
    return out, unmapped


# -- attendo align-prior --------------------------------------------------------------------

ALIGN_EXTRA_HINT = "pip install 'attendo[align]'"


def eflomal_links(src: Sequence[str], tgt: Sequence[str], lowercase: bool = False
                  ) -> tuple[list[Links], list[Links]]:
    """eflomal's (Östling & Tiedemann 2016) forward and reverse links of each sentence pair,
    both as (source word, target word) over whitespace words."""
    import tempfile

    try:
        import eflomal
    except ImportError:
        raise ValueError("attendo align-prior needs the eflomal aligner, an optional "
                         f"dependency: {ALIGN_EXTRA_HINT}") from None
    norm = (lambda x: x.lower()) if lowercase else (lambda x: x)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, lines in (("src", src), ("tgt", tgt)):
            files[name] = Path(tmp) / f"{name}.txt"
            files[name].write_text("".join(" ".join(norm(x).split()) + "\n" for x in lines),
                                   encoding="utf-8")
        fwd_path, rev_path = Path(tmp) / "fwd", Path(tmp) / "rev"
        with open(files["src"], encoding="utf-8") as sf, open(files["tgt"], encoding="utf-8") as tf:
            eflomal.Aligner().align(sf, tf, links_filename_fwd=str(fwd_path),
                                    links_filename_rev=str(rev_path))
        # eflomal writes both directions as (source word, target word)
        fwd = [g.sure for g in dg.read_gold_alignments(fwd_path)]
        rev = [g.sure for g in dg.read_gold_alignments(rev_path)]
    if len(fwd) != len(src) or len(rev) != len(src):
        raise RuntimeError(f"eflomal returned {len(fwd)} forward and {len(rev)} reverse lines "
                           f"for {len(src)} sentence pairs")
    return fwd, rev
