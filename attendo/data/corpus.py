"""Reading and validating parallel and monolingual text corpora.

Files are read as bytes line by line (split on ``\\n`` only) and each line is decoded on its own,
so every problem can be reported as ``path:line: problem`` the way compilers do. Plain and gzip
files are accepted; gzip is detected from the file's content.

What a line may hold:

- A UTF-8 byte-order mark (U+FEFF) at the start of a file is dropped, and so is one at either
  end of a line (files joined with ``cat`` keep their marks at the start of later lines); one
  inside a sentence is kept as text (the zero-width no-break space).
- Control characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F, and the
  bidirectional embeddings, overrides and isolates U+202A-U+202E, U+2066-U+2069) are an error
  naming the file, line and character, except tab (whitespace, and a TSV's column separator)
  and the line terminator (``\n``, or ``\r\n``: one ``\r`` before the ``\n`` is part of it).
  A lone ``\r``, NUL, ESC, form feed or NEL inside a line usually means a binary or mangled
  file, and would otherwise end up inside tokens (``'Hund\x00l\u00e4uft'``); a bidi override
  makes text display in another order than the model reads it.
- A file with no line at all is an error for :func:`read_parallel` (not for :func:`read_lines`,
  where no input simply means no output).

The same rule holds for every text a model is given (the Python API, the server, ``attendo
align`` and ``attend``): :func:`clean_text` is that rule for one string.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import BinaryIO

from attendo.errors import AttendoError
from attendo.utils import open_binary

MAX_REPORTED_PROBLEMS = 20

_SKIP_HINT = "use data.skip_bad_lines: true to skip such pairs"

BOM = "\ufeff"
_BOM_BYTES = BOM.encode("utf-8")
# Cc without tab (a line from a file holds no "\n", a string given to the API may), the bidi
# embeddings, overrides and isolates, and lone surrogates (a str that is not valid Unicode)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_CONTROL_NAMES = {
    0x00: "NUL", 0x07: "BEL", 0x08: "backspace", 0x0A: "line feed", 0x0B: "vertical tab",
    0x0C: "form feed", 0x0D: "carriage return", 0x1B: "ESC", 0x7F: "DEL", 0x85: "NEL",
    0x202A: "left-to-right embedding", 0x202B: "right-to-left embedding",
    0x202C: "pop directional formatting", 0x202D: "left-to-right override",
    0x202E: "right-to-left override", 0x2066: "left-to-right isolate",
    0x2067: "right-to-left isolate", 0x2068: "first strong isolate",
    0x2069: "pop directional isolate",
}
_EDGES = re.compile("^[\\s\ufeff]+|[\\s\ufeff]+$")


class CorpusError(ValueError, AttendoError):
    """A problem with a corpus file, located by path and (when known) 1-based line number."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.problem}"

    def __reduce__(self):  # keeps the exception picklable across worker processes
        return (type(self), (self.path, self.line, self.problem))


class TextError(ValueError, AttendoError):
    """A text no model is given: it holds a control character or a lone surrogate, ``char``,
    at 0-based ``index`` (the message counts from 1, as editors count columns); ``where``
    names the input (e.g. ``"texts[3]"``) when the text was one of many."""

    def __init__(self, index: int, char: str, where: str = "") -> None:
        self.index, self.char, self.where = index, char, where
        super().__init__(str(self))

    @property
    def problem(self) -> str:
        code = ord(self.char)
        if 0xD800 <= code <= 0xDFFF:
            return (f"character {self.index + 1} is U+{code:04X}, a lone surrogate (not valid "
                    "Unicode; expected text that can be written as UTF-8)")
        name = _CONTROL_NAMES.get(code)
        return (f"control character U+{code:04X}{f' ({name})' if name else ''} at character "
                f"{self.index + 1}; expected plain text, where tab is the only control "
                "character allowed")

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}" if self.where else self.problem

    def __reduce__(self):  # picklable, like CorpusError
        return (type(self), (self.index, self.char, self.where))

    def located(self, where: str) -> TextError:
        return TextError(self.index, self.char, where)


