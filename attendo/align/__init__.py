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

**Modules**: :mod:`.links` (attention rows to word links), :mod:`.combine` (symmetrisation,
scoring), :mod:`.priors` (guided alignment's links, eflomal), :mod:`.run` (``attendo align``
and ``attendo align-prior`` on files). The names below are the package's interface.
"""

from __future__ import annotations

import importlib

# the package's interface, each name from its module, imported on first use (PEP 562), so that
# the command line's option names (.names) load without torch
_HOME = {
    **dict.fromkeys(("METHODS", "SOFT_SYMMETRIZE", "SYMMETRIZE", "WORD_RULES"), "names"),
    **dict.fromkeys(("average", "score", "symmetrize", "transpose"), "combine"),
    **dict.fromkeys(("Links", "align_pairs", "forced_attention", "is_transformer",
                     "pair_word_rows", "pick_heads", "pick_links", "piece_links",
                     "pieces_to_words", "tokenizer_kinds", "translation_links",
                     "translation_word_rows", "word_links", "word_rows", "word_weights"), "links"),
    **dict.fromkeys(("ALIGN_EXTRA_HINT", "eflomal_links", "guided_targets"), "priors"),
    **dict.fromkeys(("PAIR_HINT", "AlignResult", "align_files", "check_options",
                     "format_score", "prior_lines"), "run"),
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


__all__ = [
    "ALIGN_EXTRA_HINT", "METHODS", "PAIR_HINT", "SOFT_SYMMETRIZE", "SYMMETRIZE", "WORD_RULES",
    "AlignResult", "Links", "align_files", "align_pairs", "average", "check_options",
    "eflomal_links", "forced_attention", "format_score", "guided_targets", "is_transformer",
    "pair_word_rows", "pick_heads", "pick_links", "piece_links", "pieces_to_words",
    "prior_lines", "score", "symmetrize", "tokenizer_kinds", "translation_links",
    "translation_word_rows", "transpose", "word_links", "word_rows", "word_weights",
]
