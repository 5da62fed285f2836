"""Small helpers shared across attendo: atomic file writes and transparent gzip reading."""

from __future__ import annotations

import gzip
import io
import os
import secrets
from pathlib import Path
from typing import BinaryIO, TextIO

GZIP_MAGIC = b"\x1f\x8b"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one.

    The bytes go to a temporary file in the same directory (``os.replace`` is only atomic
    within one file system), are fsynced, then renamed over ``path``. Missing parent
    directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with mode 0o666 lets the umask decide the permissions, like a plain open() would;
    # tempfile.mkstemp would leave the final file readable by its owner only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort, since some platforms cannot open directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_gzip(path: str | Path) -> bool:
    """True if the file starts with the gzip magic bytes (the name's suffix is not trusted)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressing on the fly if it is gzip data.

    Detection is by content (gzip magic), so a compressed file without a ``.gz`` suffix and a
    plain file with one both read correctly.
    """
    if is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def open_text(path: str | Path, errors: str = "strict") -> TextIO:
    """Open a UTF-8 text file, plain or gzip, for reading.

    ``newline="\\n"`` keeps Python from treating lone ``\\r`` as a line break, so line numbers
    agree with ``wc -l`` and with :func:`attendo.data.corpus.read_parallel`.
    """
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors=errors, newline="\n")
