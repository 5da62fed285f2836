"""What ``attendo align`` and ``attendo align-prior`` do with their files: check the options,
read the sentences (and gold links), align them with the translators given, and hand back the
Pharaoh lines to write and the score to print. Writing them is the caller's."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import diagnostics as dg
from ..data.corpus import read_lines, read_parallel
from ..errors import UsageError
from .combine import average, score, symmetrize, transpose
from .links import align_pairs, pair_word_rows, translation_links, translation_word_rows
from .priors import eflomal_links

log = logging.getLogger("attendo")

PAIR_HINT = ("attendo {cmd} aligns every pair: --src and --tgt need a non-empty sentence on "
             "every line; fix or remove this line in both files")


@dataclass
class AlignResult:
    """``lines``: one Pharaoh line per sentence pair (empty when it could not be aligned);
    ``hyps``: the model's translations the links refer to (``translate=True``), else None;
    ``score``: :func:`attendo.align.score` against the gold links, when given."""

    lines: list[str]
    hyps: list[str] | None = None
    score: dict[str, Any] | None = None


def check_options(translate: bool, tgt: str | None, gold: str | None, symmetrize: str | None,
                  reverse_model: str | None, words: str, threshold: float,
                  output: str | None = None, hyp_output: str | None = None) -> None:
    """The options of ``attendo align`` that do not go together, before any model loads."""
    if translate == bool(tgt):
        raise UsageError("give either --tgt (align given pairs) or --translate (align the "
                         "model's own translations)")
    if gold and translate:
        raise UsageError("--gold scores given pairs: use --tgt, not --translate")
    if symmetrize and not reverse_model:
        raise UsageError("--symmetrize needs --reverse-model (the target -> source model)")
    if symmetrize == "average" and words != "mean":
        raise UsageError("--symmetrize average averages word weights: add --words mean")
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"--threshold must be in (0, 1], got {threshold}")
    for path, flag in ((output, "--output"), (hyp_output, "--hyp-output")):
        if path and Path(path).is_dir():
            raise UsageError(f"{path}: is a directory, expected a file path for {flag}")
    if hyp_output and not translate:
        raise UsageError("--hyp-output is for --translate")


def align_files(fwd, src_path: str, tgt_path: str | None = None, rev=None, *,
                translate: bool = False, method: str = "argmax", threshold: float = 0.5,
                words: str = "any", layer: int | None = None, head: int | None = None,
                how: str | None = None, gold_path: str | None = None,
                gold_format: str = "pharaoh", beam: int | None = None,
                batch_size: int = 64) -> AlignResult:
    """Word links of the sentences in ``src_path`` with those in ``tgt_path`` (teacher-forced
    attention of translator ``fwd``) or, with ``translate``, with ``fwd``'s own translations;
    with the reverse translator ``rev`` symmetrised by ``how`` (default grow-diag; ``average``
    averages word weights). ``gold_path`` adds the score against those gold links."""
    if translate:
        src = read_lines(src_path, max_chars=None)
    else:
        src, tgt, _ = read_parallel(src_path, tgt_path, max_chars=10**6,
                                    hint=PAIR_HINT.format(cmd="align"))
    gold = None
    if gold_path:
        gold = dg.read_gold_alignments(gold_path, gold_format)
        dg.check_gold(gold, gold_path, [len(s.split()) for s in src],
                      [len(t.split()) for t in tgt])
    soft = how == "average"
    heads = dict(method=method, layer=layer, head=head)
    opts = dict(heads, threshold=threshold, words=words)
    if translate:
        outs = fwd.translate(src, beam=beam, return_attention=True)
        tgt = [o.text for o in outs]
        if soft:
            weights = [translation_word_rows(fwd, o, s, **heads) for o, s in zip(outs, src)]
        else:
            links = [translation_links(fwd, o, s, **opts) for o, s in zip(outs, src)]
    elif soft:
        weights = pair_word_rows(fwd, src, tgt, batch_size=batch_size, **heads)
    else:
        links = align_pairs(fwd, src, tgt, batch_size=batch_size, **opts)
    if soft:
        back_w = pair_word_rows(rev, tgt, src, batch_size=batch_size, **heads)
        links = [None if f is None or b is None else average(f, b, method, threshold)
                 for f, b in zip(weights, back_w)]
    elif rev is not None:
        back = [transpose(x) for x in align_pairs(rev, tgt, src, batch_size=batch_size, **opts)]
        links = [None if f is None or b is None else symmetrize(f, b, how or "grow-diag")
                 for f, b in zip(links, back)]
    skipped = sum(x is None for x in links)
    if skipped:
        log.warning("%d of %d sentence pairs could not be mapped from pieces to words (or "
                    "have an empty side): written as empty lines", skipped, len(links))
    return AlignResult([dg.format_alignment_line(x or ()) for x in links],
                       tgt if translate else None,
                       None if gold is None else score(links, gold))


def format_score(r: dict[str, Any]) -> str:
    """One line of :func:`attendo.align.score`'s result."""
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    return (f"AER {fmt(r['aer'])}  precision {fmt(r['precision'])}  recall "
            f"{fmt(r['recall'])}  ({r['sentences']} sentences, {r['skipped']} skipped; "
            f"links {r['links']}, sure {r['sure']})")


def prior_lines(src_path: str, tgt_path: str, lowercase: bool = False) -> tuple[list[str], int]:
    """``attendo align-prior``: eflomal forward and reverse word links of a parallel corpus,
    symmetrised with grow-diag, as Pharaoh lines (one per pair) over the whitespace words of
    the raw text (what ``train.guided_alignment.file`` reads), and the number of links."""
    src, tgt, _ = read_parallel(src_path, tgt_path, max_chars=10**6,
                                hint=PAIR_HINT.format(cmd="align-prior"))
    fwd, rev = eflomal_links(src, tgt, lowercase)
    links = [symmetrize(f, r, "grow-diag") for f, r in zip(fwd, rev)]
    return [dg.format_alignment_line(x) for x in links], sum(len(x) for x in links)
