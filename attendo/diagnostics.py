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
  (Och & Ney 2003) against gold links, read and written in two formats (:data:`GOLD_FORMATS`):
  *pharaoh*, 0-based ``i-j`` sure and ``i?j`` possible; *talp* (RWTH, Och & Ney), 1-based
  ``i-j`` sure and ``ipj`` possible. In both, i indexes the source side and j the target.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.vocab import Vocab

# Source-length buckets in words: (lowest, highest or None for open-ended)
BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 10), (11, 20), (21, 30), (31, 40), (41, None))


class AlignmentFileError(ValueError):
    """A gold alignment file that cannot be read; the message names file:line."""


# -- length ---------------------------------------------------------------------------------
def bucket_label(bucket: tuple[int, int | None]) -> str:
    lo, hi = bucket
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def length_bucket(n_words: int) -> int:
    """Index into :data:`BUCKETS` of a source of ``n_words`` words (an empty source counts
    in the first bucket)."""
    for i, (_, hi) in enumerate(BUCKETS):
        if hi is None or n_words <= hi:
            return i
    raise AssertionError("the last bucket is open-ended")  # pragma: no cover


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
    dups = [0] * (max_n + 1)
    total = [0] * (max_n + 1)
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


def vocab_word_classifier(
    pieces: Callable[[str], list[str]], vocab: Vocab, max_count: int, subword: bool = False
) -> Callable[[str], str]:
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


