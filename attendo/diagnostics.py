"""Diagnostics of the encoder-decoder's three failures, and of its attention (DESIGN.md sec. 3).

Pure functions on text, token lists and numpy arrays, so each can be tested without a model;
:mod:`attendo.evaluate` feeds them a model's outputs.

- **Length**: corpus BLEU per bucket of source length in whitespace words (Bahdanau et al.
  2015, figure 2).
- **Repetition**: the share of an output's n-grams that repeat an earlier n-gram of the same
  output, n = 1..4, over the corpus, beside the same figure for the references (See et al.
  2017, figure 4).
- **Rare and unknown words**: of the source words that the model's vocabulary cannot encode
  (*oov*) or saw at most ``k`` times in training (*rare*) and that appear in the reference,
  the share that the output reproduces, and of those it carries over, the share the reference
  has too; and the share of output tokens that are ``<unk>``.
- **Attention**: entropy of the attention rows; alignment error rate, precision and recall
  (Och & Ney 2003) against gold links (:mod:`attendo.gold`; its file and AER names are
  re-exported here).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .data.vocab import Vocab
from .gold import (  # noqa: F401  (re-exported: gold files and AER are diagnostics too)
    GOLD_FORMATS,
    AlignmentFileError,
    GoldAlignment,
    aer,
    aer_counts,
    check_gold,
    format_alignment_line,
    precision_recall,
    read_gold_alignments,
    word_groups,
)

# Source-length buckets in words: (lowest, highest or None for open-ended)
BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 10), (11, 20), (21, 30), (31, 40), (41, None))


# -- length ---------------------------------------------------------------------------------
def bucket_label(bucket: tuple[int, int | None]) -> str:
    lo, hi = bucket
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def length_bucket(n_words: int) -> int:
    """Index into :data:`BUCKETS` of a source of ``n_words`` words (an empty source counts
    in the first bucket)."""
    return next(i for i, (_, hi) in enumerate(BUCKETS) if hi is None or n_words <= hi)


def length_groups(srcs: Sequence[str]) -> list[list[int]]:
    """Indices of the sources in each bucket of :data:`BUCKETS` (source length in words)."""
    groups: list[list[int]] = [[] for _ in BUCKETS]
    for i, s in enumerate(srcs):
        groups[length_bucket(len(s.split()))].append(i)
    return groups


def bleu_by_length(srcs: Sequence[str], hyps: Sequence[str], refs: Sequence[str]) -> list[dict]:
    """Corpus BLEU (sacreBLEU, 13a) of the sentences in each source-length bucket.

    Returns one ``{"bucket": "1-10", "sentences": n, "bleu": score or None}`` per bucket, in
    order; an empty bucket has ``bleu: None``.
    """
    from .metrics import bleu

    out = []
    for b, idx in zip(BUCKETS, length_groups(srcs)):
        score = bleu([hyps[i] for i in idx], [refs[i] for i in idx]).score if idx else None
        out.append({"bucket": bucket_label(b), "sentences": len(idx),
                    "bleu": None if score is None else round(score, 2)})
    return out


# -- repetition -----------------------------------------------------------------------------
def duplicate_ngrams(tokens: Sequence[str], n: int) -> tuple[int, int]:
    """(n-grams that repeat an earlier n-gram of the same sequence, all n-grams)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams)), len(grams)


def repetition(token_lists: Iterable[Sequence[str]], max_n: int = 4) -> dict[str, float | None]:
    """Duplicate n-gram share in percent for n = 1..max_n, pooled over all sequences:
    100 * sum(duplicates) / sum(n-grams). ``None`` when there is no n-gram of that size."""
    dups, total = [0] * (max_n + 1), [0] * (max_n + 1)
    for toks in token_lists:
        for n in range(1, max_n + 1):
            d, t = duplicate_ngrams(toks, n)
            dups[n] += d
            total[n] += t
    return {str(n): (round(100.0 * dups[n] / total[n], 2) if total[n] else None)
            for n in range(1, max_n + 1)}


