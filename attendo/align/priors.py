"""Word links that come from outside the model: the Pharaoh file guided alignment trains on
(``train.guided_alignment``), and eflomal's links of a training corpus (``attendo
align-prior``), which make such a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import diagnostics as dg
from ..errors import UsageError
from .links import Links


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


# -- eflomal (attendo align-prior) ---------------------------------------------------------

ALIGN_EXTRA_HINT = "pip install 'attendo[align]'"


def eflomal_links(src: Sequence[str], tgt: Sequence[str], lowercase: bool = False
                  ) -> tuple[list[Links], list[Links]]:
    """eflomal's (Östling & Tiedemann 2016) forward and reverse links of each sentence pair,
    both as (source word, target word) over whitespace words."""
    import tempfile

    try:
        import eflomal
    except ImportError:
        raise UsageError("attendo align-prior needs the eflomal aligner, an optional "
                         f"dependency: {ALIGN_EXTRA_HINT}") from None
    norm = (lambda x: x.lower()) if lowercase else (lambda x: x)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name, lines in (("src", src), ("tgt", tgt)):
            (d / f"{name}.txt").write_text("".join(" ".join(norm(x).split()) + "\n" for x in lines),
                                           encoding="utf-8")
        with (open(d / "src.txt", encoding="utf-8") as sf,
              open(d / "tgt.txt", encoding="utf-8") as tf):
            eflomal.Aligner().align(sf, tf, links_filename_fwd=str(d / "fwd"),
                                    links_filename_rev=str(d / "rev"))
        # eflomal writes both directions as (source word, target word)
        fwd = [g.sure for g in dg.read_gold_alignments(d / "fwd")]
        rev = [g.sure for g in dg.read_gold_alignments(d / "rev")]
    if len(fwd) != len(src) or len(rev) != len(src):
        raise RuntimeError(f"eflomal returned {len(fwd)} forward and {len(rev)} reverse lines "
                           f"for {len(src)} sentence pairs")
    return fwd, rev
