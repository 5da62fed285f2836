"""Fetching the Multi30k corpus (task 1, raw text) from upstream or from a local copy.

Elliott et al. 2016 (English-German), 2017 and Barrault et al. 2018 (French, Czech). Licence:
non-commercial research and education (captions derive from Flickr30K)."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from attendo.data.corpus import CorpusError
from attendo.errors import AttendoError, UsageError
from attendo.utils import GZIP_MAGIC, atomic_write_bytes

MULTI30K_BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
MULTI30K_SPLITS: dict[str, int] = {"train": 29000, "val": 1014, "test_2016_flickr": 1000}
MULTI30K_LANGS = ("de", "en", "fr", "cs")
# Plain file name "{split}.{lang}" -> expected number of lines; upstream serves "{name}.gz".
MULTI30K_FILES: dict[str, int] = {f"{split}.{lang}": n for split, n in MULTI30K_SPLITS.items()
                                  for lang in MULTI30K_LANGS}


class DownloadError(OSError, AttendoError):
    """A file could not be downloaded (no network, HTTP error)."""


def count_lines(data: bytes) -> int:
    """Lines in ``data`` as a text editor counts them (a last line without newline counts)."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _decompress(data: bytes, source: str) -> bytes:
    """``data`` gunzipped if it is gzip (by its magic bytes)."""
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CorpusError(source, None, f"corrupt or truncated gzip data ({e})") from None


def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(
            f"could not download {url} ({reason}). Without network access, copy the Multi30k "
            "files ({split}.{lang}.gz or plain) to a folder and pass it with --from DIR"
        ) from None


def _read_local(from_dir: Path, name: str) -> tuple[bytes, str]:
    """Bytes of ``name.gz`` or ``name`` in ``from_dir``, and the path they came from."""
    for candidate in (from_dir / f"{name}.gz", from_dir / name):
        if candidate.is_file():
            return candidate.read_bytes(), str(candidate)
    raise CorpusError(from_dir / f"{name}.gz", None,
                      f"file not found (expected {name}.gz or {name} in {from_dir})")


def fetch_multi30k(out_dir: str | Path, *, from_dir: str | Path | None = None,
                   langs: tuple[str, ...] = ("de", "en"), timeout: float = 60.0) -> dict[str, int]:
    """Put Multi30k task 1 into ``out_dir`` as plain UTF-8 files ``{split}.{lang}``; returns
    ``{file name: number of lines}``.

    Files come from ``from_dir`` (``{split}.{lang}.gz`` or plain) when given, else from
    :data:`MULTI30K_BASE_URL`. Each file's line count is checked against
    :data:`MULTI30K_FILES` before it is written (atomically), so a truncated download never
    lands in ``out_dir``; a file already there with the right count is kept (a re-run needs no
    network). A missing, corrupt or miscounted file is a CorpusError, a failed download a
    :class:`DownloadError`."""
    unknown = [lang for lang in langs if lang not in MULTI30K_LANGS]
    if unknown:
        raise UsageError(f"unknown Multi30k language(s) {unknown}; "
                         f"expected some of {MULTI30K_LANGS}")
    out_dir = Path(out_dir)
    from_path = Path(from_dir) if from_dir is not None else None
    if from_path is not None and not from_path.is_dir():
        raise CorpusError(from_path, None, "not a directory (expected a folder of Multi30k files)")
    summary: dict[str, int] = {}
    for name in (f"{split}.{lang}" for split in MULTI30K_SPLITS for lang in langs):
        expected, target = MULTI30K_FILES[name], out_dir / name
        summary[name] = expected
        if target.is_file() and count_lines(target.read_bytes()) == expected:
            continue
        if from_path is not None:
            raw, source = _read_local(from_path, name)
        else:
            source = MULTI30K_BASE_URL + name + ".gz"
            raw = _download(source, timeout)
        data = _decompress(raw, source)
        found = count_lines(data)
        if found != expected:
            raise CorpusError(source, None, f"has {found} lines, expected {expected} for "
                              f"Multi30k {name} (truncated or wrong file?)")
        atomic_write_bytes(target, data)
    return summary
