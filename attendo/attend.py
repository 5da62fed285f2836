"""What ``attendo attend`` does: the attention of a translator on given sentences (its own
translations, or teacher-forced on given targets), the word links to draw over it (gold, and
read off the attention), its PNG heatmaps (:mod:`attendo.viz`) and its explorer page
(:mod:`attendo.explorer`). Reading the sentences and writing the page are the caller's."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import diagnostics as dg
from .align import forced_attention, tokenizer_kinds, translation_links
from .data.corpus import read_lines
from .errors import UsageError
from .explorer import explorer_page, model_summary, sentence_records
from .translator import Translation
from .viz import (
    LinkSet,
    alignment_groups,
    draw_translation,
    gold_link_sets,
    plot_image_attention,
)

log = logging.getLogger("attendo")


@dataclass
class Attended:
    """Per sentence: its Translation (with attention), the encoder's self-attention (or
    None) and the link sets to draw (or None). ``forced``: teacher-forced on given targets."""

    outs: list[Translation]
    selfs: list
    links: list
    forced: bool


def check_options(tgt: str | None, beam: int | None, n_best: int | None,
                  align_gold: str | None, align_threshold: float) -> None:
    """The options of ``attendo attend`` that do not go together, before the model loads."""
    if tgt and (beam is not None or n_best is not None):
        raise UsageError("--beam and --n-best are for translating; with --tgt the attention is "
                         "teacher-forced on the given targets")
    if align_gold and not tgt:
        raise UsageError("--align-gold links name words of the reference, not of the model's "
                         "translation: give the references with --tgt FILE (the attention is "
                         "then teacher-forced on them)")
    if not 0.0 < align_threshold <= 1.0:
        raise UsageError(f"--align-threshold must be in (0, 1], got {align_threshold}")


def read_targets(path: str, n_texts: int) -> list[str]:
    """``--tgt``: one target sentence per input sentence."""
    refs = read_lines(path, max_chars=None)
    if len(refs) != n_texts:
        raise UsageError(f"{path}: {len(refs)} lines, but there are {n_texts} input "
                         "sentences (--tgt needs one target per sentence, in order)")
    return refs


def read_gold(path: str, fmt: str, texts: list[str], refs: list[str]) -> list:
    """``--align-gold``: one line of links per sentence, each inside its sentence pair."""
    gold = dg.read_gold_alignments(path, fmt)
    if len(gold) != len(texts):
        raise dg.AlignmentFileError(
            f"{path}: {len(gold)} lines, but there are {len(texts)} input sentences "
            "(--align-gold needs one line of links per sentence, in order)")
    maybe, base = dg.GOLD_FORMATS[fmt]
    for k, (g, src, ref) in enumerate(zip(gold, texts, refs)):
        ns, nt = len(src.split()), len(ref.split())
        for i, j in sorted(g.possible):
            if i >= ns or j >= nt:
                sep = "-" if (i, j) in g.sure else maybe
                raise dg.AlignmentFileError(
                    f"{path}:{g.line}: link {i + base}{sep}{j + base} is outside sentence "
                    f"{k + 1} (its source has {ns} words, its target {nt}; {fmt} word indices "
                    f"are {base}-based)")
    return gold


def forced_outputs(translator, texts: list[str], refs: list[str], layer: int | None,
                   head: int | None) -> list[Translation]:
    """Translations holding the attention teacher-forced on the given targets ``refs``
    (``text`` the target, no score; no attention where a side is empty)."""
    forced = forced_attention(translator, texts, refs, layer=layer, head=head)
    return [Translation(ref, [], [], math.nan, math.nan, None) if fa is None else
            Translation(ref, fa[0], fa[1] + ["</s>"], math.nan, math.nan, fa[2])
            for ref, fa in zip(refs, forced)]


def link_sets(translator, texts: list[str], outs: list[Translation], gold: list | None,
              show_alignment: str | None, threshold: float = 0.5) -> list:
    """Per sentence, the link sets to draw (gold, and/or read off the attention with
    ``show_alignment``, a method of :mod:`attendo.align`), or None."""
    if gold is None and not show_alignment:
        return [None] * len(outs)
    kinds = tokenizer_kinds(translator)
    out: list = []
    for k, (src, o) in enumerate(zip(texts, outs)):
        if o.attention is None or o.attention.size == 0:
            out.append(None)
            continue
        sg, tg = alignment_groups(o.src_tokens, o.tgt_tokens, kinds)
        if len(sg) != len(src.split()) or len(tg) != len(o.text.split()):
            log.warning("sentence %d: its pieces do not group into its whitespace words; no "
                        "alignment drawn", k + 1)
            out.append(None)
            continue
        sets = gold_link_sets(gold[k].sure, gold[k].possible) if gold is not None else []
        if show_alignment:
            links = translation_links(translator, o, src, method=show_alignment,
                                      threshold=threshold)
            sets.append(LinkSet("model", links or set(), f"attention {show_alignment}"))
        out.append(sets or None)
    return out


def attend(translator, texts: list[str], refs: list[str] | None = None, gold: list | None = None,
           *, beam: int | None = None, n_best: int = 1, layer: int | None = None,
           head: int | None = None, show_alignment: str | None = None,
           align_threshold: float = 0.5) -> Attended:
    """The attention to draw for ``texts``: the model's translations (``beam``, ``n_best``
    kept) or, given ``refs``, teacher-forced on them (``layer``/``head`` pick a Transformer's
    cross-attention); the encoder's self-attention; and the links to draw."""
    if refs is None:
        outs = translator.translate(texts, beam=beam, n_best=n_best, return_attention=True)
    else:
        outs = forced_outputs(translator, texts, refs, layer, head)
    selfs = translator.encoder_self_attention([o.src_tokens for o in outs])
    links = link_sets(translator, texts, outs, gold, show_alignment, align_threshold)
    return Attended(outs, selfs, links, refs is not None)