def check_text(text: str) -> None:
    """Raise a :class:`TextError` at the first control character or lone surrogate."""
    if not isinstance(text, str):
        raise TypeError(f"expected text as a str, got {type(text).__name__}")
    bad = _CONTROL.search(text)
    if bad:
        raise TextError(bad.start(), bad.group())


def clean_text(text: str) -> str:
    """The one rule for a text given to a model, by any route: ``text`` without surrounding
    whitespace and byte-order marks (whitespace-only text becomes ``""``, which translates to
    ``""``); a control character or a lone surrogate is a :class:`TextError`."""
    check_text(text)
    return _strip(text)


def clean_arguments(sentences: list[str]) -> list[str]:
    """Sentences given as command-line arguments, by the rule of files (:func:`clean_text`);
    an error names the argument, counted from 1."""
    out = []
    for i, text in enumerate(sentences, start=1):
        try:
            out.append(clean_text(text))
        except TextError as e:
            raise e.located(f"sentence argument {i}") from None
    return out


def read_requests(lines: list[str], fmt: str, where: str) -> tuple[list[str], dict]:
    """Sources and per-sentence ``prefixes`` / ``constraints`` (Translator.translate's
    keywords) from input lines: ``text`` one source per line; ``tsv`` 'source TAB prefix';
    ``jsonl`` {"src": ..., "prefix": ..., "constraints": [...]}. Errors name ``where:line``."""
    if fmt == "text":
        return lines, {}
    if fmt == "tsv":
        cols = [line.split("\t") for line in lines]
        for n, c in enumerate(cols, start=1):
            if len(c) > 2:
                raise CorpusError(where, n, f"expected 'source TAB prefix', got {len(c)} columns")
        return [c[0] for c in cols], {"prefixes": [c[1] if len(c) > 1 else None for c in cols]}
    srcs, pre, cons = [], [], []
    for n, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(where, n, f"not JSON ({e.msg})") from None
        c = obj.get("constraints") if isinstance(obj, dict) else None
        if not (isinstance(obj, dict) and isinstance(obj.get("src"), str)
                and set(obj) <= {"src", "prefix", "constraints"}
                and isinstance(obj.get("prefix", ""), str | None)
                and (c is None or isinstance(c, list) and all(isinstance(x, str) for x in c))):
            raise CorpusError(where, n, 'expected {"src": text, "prefix": text (optional), '
                              '"constraints": [text, ...] (optional)} and no other key')
        srcs.append(obj["src"])
        pre.append(obj.get("prefix"))
        cons.append(c)
    return srcs, {"prefixes": pre, "constraints": cons}


def clean_texts(texts: list[str], what: str = "texts") -> list[str]:
    """:func:`clean_text` of each text; an error names the input as ``what[i]`` (0-based)."""
    if isinstance(texts, str):
        raise TypeError(f"{what}: expected a list of strings, got one str; wrap it in a "
                        "list ([text])")
    out = []
    for i, text in enumerate(texts):
        try:
            out.append(clean_text(text))
        except TextError as e:
            raise e.located(f"{what}[{i}]") from None
        except TypeError as e:
            raise TypeError(f"{what}[{i}]: {e}") from None
    return out


@dataclass
class ReadReport:
    """What :func:`read_parallel` kept and skipped; ``problems``: the first
    :data:`MAX_REPORTED_PROBLEMS` as ``path:line: problem``."""

    n_pairs: int
    n_skipped: int
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.n_pairs} pairs read, {self.n_skipped} skipped"

    def skip(self, e: CorpusError) -> None:
        self.n_skipped += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(str(e))