def words_13a(text: str) -> list[str]:
    """sacreBLEU's 13a tokenization (punctuation split off), the units BLEU counts."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(text).split()


# -- rare and unknown words -----------------------------------------------------------------
def strip_punct(word: str) -> str:
    """``word`` without leading and trailing punctuation ('"Merkel,"' -> 'Merkel')."""
    i, j = 0, len(word)
    while i < j and unicodedata.category(word[i]).startswith("P"):
        i += 1
    while j > i and unicodedata.category(word[j - 1]).startswith("P"):
        j -= 1
    return word[i:j]


WORD_CLASSES = ("oov", "rare", "split")  # what rare_word_reproduction counts, besides "any"


def vocab_word_classifier(pieces: Callable[[str], list[str]], vocab: Vocab, max_count: int,
                          subword: bool = False) -> Callable[[str], str]:
    """Classify a source word as ``"oov"``, ``"rare"``, ``"split"`` or ``"common"`` from
    what the model directory holds: the source tokenizer (``pieces``) and the vocabulary
    with its training counts (over the text it was built on: both sides when joint).

    - oov: one of the word's pieces is not in the vocabulary (the model reads ``<unk>``).
    - rare: otherwise, the smallest training count among its pieces is <= ``max_count``.
      With a word vocabulary that is the word's own count. With subwords it is an upper
      bound on the word's count (each occurrence of the word adds one to each of its
      pieces), so few words qualify: most rare words are split into frequent pieces.
    - split (``subword`` tokenizers only: bpe, unigram): otherwise, the tokenizer splits the
      word into two or more pieces (punctuation pieces not counted). BPE and unigram keep
      frequent words whole, so these are the words too infrequent to get a piece of their
      own: on Multi30k's test set, mostly names and numbers.
    - common: everything else. Without stored counts (``vocab.counts`` is None) nothing
      is rare.
    """
    counts = vocab.counts or {}

    def classify(word: str) -> str:
        ps = pieces(word)
        if not ps:
            return "common"
        if any(i == Vocab.UNK for i in vocab.encode(ps)):
            return "oov"
        if vocab.counts is not None and min(counts.get(p, 0) for p in ps) <= max_count:
            return "rare"
        if subword and sum(1 for p in ps if strip_punct(p.lstrip("\u2581"))) > 1:
            return "split"
        return "common"

    return classify


def rare_word_reproduction(srcs: Sequence[str], refs: Sequence[str], hyps: Sequence[str],
                           classify: Callable[[str], str], lowercase: bool = False
                           ) -> dict[str, dict]:
    """Of the source words of each class (:data:`WORD_CLASSES`) that appear in the
    reference, how many the output reproduces (a recall); of those the output carries over,
    how many the reference has too (a precision); and "any", all classes together.

    Units are whitespace words. A source word is classified as the model reads it; it
    *appears* in a sentence (reference or output) when that sentence has a whitespace word
    equal to it after stripping leading/trailing punctuation on both sides ("Merkel," and
    "Merkel" match), compared case-sensitively unless ``lowercase``. Words that are all
    punctuation are not counted; a word repeated in one source counts once.

    The recall alone rewards parroting: an output that carried over every source word would
    reproduce all of them. The precision is its counterweight: a copied word that should
    have been translated ("eingeführt" for "introduced") is in the output and not in the
    reference.
    Returns ``{cls: {"in_ref": n, "reproduced": m, "share": 100 m / n or None,
    "in_output": k, "precision": 100 m / k or None}}``.
    """
    norm = (lambda w: strip_punct(w).lower()) if lowercase else strip_punct
    found = {c: [0, 0, 0] for c in WORD_CLASSES}  # in the reference, in both, in the output
    for s, r, h in zip(srcs, refs, hyps):
        ref_keys, hyp_keys = {norm(w) for w in r.split()}, {norm(w) for w in h.split()}
        seen: set[str] = set()
        for w in s.split():
            key = norm(w)
            if not key or key in seen:
                continue
            seen.add(key)
            cls = classify(w)
            if cls not in found:
                continue
            in_ref, in_hyp = key in ref_keys, key in hyp_keys
            found[cls][0] += in_ref
            found[cls][1] += in_ref and in_hyp
            found[cls][2] += in_hyp
    found["any"] = [sum(v[i] for v in found.values()) for i in range(3)]

    def pct(a: int, b: int) -> float | None:
        return round(100.0 * a / b, 2) if b else None

    return {c: {"in_ref": n, "reproduced": m, "share": pct(m, n), "in_output": k,
                "precision": pct(m, k)} for c, (n, m, k) in found.items()}


def unk_rate(token_lists: Iterable[Sequence[str]], unk: str = "<unk>") -> float | None:
    """Percent of output tokens (``</s>`` not counted) that are ``unk``."""
    toks = [t for ts in token_lists for t in ts if t != "</s>"]
    return round(100.0 * toks.count(unk) / len(toks), 3) if toks else None


# -- attention ------------------------------------------------------------------------------
def row_entropy(attn: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of an attention matrix (T, S); 0 log 0 = 0."""
    p = np.asarray(attn, dtype=np.float64)
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(-1)


def attention_entropy(matrices: Iterable[np.ndarray]) -> dict[str, float | None]:
    """Mean row entropy over all rows of all matrices, in nats ("entropy") and divided by
    log S, the entropy of a uniform row over the S source tokens ("entropy_norm": 0 =
    one-hot, 1 = uniform; rows over a one-token source are left out of it)."""
    total = norm_total = 0.0
    rows = norm_rows = 0
    for a in matrices:
        if a is None or a.size == 0:
            continue
        h = row_entropy(a)
        total += float(h.sum())
        rows += h.size
        if a.shape[-1] > 1:
            norm_total += float(h.sum()) / math.log(a.shape[-1])
            norm_rows += h.size
    return {"entropy": round(total / rows, 4) if rows else None,
            "entropy_norm": round(norm_total / norm_rows, 4) if norm_rows else None}