def draw_pictures(translator, texts: list[str], a: Attended, out_dir: Path,
                  merge: bool = False, layer: int | None = None, head: int | None = None,
                  dpi: int = 100) -> Iterator[tuple[int, list[Path] | None, str]]:
    """Draw each sentence's heatmaps into ``out_dir``; yields (sentence index, the PNGs
    written, the translation) or, for a sentence with nothing to draw, (index, None, why)."""
    kinds = tokenizer_kinds(translator)
    for i, (src, o, sa) in enumerate(zip(texts, a.outs, a.selfs)):
        if o.attention is None or o.attention.size == 0:
            yield i, None, "empty source or target" if a.forced else "empty input"
            continue
        title = f"{src} -> {o.text}"
        title = title[:120] + ("..." if len(title) > 120 else "")
        # with given targets, layer/head chose the cross-attention (no per-head grids): they
        # still pick the encoder's self-attention
        pick = not a.forced or sa is not None
        if a.forced:  # say what the main heatmap shows
            title += " [given target" + "".join(
                f", {k} {v}" for k, v in (("layer", layer), ("head", head))
                if v is not None) + "]"
        paths = draw_translation(o, out_dir, f"attention-{i:03d}", title, merge=merge,
                                 layer=layer if pick else None, head=head if pick else None,
                                 self_attention=sa, dpi=dpi, alignment=a.links[i], kinds=kinds)
        yield i, paths, o.text


def explorer_html(translator, texts: list[str], a: Attended, merge: bool, name: str) -> str:
    """The explorer page (one self-contained HTML file) of every sentence."""
    records = sentence_records(translator, texts, a.outs, a.selfs, a.links, merge)
    return explorer_page({"model": model_summary(translator, name), "sentences": records},
                         title=f"attendo explorer: {name}")


def draw_image_attention(translator, paths: list[str], out_dir: Path, beam: int | None = None,
                         dpi: int = 100) -> Iterator[tuple[int, Path, str]]:
    """An image model's attention: per image, its caption and the picture of
    :func:`attendo.viz.plot_image_attention` (``out_dir/IMAGE-STEM.png``)."""
    outs = translator.translate(paths, beam=beam, return_attention=True)
    for i, (path, t) in enumerate(zip(paths, outs)):
        pixels = translator.src.encode(path).pixels  # (C, H, W), as the model read it
        grid = translator.model.encoder.grid_shape(pixels.shape[1], pixels.shape[2])
        out = out_dir / f"{i + 1:03d}-{Path(path).stem}.png"
        yield i, plot_image_attention(pixels, t.attention, grid, t.tgt_tokens, out,
                                      title=f"{Path(path).name}: {t.text}", dpi=dpi), t.text