def raw_lines(path: Path, stream: BinaryIO | None = None) -> Iterator[bytes]:
    """The lines of ``path`` (or of ``stream``, which ``path`` then only names) as bytes
    without their terminator, nor a byte-order mark at the start (a file of only that has no
    lines). Bytes split on ``\\n``, not ``str.splitlines``: a separator such as U+2028 inside a
    sentence must not break the alignment of the two sides of a corpus."""
    if stream is not None:
        f = contextlib.nullcontext(stream)  # the caller's stream (stdin) is not ours to close
    else:
        try:
            f = open_binary(path)
        except FileNotFoundError:
            raise CorpusError(path, None, "file not found") from None
        except IsADirectoryError:
            raise CorpusError(path, None, "is a directory, expected a text file") from None
        except OSError as e:
            raise CorpusError(path, None, f"cannot open: {e.strerror or e}") from None
    lineno = 0
    with f as lines:
        try:
            for raw in lines:
                lineno += 1
                if lineno == 1 and raw.startswith(_BOM_BYTES):
                    raw = raw[len(_BOM_BYTES) :]
                    if not raw:
                        return
                yield raw.removesuffix(b"\n").removesuffix(b"\r")
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise CorpusError(path, lineno + 1, "corrupt or truncated gzip data "
                              f"({e or type(e).__name__})") from None