def attention_localization(samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]
                           ) -> dict:
    """Where an image model looked, against each symbol's box (the image analogue of AER).
    ``samples``: per image, its teacher-forced attention (T, R) over R regions (row t: the
    step that outputs symbol t), the regions' centres (R, 2) as (x, y) pixels, and the
    symbols' boxes (T, 4) [x0, y0, x1, y1) in the same pixels. Per symbol: whether the
    attention peak's region centre lies in the symbol's box ("peak_in_box"), and the share of
    the attention mass on regions whose centre lies in it ("mass_in_box"); overall and by
    position in the string (1-based, the last bucket "N+": positions N and beyond)."""
    by_pos: dict[int, list[tuple[bool, float]]] = {}
    for attn, centres, boxes in samples:
        x, y = centres[:, 0][None, :], centres[:, 1][None, :]  # (1, R)
        inside = ((x >= boxes[:, :1]) & (x < boxes[:, 2:3])
                  & (y >= boxes[:, 1:2]) & (y < boxes[:, 3:4]))  # (T, R)
        peak = inside[np.arange(len(boxes)), attn.argmax(-1)]  # (T,)
        mass = (attn * inside).sum(-1)  # (T,)
        for t in range(len(boxes)):
            by_pos.setdefault(min(t + 1, 16), []).append((bool(peak[t]), float(mass[t])))
    every = [v for vs in by_pos.values() for v in vs]

    def summary(vs):
        return {"symbols": len(vs), "peak_in_box": round(float(np.mean([p for p, _ in vs])), 4),
                "mass_in_box": round(float(np.mean([m for _, m in vs])), 4)}

    if not every:
        return {"symbols": 0, "peak_in_box": None, "mass_in_box": None, "by_position": []}
    return {**summary(every), "by_position": [
        {"position": f"{p}+" if p == 16 else str(p), **summary(by_pos[p])} for p in sorted(by_pos)]}


# -- the table ------------------------------------------------------------------------------
def _num(x, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_diagnostics(d: dict) -> str:
    """The diagnostics of one evaluation as a plain-text table."""
    by_len, rep, lines = d.get("bleu_by_length"), d["repetition"], []
    if by_len is not None:  # (an image model has no source words)
        lines = ["BLEU by source length (words):",
                 "  " + "  ".join(f"{b['bucket']:>8}" for b in by_len),
                 "  " + "  ".join(f"{_num(b['bleu']):>8}" for b in by_len) + "   BLEU",
                 "  " + "  ".join(f"{b['sentences']:>8}" for b in by_len) + "   sentences"]
    lines += ["duplicate n-grams (% of n-grams within each output):",
              "  " + "".join(f"{'n=' + n:>8}" for n in rep["output"])]
    for side in ("output", "reference"):
        lines.append("  " + "".join(f"{_num(v):>8}" for v in rep[side].values()) + f"   {side}")
    if "rare_words" in d:
        lines += _rare_word_lines(d["rare_words"])
    lines.append(f"<unk> in output: {_num(d['unk_rate'], '{:.3f}%')} of tokens")
    return "\n".join(lines + _attention_lines(d))


def _rare_word_lines(rw: dict) -> list[str]:
    lines = []
    rare_def = (f"rare: training count <= {rw['max_count']}" if rw.get("counts_known", True)
                else "rare: none, the vocabulary has no training counts")
    lines.append("rare and unknown source words found in the reference, reproduced "
                 f"(oov: not in the vocabulary; {rare_def}; split: into subword pieces):")
    for cls in (*WORD_CLASSES, "any"):
        r = rw[cls]
        line = (f"  {cls:<12}{r['reproduced']:>6} / {r['in_ref']:<6} "
                f"{_num(r['share'], '{:.1f}%'):>6}")
        if r.get("in_output") is not None:  # older reports have no precision
            line += (f"   carried over {r['in_output']}, of them in the reference "
                     f"{_num(r['precision'], '{:.1f}%')}")
        lines.append(line)
    return lines


def _attention_lines(d: dict) -> list[str]:
    lines = []
    att = d["attention"]
    if att is None:
        lines.append("attention: none (the model has no attention)")
    else:
        lines.append(f"attention entropy: {_num(att['entropy'], '{:.3f}')} nats "
                     f"({_num(att['entropy_norm'], '{:.3f}')} of uniform)")
        loc = att.get("localization")
        if loc and loc["symbols"]:
            lines.append(f"attention in the symbol's box: peak {100 * loc['peak_in_box']:.1f}%, "
                         f"mass {100 * loc['mass_in_box']:.1f}% ({loc['symbols']} symbols)")
        if att.get("aer") is not None or "aer_sentences" in att:
            lines.append(f"AER: {_num(att.get('aer'), '{:.4f}')} ({att['align_method']}, "
                         f"{att['aer_sentences']} sentences; links {att['links']}, "
                         f"sure {att['sure']})")
    if d.get("p_gen") is not None:
        lines.append(f"mean p_gen: {d['p_gen']:.3f} (1 = always generate, 0 = always copy)")
    return lines
