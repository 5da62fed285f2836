"""Unknown-word replacement by attention (Luong et al. 2015, "Addressing the rare word
problem"): each ``<unk>`` a model writes is replaced by the source word it attended to most
when it wrote it, or by that word's translation in a bilingual dictionary. It is the oldest
form of the lecture's third fix, looking back at the input; a pointer-generator
(``model.copy``) learns the same thing instead of applying it after the fact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.corpus import CorpusError, read_lines
from .errors import UsageError

UNK = "<unk>"
MARK = "\u2581"  # sentencepiece's word-boundary mark


def load_dictionary(path: str | Path) -> dict[str, str]:
    """A bilingual dictionary: one entry per line, ``source<whitespace>target`` with an
    optional third column, a probability (fast_align's and fairseq's lexical tables); the most
    probable target of a source word wins, else the first. Errors name the file and line."""
    best: dict[str, tuple[float, str]] = {}
    for lineno, line in enumerate(read_lines(path), start=1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) not in (2, 3):
            raise CorpusError(path, lineno, "expected 'source target' or 'source target "
                              f"probability', got {line!r}")
        try:
            prob = float(cols[2]) if len(cols) == 3 else 0.0
        except ValueError:
            raise CorpusError(path, lineno, f"the third column, {cols[2]!r}, is not a "
                              "probability") from None
        if cols[0] not in best or prob > best[cols[0]][0]:
            best[cols[0]] = (prob, cols[1])
    return {s: t for s, (_, t) in best.items()}


def decode_options(replace_unk: bool, dictionary_path: str | Path | None) -> dict:
    """The keywords of ``Translator.translate`` for ``--replace-unk [--unk-dict FILE]``."""
    if dictionary_path and not replace_unk:
        raise UsageError("--unk-dict is used by --replace-unk; give both")
    if not replace_unk:
        return {}
    return {"replace_unk": True,
            "unk_dict": load_dictionary(dictionary_path) if dictionary_path else None}


def source_word(src_pieces: list[str], j: int) -> str:
    """The whitespace word of the source that piece j belongs to: the piece itself for word
    and character tokenizers, the pieces from the last word start (``\u2581``) for
    sentencepiece's."""
    if not any(p.startswith(MARK) for p in src_pieces):
        return src_pieces[j]
    start = j
    while start > 0 and not src_pieces[start].startswith(MARK):
        start -= 1
    end = j + 1
    while end < len(src_pieces) and not src_pieces[end].startswith(MARK):
        end += 1
    return "".join(src_pieces[start:end]).lstrip(MARK)


def replace_unknowns(pieces: list[str], attn: np.ndarray, src_pieces: list[str],
                     dictionary: dict[str, str] | None = None) -> tuple[list[str], int]:
    """``pieces`` (output pieces, ``</s>`` not included) with each ``<unk>`` replaced by the
    source word at its attention peak (``attn`` (T, S), row t for piece t) or its dictionary
    translation; returns the pieces and how many were replaced. A sentencepiece output gets
    the word with its boundary mark, so the text keeps its spaces."""
    out, n = list(pieces), 0
    spm = any(p.startswith(MARK) for p in pieces)
    for t, piece in enumerate(pieces):
        if piece != UNK or t >= len(attn) or not src_pieces:
            continue
        word = source_word(src_pieces, int(np.argmax(attn[t, : len(src_pieces)])))
        word = (dictionary or {}).get(word, word)
        out[t] = MARK + word if spm else word
        n += 1
    return out, n
