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

TOY_TASKS = ("copy", "reverse", "sort", "dates")

_MONTHS = [
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
]  # fmt: skip
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_FIRST = dt.date(1950, 1, 1).toordinal()
_LAST = dt.date(2049, 12, 31).toordinal()
_CASES = [str.lower, str.title, str.upper]


def _ordinal(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 22 -> "22nd"."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Renderers (date, month, abbreviated month, weekday), the names already cased. Numeric formats
# always put the day before the month (or the year first) and years have four digits, so no
# input is ambiguous.
_FORMATS = [
    lambda d, m, a, w: f"{d.day} {m} {d.year}",  # 3 march 1987
    lambda d, m, a, w: f"{m} {d.day}, {d.year}",  # March 3, 1987
    lambda d, m, a, w: f"{d.day:02d}/{d.month:02d}/{d.year}",  # 03/03/1987 (day/month/year)
    lambda d, m, a, w: f"{d.day}.{d.month}.{d.year}",  # 3.3.1987 (day.month.year)
    lambda d, m, a, w: f"{d.year}-{d.month:02d}-{d.day:02d}",  # 1987-03-03
    lambda d, m, a, w: f"{w}, {m} {d.day}, {d.year}",  # tuesday, march 3, 1987
    lambda d, m, a, w: f"{a} {d.day} {d.year}",  # mar 3 1987
    lambda d, m, a, w: f"{_ordinal(d.day)} of {m}, {d.year}",  # 3rd of March, 1987
    lambda d, m, a, w: f"{d.day:02d} {a} {d.year}",  # 03 MAR 1987
    lambda d, m, a, w: f"{d.day} {a}. {d.year}",  # 3 Mar. 1987
    lambda d, m, a, w: f"{w} {d.day} {m} {d.year}",  # Tuesday 3 March 1987
    lambda d, m, a, w: f"{m} {_ordinal(d.day)}, {d.year}",  # march 3rd, 1987
    lambda d, m, a, w: f"the {_ordinal(d.day)} of {m} {d.year}",  # the 3rd of march 1987
    lambda d, m, a, w: f"{a}-{d.day:02d}-{d.year}",  # mar-03-1987
    lambda d, m, a, w: f"{d.year}/{d.month:02d}/{d.day:02d}",  # 1987/03/03
]


def date_task(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Human-written dates -> ISO ``YYYY-MM-DD``, as in the classic attention tutorials.

    Dates are uniform over the real calendar from 1950-01-01 to 2049-12-31, written in one of 15
    formats (e.g. "3 march 1987", "Tuesday, March 3, 1987", "03/03/1987", "3rd of MARCH, 1987")
    with lower, title or upper case names. Numeric formats are always day/month/year (or
    year-first), years always have four digits and weekdays are always the true weekday, so the
    target follows exactly from the source.
    """
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        d = dt.date.fromordinal(rng.randint(_FIRST, _LAST))
        fmt = rng.choice(_FORMATS)
        case = rng.choice(_CASES)
        month = case(_MONTHS[d.month - 1])
        text = fmt(d, month, month[:3], case(_WEEKDAYS[d.weekday()]))
        if case is str.upper:
            text = text.upper()  # "3RD OF MARCH" reads better than "3rd of MARCH"
        src.append(text)
        tgt.append(d.isoformat())
    return src, tgt


def toy_task(name: str, n: int, seed: int, *, min_len: int = 3, max_len: int = 10,
             n_symbols: int = 10) -> tuple[list[str], list[str]]:
    """``n`` (source, target) pairs of the toy task ``name``: ``copy`` (target = source),
    ``reverse`` (the source backwards) or ``sort`` (the source symbols in alphabet order), with
    sources of ``min_len`` to ``max_len`` symbols from an alphabet of ``n_symbols`` ("a".."z",
    or "s0".."sN" beyond 26), space separated; or :func:`date_task` for ``dates``."""
    if name == "dates":
        return date_task(n, seed)
    if name not in TOY_TASKS:
        raise ValueError(f"unknown toy task {name!r}; expected one of {list(TOY_TASKS)}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"expected 1 <= min_len <= max_len, got {min_len} and {max_len}")
    if n_symbols < 1:
        raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
    symbols = (list(string.ascii_lowercase[:n_symbols]) if n_symbols <= 26
               else [f"s{i}" for i in range(n_symbols)])
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


def split_toy(src: list[str], tgt: list[str], n_valid: int,
              n_test: int) -> tuple[Split, Split, Split]:
    """Split pairs into train, valid and test, no source string in more than one split.

    Generated tasks repeat short sources often; a test set sharing sources with the training
    data would measure memorization. Valid and test get exactly ``n_valid`` and ``n_test``
    pairs with distinct sources, taken from the end of the data; every other pair whose source
    is one of theirs is dropped, and the rest is train (in its original order).
    """
    if len(src) != len(tgt):
        raise ValueError(f"got {len(src)} sources but {len(tgt)} targets")
    held: dict[str, int] = {}  # source -> index of the pair chosen for valid/test
    for i in range(len(src) - 1, -1, -1):
        if len(held) == n_valid + n_test:
            break
        held.setdefault(src[i], i)
    if len(held) < n_valid + n_test:
        raise ValueError(
            f"only {len(set(src))} distinct sources, cannot hold out {n_valid} + {n_test} "
            "pairs with distinct sources; generate more data or more varied data"
        )
    chosen = list(held.values())  # in order of discovery from the end

    def take(idx: list[int]) -> Split:
        return [src[i] for i in idx], [tgt[i] for i in idx]

    return (take([i for i in range(len(src)) if src[i] not in held]),
            take(sorted(chosen[n_test:])), take(sorted(chosen[:n_test])))
