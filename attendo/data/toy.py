"""Small generated tasks for tests, demos and sanity checks.

Every generator is a pure function of its arguments (``random.Random(seed)``), so a task can be
regenerated anywhere instead of being shipped as data.

- ``copy``, ``reverse``, ``sort``: sequences of space-separated symbols (use the word tokenizer).
- ``dates``: human-written dates to ISO 8601, the classic attention demo (use the char tokenizer).
"""

from __future__ import annotations

import datetime as dt
import random
import string
from collections.abc import Callable

TOY_TASKS = ("copy", "reverse", "sort", "dates")

_MONTHS = [
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
]  # fmt: skip
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_FIRST = dt.date(1950, 1, 1).toordinal()
_LAST = dt.date(2049, 12, 31).toordinal()


def _ordinal(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 22 -> "22nd"."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _date_formats() -> list[Callable[[dt.date, Callable[[str], str]], str]]:
    """Renderers ``(date, case) -> str``; ``case`` styles the month and weekday names.

    Numeric formats always put the day before the month (or the year first), so no input is
    ambiguous; years always have four digits for the same reason.
    """

    def mon(d: dt.date) -> str:
        return _MONTHS[d.month - 1]

    def abbr(d: dt.date) -> str:
        return _MONTHS[d.month - 1][:3]

    def wday(d: dt.date) -> str:
        return _WEEKDAYS[d.weekday()]

    return [
        lambda d, c: f"{d.day} {c(mon(d))} {d.year}",  # 3 march 1987
        lambda d, c: f"{c(mon(d))} {d.day}, {d.year}",  # March 3, 1987
        lambda d, c: f"{d.day:02d}/{d.month:02d}/{d.year}",  # 03/03/1987 (day/month/year)
        lambda d, c: f"{d.day}.{d.month}.{d.year}",  # 3.3.1987 (day.month.year)
        lambda d, c: f"{d.year}-{d.month:02d}-{d.day:02d}",  # 1987-03-03
        lambda d, c: f"{c(wday(d))}, {c(mon(d))} {d.day}, {d.year}",  # tuesday, march 3, 1987
        lambda d, c: f"{c(abbr(d))} {d.day} {d.year}",  # mar 3 1987
        lambda d, c: f"{_ordinal(d.day)} of {c(mon(d))}, {d.year}",  # 3rd of March, 1987
        lambda d, c: f"{d.day:02d} {c(abbr(d))} {d.year}",  # 03 MAR 1987
        lambda d, c: f"{d.day} {c(abbr(d))}. {d.year}",  # 3 Mar. 1987
        lambda d, c: f"{c(wday(d))} {d.day} {c(mon(d))} {d.year}",  # Tuesday 3 March 1987
        lambda d, c: f"{c(mon(d))} {_ordinal(d.day)}, {d.year}",  # march 3rd, 1987
        lambda d, c: f"the {_ordinal(d.day)} of {c(mon(d))} {d.year}",  # the 3rd of march 1987
        lambda d, c: f"{c(abbr(d))}-{d.day:02d}-{d.year}",  # mar-03-1987
        lambda d, c: f"{d.year}/{d.month:02d}/{d.day:02d}",  # 1987/03/03
    ]


_CASES: list[Callable[[str], str]] = [str.lower, str.title, str.upper]


def date_task(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Human-written dates -> ISO ``YYYY-MM-DD``, as in the classic attention tutorials.

    Dates are uniform over the real calendar from 1950-01-01 to 2049-12-31, written in one of 15
    formats (e.g. "3 march 1987", "Tuesday, March 3, 1987", "03/03/1987", "3rd of MARCH, 1987")
    with lower, title or upper case names. Numeric formats are always day/month/year (or
    year-first), years always have four digits and weekdays are always the true weekday, so the
    target follows exactly from the source.
    """
    rng = random.Random(seed)
    formats = _date_formats()
    src, tgt = [], []
    for _ in range(n):
        d = dt.date.fromordinal(rng.randint(_FIRST, _LAST))
        fmt = rng.choice(formats)
        case = rng.choice(_CASES)
        text = fmt(d, case)
        if case is str.upper:
            text = text.upper()  # "3RD OF MARCH" reads better than "3rd of MARCH"
        src.append(text)
        tgt.append(d.isoformat())
    return src, tgt


def _symbols(n_symbols: int) -> list[str]:
    """Symbol alphabet: letters "a".."z" up to 26 symbols, "s0".."sN" beyond."""
    if n_symbols < 1:
        raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
    if n_symbols <= 26:
        return list(string.ascii_lowercase[:n_symbols])
    return [f"s{i}" for i in range(n_symbols)]


def toy_task(
    name: str,
    n: int,
    seed: int,
    *,
    min_len: int = 3,
    max_len: int = 10,
    n_symbols: int = 10,
) -> tuple[list[str], list[str]]:
    """Generate ``n`` (source, target) pairs of the toy task ``name``.

    ``copy``: target = source; ``reverse``: the source backwards; ``sort``: the source symbols
    in alphabet order. Sources are ``min_len`` to ``max_len`` symbols from an alphabet of
    ``n_symbols``, space separated. ``dates`` delegates to :func:`date_task` and ignores the
    length and alphabet options.
    """
    if name == "dates":
        return date_task(n, seed)
    if name not in TOY_TASKS:
        raise ValueError(f"unknown toy task {name!r}; expected one of {list(TOY_TASKS)}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"expected 1 <= min_len <= max_len, got {min_len} and {max_len}")
    symbols = _symbols(n_symbols)
    rank = {s: i for i, s in enumerate(symbols)}
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        seq = [rng.choice(symbols) for _ in range(rng.randint(min_len, max_len))]
        if name == "copy":
            out = seq
        elif name == "reverse":
            out = seq[::-1]
        else:
            out = sorted(seq, key=rank.__getitem__)
        src.append(" ".join(seq))
        tgt.append(" ".join(out))
    return src, tgt


Split = tuple[list[str], list[str]]


def split_toy(
    src: list[str], tgt: list[str], n_valid: int, n_test: int
) -> tuple[Split, Split, Split]:
    """Split pairs into train, valid and test with no source string in more than one split.

    Generated tasks repeat short sources often; a test set sharing sources with the training
    data would measure memorization. Valid and test get exactly ``n_valid`` and ``n_test``
    pairs with distinct sources, taken from the end of the data; every other pair whose source
    is one of theirs is dropped, and the rest is train (in its original order).

    Returns:
        ``((train_src, train_tgt), (valid_src, valid_tgt), (test_src, test_tgt))``.
    """
    if len(src) != len(tgt):
        raise ValueError(f"got {len(src)} sources but {len(tgt)} targets")
    held: dict[str, int] = {}  # source -> index of the pair chosen for valid/test
    for i in range(len(src) - 1, -1, -1):
        if len(held) == n_valid + n_test:
            break
        if src[i] not in held:
            held[src[i]] = i
    if len(held) < n_valid + n_test:
        raise ValueError(
            f"only {len(set(src))} distinct sources, cannot hold out {n_valid} + {n_test} "
            "pairs with distinct sources; generate more data or more varied data"
        )
    chosen = list(held.values())  # in order of discovery from the end
    test_idx = sorted(chosen[:n_test])
    valid_idx = sorted(chosen[n_test:])
    train_idx = [i for i in range(len(src)) if src[i] not in held]

    def take(idx: list[int]) -> Split:
        return [src[i] for i in idx], [tgt[i] for i in idx]

    return take(train_idx), take(valid_idx), take(test_idx)