def rare_word_reproduction(
    srcs: Sequence[str],
    refs: Sequence[str],
    hyps: Sequence[str],
    classify: Callable[[str], str],
    lowercase: bool = False,
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
        ref_keys = {norm(w) for w in r.split()}
        hyp_keys = {norm(w) for w in h.split()}
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
    n = u = 0
    for toks in token_lists:
        for t in toks:
            if t == "</s>":
                continue
            n += 1
            u += t == unk
    return round(100.0 * u / n, 3) if n else None


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
    return {
        "entropy": round(total / rows, 4) if rows else None,
        "entropy_norm": round(norm_total / norm_rows, 4) if norm_rows else None,
    }


@dataclass
class GoldAlignment:
    """Gold links of one sentence pair as (source word, target word), 0-based.
    ``possible`` includes the sure links (S is a subset of P, Och & Ney 2003)."""

    sure: set[tuple[int, int]] = field(default_factory=set)
    possible: set[tuple[int, int]] = field(default_factory=set)
    line: int = 0  # line number in the gold file (for error messages)


# format -> (separator of a possible link, first index)
GOLD_FORMATS: dict[str, tuple[str, int]] = {"pharaoh": ("?", 0), "talp": ("p", 1)}


def parse_alignment_line(line: str, where: str, fmt: str = "pharaoh") -> GoldAlignment:
    """Parse one line of links into 0-based (source word, target word) pairs: pharaoh
    ``"0-0 1-2 2?1"`` (0-based; ``i?j`` possible) or talp ``"1-1 2-3 3p2"`` (1-based; ``ipj``
    possible); ``i-j`` is a sure link in both. ``where`` ("file:line") prefixes any error."""
    if fmt not in GOLD_FORMATS:
        raise ValueError(f"alignment format {fmt!r}: expected one of {', '.join(GOLD_FORMATS)}")
    maybe, base = GOLD_FORMATS[fmt]
    gold = GoldAlignment()
    for tok in line.split():
        sep = "-" if "-" in tok else maybe if maybe in tok else None
        parts = tok.split(sep) if sep else []
        if (len(parts) != 2 or not all(p.isdigit() and p.isascii() for p in parts)
                or min(int(p) for p in parts) < base):
            raise AlignmentFileError(
                f"{where}: bad link {tok!r}; expected 'i-j' (sure) or 'i{maybe}j' (possible), "
                f"i and j {base}-based word indices of source and reference ({fmt} format)"
            )
        link = (int(parts[0]) - base, int(parts[1]) - base)
        gold.possible.add(link)
        if sep == "-":
            gold.sure.add(link)
    return gold


def parse_pharaoh_line(line: str, where: str) -> GoldAlignment:
    """:func:`parse_alignment_line` in the 0-based Pharaoh format."""
    return parse_alignment_line(line, where, "pharaoh")


def format_alignment_line(sure: Iterable[tuple[int, int]],
                          possible: Iterable[tuple[int, int]] = (), fmt: str = "pharaoh") -> str:
    """One line of links from 0-based (source, target) pairs, sorted; a pair in both ``sure``
    and ``possible`` is written once, as sure."""
    maybe, base = GOLD_FORMATS[fmt]
    sure = set(sure)
    links = [(i, j, "-") for i, j in sure] + [(i, j, maybe) for i, j in set(possible) - sure]
    return " ".join(f"{i + base}{sep}{j + base}" for i, j, sep in sorted(links))


def read_gold_alignments(path: str | Path, fmt: str = "pharaoh") -> list[GoldAlignment]:
    """Read an alignment file in ``fmt`` (:data:`GOLD_FORMATS`), one line of links per
    sentence (an empty line: no links); links come back 0-based."""
    from .utils import open_text

    path = Path(path)
    out = []
    try:
        with open_text(path) as f:
            for i, line in enumerate(f, 1):
                g = parse_alignment_line(line.rstrip("\r\n"), f"{path}:{i}", fmt)
                g.line = i
                out.append(g)
    except UnicodeDecodeError as e:
        raise AlignmentFileError(f"{path}:{len(out) + 1}: invalid UTF-8 ({e.reason})") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such alignment file") from None
    return out


def check_gold(gold: Sequence[GoldAlignment], path: str | Path, src_lens: Sequence[int],
               tgt_lens: Sequence[int]) -> None:
    """Every sentence has a line, and every link points inside its sentence pair."""
    if len(gold) != len(src_lens):
        raise AlignmentFileError(
            f"{path}: {len(gold)} lines, but the test set has {len(src_lens)} sentences "
            "(expected one line of links per sentence)"
        )
    for g, ns, nt in zip(gold, src_lens, tgt_lens):
        for i, j in sorted(g.possible):
            if i >= ns or j >= nt:
                raise AlignmentFileError(
                    f"{path}:{g.line}: link {i}-{j} is outside the sentence pair (source has "
                    f"{ns} words, reference {nt}; expected 0-based i < {ns}, j < {nt})"
                )


def word_groups(pieces: Sequence[str], kind: str) -> list[list[int]]:
    """Piece indices of each whitespace word, for a tokenizer of ``kind``.

    word: one piece per word. bpe/unigram (sentencepiece): a piece starting with "▁" starts
    a word. char: "▁" pieces separate words and belong to none.
    """
    if kind == "word":
        return [[i] for i in range(len(pieces))]
    groups: list[list[int]] = []
    if kind == "char":
        current: list[int] = []
        for i, p in enumerate(pieces):
            if p == "\u2581":
                if current:
                    groups.append(current)
                current = []
            else:
                current.append(i)
        return groups + ([current] if current else [])
    for i, p in enumerate(pieces):
        if p.startswith("\u2581") or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def attention_to_words(attn: np.ndarray, src_groups: Sequence[Sequence[int]],
                       tgt_groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Word-level attention (T_words, S_words) from piece-level (T, S): a source word gets
    the sum of its pieces' weights, an output word the mean over its pieces' rows."""
    a = np.asarray(attn, dtype=np.float64)
    cols = np.stack([a[:, list(g)].sum(1) for g in src_groups], 1)  # (T, S_words)
    return np.stack([cols[list(g)].mean(0) for g in tgt_groups], 0)  # (T_words, S_words)


def links_from_attention(attn_words: np.ndarray, method: str = "argmax",
                         threshold: float = 0.5) -> set[tuple[int, int]]:
    """Alignment links (source word i, target word j) read off word-level attention
    (T_words, S_words): ``argmax``, the most attended source word of each target word;
    ``threshold``, every pair whose weight is at least ``threshold``."""
    a = np.asarray(attn_words)
    if a.size == 0:
        return set()
    if method == "argmax":
        return {(int(i), j) for j, i in enumerate(a.argmax(1))}
    if method == "threshold":
        js, is_ = np.nonzero(a >= threshold)
        return {(int(i), int(j)) for j, i in zip(js, is_)}
    raise ValueError(f"alignment method {method!r}: expected 'argmax' or 'threshold'")


def aer_counts(links: set[tuple[int, int]], gold: GoldAlignment) -> tuple[int, int, int, int]:
    """(|A|, |S|, |A & S|, |A & P|) for one sentence."""
    return (len(links), len(gold.sure), len(links & gold.sure), len(links & gold.possible))


def aer(a: int, s: int, a_s: int, a_p: int) -> float | None:
    """Alignment error rate 1 - (|A&S| + |A&P|) / (|A| + |S|) (Och & Ney 2003), from counts
    summed over the corpus; None when there are neither links nor sure gold links."""
    return None if a + s == 0 else 1.0 - (a_s + a_p) / (a + s)


def precision_recall(a: int, s: int, a_s: int, a_p: int) -> tuple[float | None, float | None]:
    """Precision |A&P| / |A| and recall |A&S| / |S| (Och & Ney 2003) from the same counts as
    :func:`aer`; None where the denominator is 0."""
    return (a_p / a if a else None), (a_s / s if s else None)


# -- the table ------------------------------------------------------------------------------
def _num(x, fmt: str = "{:.2f}", none: str = "-") -> str:
    return none if x is None else fmt.format(x)


def format_diagnostics(d: dict) -> str:
    """The diagnostics of one evaluation as a plain-text table."""
    lines = ["BLEU by source length (words):"]
    lines.append("  " + "  ".join(f"{b['bucket']:>8}" for b in d["bleu_by_length"]))
    lines.append("  " + "  ".join(f"{_num(b['bleu']):>8}" for b in d["bleu_by_length"])
                 + "   BLEU")
    lines.append("  " + "  ".join(f"{b['sentences']:>8}" for b in d["bleu_by_length"])
                 + "   sentences")
    rep = d["repetition"]
    lines.append("duplicate n-grams (% of n-grams within each output):")
    lines.append("  " + "".join(f"{'n=' + n:>8}" for n in rep["output"]))
    for side in ("output", "reference"):
        lines.append("  " + "".join(f"{_num(v):>8}" for v in rep[side].values()) + f"   {side}")
    rw = d["rare_words"]
    rare_def = (f"rare: training count <= {rw['max_count']}" if rw.get("counts_known", True)
                else "rare: none, the vocabulary has no training counts")
    lines.append("rare and unknown source words found in the reference, reproduced "
                 f"(oov: not in the vocabulary; {rare_def}; split: into subword pieces):")
    for cls in (*WORD_CLASSES, "any"):
        r = rw[cls]
        line = f"  {cls:<12}{r['reproduced']:>6} / {r['in_ref']:<6} {_num(r['share'], '{:.1f}%'):>6}"
        if r.get("in_output") is not None:  # older reports have no precision
            line += (f"   carried over {r['in_output']}, of them in the reference "
                     f"{_num(r['precision'], '{:.1f}%')}")
        lines.append(line)
    lines.append(f"<unk> in output: {_num(d['unk_rate'], '{:.3f}%')} of tokens")
    att = d["attention"]
    if att is None:
        lines.append("attention: none (the model has no attention)")
    else:
        lines.append(f"attention entropy: {_num(att['entropy'], '{:.3f}')} nats "
                     f"({_num(att['entropy_norm'], '{:.3f}')} of uniform)")
        if att.get("aer") is not None or "aer_sentences" in att:
            lines.append(
                f"AER: {_num(att.get('aer'), '{:.4f}')} ({att['align_method']}, "
                f"{att['aer_sentences']} sentences; links {att['links']}, sure {att['sure']})"
            )
    if d.get("p_gen") is not None:
        lines.append(f"mean p_gen: {d['p_gen']:.3f} (1 = always generate, 0 = always copy)")
    return "\n".join(lines)
