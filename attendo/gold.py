"""Gold word alignments and scores against them (Och & Ney 2003): gold files in two formats
(:data:`GOLD_FORMATS`): *pharaoh*, 0-based ``i-j`` sure and ``i?j`` possible; *talp* (RWTH,
Och & Ney), 1-based ``i-j`` sure and ``ipj`` possible; in both, i indexes the source side and
j the target. Pieces grouped into whitespace words, and alignment error rate, precision and
recall. Pure functions, re-exported by :mod:`attendo.diagnostics`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AttendoError
from .utils import open_text


class AlignmentFileError(ValueError, AttendoError):
    """A gold alignment file that cannot be read; the message names file:line."""


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
                f"i and j {base}-based word indices of source and reference ({fmt} format)")
        link = (int(parts[0]) - base, int(parts[1]) - base)
        gold.possible.add(link)
        if sep == "-":
            gold.sure.add(link)
    return gold


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
    path, out = Path(path), []
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
        raise AlignmentFileError(f"{path}: {len(gold)} lines, but the test set has "
                                 f"{len(src_lens)} sentences (expected one line of links per "
                                 "sentence)")
    for g, ns, nt in zip(gold, src_lens, tgt_lens):
        for i, j in sorted(g.possible):
            if i >= ns or j >= nt:
                raise AlignmentFileError(
                    f"{path}:{g.line}: link {i}-{j} is outside the sentence pair (source has "
                    f"{ns} words, reference {nt}; expected 0-based i < {ns}, j < {nt})")


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