def decode_line(raw: bytes, path: Path, lineno: int, hint: str = "") -> str:
    """One line decoded as UTF-8 and checked (see the module docstring), else a
    :class:`CorpusError` locating the bad byte or character."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        utf16 = lineno == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise CorpusError(path, lineno, (
            f"invalid UTF-8 at byte offset {e.start} of the line (byte 0x{raw[e.start]:02x}); "
            + ("this looks like UTF-16 (convert with e.g. iconv -f utf-16 -t utf-8)" if utf16 else
               "expected UTF-8 text (convert with e.g. iconv -f latin1 -t utf-8)"))) from None
    try:
        check_text(text)
    except TextError as e:
        raise CorpusError(path, lineno, e.problem + (f" ({hint})" if hint else "")) from None
    return text


def _strip(text: str) -> str:
    """``text`` without surrounding whitespace and byte-order marks."""
    text = text.strip()
    if text and (text[0] == BOM or text[-1] == BOM):
        text = _EDGES.sub("", text)
    return text


def _check_text(text: str, side: str, path: Path, lineno: int, max_chars: int | None,
                hint: str) -> None:
    """Raise a :class:`CorpusError` if a stripped line is empty or too long."""
    if not text:
        raise CorpusError(path, lineno,
                          f"empty {side} line (expected non-empty text on both sides; {hint})")
    if max_chars is not None and len(text) > max_chars:
        raise CorpusError(path, lineno, f"{side} line has {len(text)} characters, more than the "
                          f"limit of {max_chars} (expected one sentence per line; a missing line "
                          f"break? {hint})")


def parse_pair(raw_src: bytes, raw_tgt: bytes | None, src: Path, tgt: Path | None, lineno: int,
               max_chars: int | None, hint: str = _SKIP_HINT) -> tuple[str, str]:
    """Turn one raw line (TSV when ``tgt`` is None) or a pair of raw lines into clean text."""
    if tgt is None:
        cols = decode_line(raw_src, src, lineno, hint).split("\t")
        if len(cols) != 2:
            raise CorpusError(src, lineno, f"found {len(cols)} tab-separated columns, expected "
                              f"exactly 2 (source<TAB>target; {hint})")
        s, t = cols
    else:
        s, t = decode_line(raw_src, src, lineno, hint), decode_line(raw_tgt, tgt, lineno, hint)
    s, t = _strip(s), _strip(t)
    _check_text(s, "source", src, lineno, max_chars, hint)
    _check_text(t, "target", tgt or src, lineno, max_chars, hint)
    return s, t


def read_parallel(src: str | Path, tgt: str | Path | None = None, *, skip_bad: bool = False,
                  max_chars: int = 5000,
                  hint: str = _SKIP_HINT) -> tuple[list[str], list[str], ReadReport]:
    """Read a parallel corpus (two line-aligned files, or one two-column TSV file) as
    ``(src_lines, tgt_lines, report)``, each line stripped (terminator, edge whitespace, BOMs).

    Bad pairs (invalid UTF-8, a control character, an empty side, a side over ``max_chars``
    characters, a TSV line without two columns) raise a :class:`CorpusError` whose message ends
    with ``hint``, or are skipped and counted when ``skip_bad``. Different line counts (the
    alignment is unknown, no pair can be trusted) and an empty file always raise."""
    src_path = Path(src)
    tgt_path = Path(tgt) if tgt is not None else None
    src_lines: list[str] = []
    tgt_lines: list[str] = []
    report = ReadReport(n_pairs=0, n_skipped=0)
    # A bad line is remembered rather than raised at once: reading on to the end lets a line
    # count mismatch, the likelier root cause of odd lines, be reported in its place.
    first_error: CorpusError | None = None
    n_src = n_tgt = 0
    src_iter = raw_lines(src_path)
    tgt_iter = raw_lines(tgt_path) if tgt_path is not None else iter(())
    missing = object()
    for lineno, (raw_s, raw_t) in enumerate(zip_longest(src_iter, tgt_iter, fillvalue=missing),
                                            start=1):
        n_src += raw_s is not missing
        n_tgt += raw_t is not missing
        if first_error is not None or raw_s is missing or (tgt_path and raw_t is missing):
            continue  # only counting lines from here on
        try:
            s, t = parse_pair(raw_s, raw_t if tgt_path else None, src_path, tgt_path, lineno,
                              max_chars, hint)
        except CorpusError as e:
            if not skip_bad:
                first_error = e
                continue
            report.skip(e)
            continue
        src_lines.append(s)
        tgt_lines.append(t)
    check_line_counts(src_path, tgt_path, n_src, n_tgt)
    if first_error is not None:
        raise first_error
    report.n_pairs = len(src_lines)
    return src_lines, tgt_lines, report


def check_line_counts(src: str | Path, tgt: str | Path | None, n_src: int, n_tgt: int) -> None:
    """What every reader of a parallel corpus checks once it has counted the lines: ``src``
    and ``tgt`` (None or "": a TSV) have as many lines, and some."""
    if tgt and n_src != n_tgt:
        raise CorpusError(src, None, f"has {n_src} lines but {tgt} has {n_tgt} lines; expected "
                          "line-aligned files with the same number of lines (this cannot be "
                          "skipped)")
    if n_src == 0:
        expected = "one sentence per line" if tgt else "one source<TAB>target pair per line"
        raise CorpusError(src, None, f"empty file, expected {expected}")


def read_lines(path: str | Path, *, max_chars: int | None = None,
               stream: BinaryIO | None = None) -> list[str]:
    """A monolingual file (plain or gzip), one stripped line per entry; empty lines are kept
    as ``""`` so that outputs stay aligned with inputs. Invalid UTF-8, control characters and
    lines over ``max_chars`` raise a :class:`CorpusError` naming the line. With ``stream`` (e.g.
    ``sys.stdin.buffer``, read as plain text) ``path`` only names it (e.g. ``"<stdin>"``)."""
    path = Path(path)
    lines: list[str] = []
    for lineno, raw in enumerate(raw_lines(path, stream), start=1):
        text = _strip(decode_line(raw, path, lineno))
        if max_chars is not None and len(text) > max_chars:
            raise CorpusError(path, lineno, f"line has {len(text)} characters, more than the "
                              f"limit of {max_chars} (expected one sentence per line)")
        lines.append(text)
    return lines


def length_filter(src_lens: list[int], tgt_lens: list[int], max_len: int,
                  max_ratio: float | None) -> list[int]:
    """Indices of pairs to keep for training: both sides have 1 to ``max_len`` tokens and the
    longer is at most ``max_ratio`` times the shorter (0 or None: no such test; very unequal
    lengths usually mean a misaligned pair, which only teaches the model noise)."""
    if len(src_lens) != len(tgt_lens):
        raise ValueError(f"got {len(src_lens)} source lengths but {len(tgt_lens)} target lengths")
    return [i for i, (a, b) in enumerate(zip(src_lens, tgt_lens))
            if 1 <= a <= max_len and 1 <= b <= max_len
            and not (max_ratio and max(a, b) / min(a, b) > max_ratio)]
