"""The attention explorer: one self-contained HTML page (inline CSS, JS and JSON data; no
network) with the translation, a heatmap to hover, a layer/head selector, the n-best list,
p_gen/coverage where the model has them, and word alignment links (gold and/or read off the
attention) over the heatmap, with a toggle.

The same page and script serve two uses:

- ``attendo attend --html out.html``: :func:`explorer_page` embeds the records of a file of
  sentences as JSON (``mode: "file"``).
- ``attendo serve``: :func:`explorer_page` with ``live=True`` adds a form; the script posts
  to ``translate`` (same origin) and draws the records the server sends back.

:func:`sentence_record` turns a :class:`~attendo.translator.Translation` into the record both
use, so a file and the server agree on the format. Weights are rounded to 3 decimals. An
image model's record has no source tokens: its attention is over the image's regions (the
server adds the ``grid`` they lie on, and the page draws each output symbol's attention over
the uploaded picture).
Alignment links go into the best hypothesis as ``links``: one entry per
:class:`~attendo.viz.LinkSet`, ``{"kind", "label", "links": [[i, j], ...] (source word,
output word), "cells": [[row, col], ...]}``, the cells of the heatmap the script outlines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from .align import tokenizer_kinds
from .viz import LinkSet, alignment_cells, merge_matrix, merge_subwords

DIGITS = 3


def _round(x: np.ndarray) -> Any:
    """Nested lists of floats with DIGITS decimals (JSON has no NaN: non-finite values -> 0)."""
    a = np.nan_to_num(np.asarray(x, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    return np.round(a, DIGITS).tolist()


def _num(x: float) -> float | None:
    return round(float(x), 4) if math.isfinite(x) else None


def _hyp_record(t, n_src: int, src_groups, merge: bool, heads: bool) -> dict:
    """One hypothesis: text, score, output tokens, and what the model returned per token."""
    tgt = list(t.tgt_tokens)
    rec: dict[str, Any] = {"text": t.text, "score": _num(t.score), "tgt_tokens": tgt}
    tgt_groups = None
    if merge:
        rec["tgt_tokens"], tgt_groups = merge_subwords(tgt)
    T = len(tgt)
    if t.attention is not None and T and n_src:
        rec["attention"] = _round(merge_matrix(t.attention[:T, :n_src], tgt_groups, src_groups))
    strips, matrices = {}, {}
    for name, v in (t.info or {}).items():
        v = np.asarray(v, dtype=float)
        if name == "attn_heads":
            if heads and v.ndim == 4 and T and n_src:  # (T, L, H, S) -> (L, H, T, S)
                w = v[:T, :, :, :n_src].transpose(1, 2, 0, 3)
                rec["heads"] = _round(merge_matrix(w, tgt_groups, src_groups))
        elif v.ndim == 1 and len(v) >= T:  # per output token, e.g. p_gen
            v = v[:T]
            strips[name] = _round(np.array([v[g].mean() for g in tgt_groups]) if merge else v)
        elif v.ndim == 2 and v.shape[0] >= T and v.shape[1] >= n_src and T and n_src:
            matrices[name] = _round(merge_matrix(v[:T, :n_src], tgt_groups, src_groups))
    if strips:
        rec["strips"] = strips
    if matrices:
        rec["matrices"] = matrices  # e.g. coverage (T, S), before each step's attention
    return rec


def link_records(alignment: Sequence[LinkSet], src_tokens: list[str], tgt_tokens: list[str],
                 kinds: tuple[str, str] | None, merge: bool = False) -> list[dict]:
    """The ``links`` entries of a hypothesis: each link set's word links and its heatmap
    cells (see :func:`attendo.viz.alignment_cells`), sorted; empty sets left out."""
    out = []
    for ls, cells in alignment_cells(alignment, src_tokens, tgt_tokens, kinds, merge):
        if ls.links:
            out.append({"kind": ls.kind, "label": ls.label,
                        "links": [list(x) for x in sorted(ls.links)],
                        "cells": [list(x) for x in sorted(cells)]})
    return out


def sentence_record(source: str, t, self_attention: np.ndarray | None = None,
                    merge: bool = False, alignment: Sequence[LinkSet] | None = None,
                    kinds: tuple[str, str] | None = None) -> dict:
    """The explorer's record of one translated sentence (JSON-ready).

    t: a Translation (its n-best in ``t.nbest``); self_attention: encoder self-attention
    (L, H, S, S) or None. merge: label words instead of pieces (weights merged as in
    :func:`attendo.viz.merge_matrix`). Per-head cross-attention is kept for the best
    hypothesis only, to keep files of many sentences small.
    alignment: word links of the best hypothesis (source word, word of ``t.text``), kept as
    its ``links`` when it has attention to draw them on; kinds: the (source, target)
    tokenizer kinds that group pieces into words (None: the tokens are the words).
    """
    src = list(t.src_tokens)
    rec: dict[str, Any] = {"source": source, "src_tokens": src, "text": t.text,
                           "score": _num(t.score)}
    # memory positions: the source tokens, or an image model's regions (no tokens)
    n_src = len(src) if src or t.attention is None else np.shape(t.attention)[1]
    src_groups = None
    if merge:
        rec["src_tokens"], src_groups = merge_subwords(src)
    hyps = t.nbest or [t]
    rec["hyps"] = [_hyp_record(h, n_src, src_groups, merge, k == 0) for k, h in enumerate(hyps)]
    if alignment and "attention" in rec["hyps"][0]:
        links = link_records(alignment, src, list(hyps[0].tgt_tokens), kinds, merge)
        if links:
            rec["hyps"][0]["links"] = links
    if self_attention is not None and len(src):
        w = np.asarray(self_attention)[..., : len(src), : len(src)]
        rec["self_attention"] = _round(merge_matrix(w, src_groups, src_groups))
    return rec


def model_summary(translator, name: str = "") -> dict:
    """What the page shows about the model: its name, input ("text" or "image") and shape."""
    m = translator.cfg.model
    out: dict[str, Any] = {"name": name, "input": "image" if m.encoder == "image" else "text",
                           "encoder": m.encoder, "decoder": m.decoder}
    if m.decoder == "transformer":
        out.update(layers=m.dec_layers, heads=m.heads, attn_layer=m.attn_layer % m.dec_layers)
    else:
        out["attention"] = m.attention
    if m.encoder == "transformer":
        out.update(enc_layers=m.enc_layers, heads=m.heads)
    return out


def _asset(name: str) -> str:
    return resources.files("attendo").joinpath("static", name).read_text(encoding="utf-8")


def _script_json(obj: Any) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the element or open a comment."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def explorer_page(data: dict | None = None, live: bool = False, title: str = "attendo explorer"
                  ) -> str:
    """The explorer as one HTML string. data: {"model": ..., "sentences": [records]}; live:
    the page posts to ``translate`` on its own server instead of showing fixed data."""
    payload = {"mode": "live" if live else "file", **(data or {"sentences": []})}
    html = _asset("explorer.html")
    for key, value in (("{{TITLE}}", _escape(title)), ("{{CSS}}", _asset("explorer.css")),
                       ("{{JS}}", _asset("explorer_images.js") + _asset("explorer.js"))):
        html = html.replace(key, value)
    return html.replace("{{DATA}}", _script_json(payload))  # last: data may hold any text


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def sentence_records(translator, texts: list[str], outs: list, selfs: list,
                     alignments: Sequence[Sequence[LinkSet] | None] | None = None,
                     merge: bool = False) -> list[dict]:
    """:func:`sentence_record` of each translated text (outs from ``translate(...,
    return_attention=True)``, selfs their encoder self-attention or None each, alignments
    one list of link sets or None per sentence)."""
    alignments = alignments if alignments is not None else [None] * len(outs)
    # an image model has no source tokenizer, and no word links
    kinds = tokenizer_kinds(translator) if any(alignments) else None
    return [sentence_record(s, o, a, merge, alignment=al, kinds=kinds)
            for s, o, a, al in zip(texts, outs, selfs, alignments)]
