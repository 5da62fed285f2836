"""Reading the files of a model directory safely: only regular files, of a bounded size, that
resolve inside the directory. The lowest layer: data (tokenizers, vocabularies) and
checkpoints both read through it."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import AttendoError


class ModelFileError(ValueError, AttendoError):
    """A file of a model directory (weights, tokenizer, vocabulary) is unreadable, corrupt, or
    does not fit the model. The message is one line that starts with the file's path."""


def unreadable(path: str | Path, what: str, e: OSError) -> ModelFileError:
    return ModelFileError(f"{path}: cannot read the {what} ({e.strerror or e})")


@contextlib.contextmanager
def open_regular(path: Path, what: str, max_bytes: int | None) -> Iterator[tuple[BinaryIO, int]]:
    """Open ``path`` for reading only if it is a regular file of at most ``max_bytes``: a FIFO,
    device or directory is refused before it is opened (opening a FIFO blocks)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except OSError as e:
        raise unreadable(path, what, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{path}: the {what} is not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise ModelFileError(f"{path}: the {what} has {st.st_size:,} bytes, more than the "
                             f"{max_bytes:,} allowed")
    try:
        # O_NONBLOCK: should the path have become a FIFO since the stat, open does not block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise unreadable(path, what, e) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{path}: the {what} is not a regular file")
        yield f, st.st_size


def check_inside(path: str | Path, model_dir: str | Path, what: str) -> None:
    """Refuse ``path`` (a :class:`ModelFileError`) unless it resolves inside ``model_dir``: a
    model directory is self-contained, and a link in it to a file elsewhere (``/etc/passwd``)
    must not be read, quoted in an error or served."""
    path = Path(path)
    try:
        root = Path(model_dir).resolve()
    except (OSError, RuntimeError) as e:
        raise ModelFileError(f"{model_dir}: cannot resolve the model directory ({e})") from None
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # e.g. a symlink loop
        raise ModelFileError(f"{path}: the {what} cannot be resolved (a symlink loop?); "
                             f"expected a file inside the model directory {model_dir}") from None
    if not target.is_relative_to(root):
        raise ModelFileError(f"{path}: the {what} leads to {target}, outside the model directory "
                             f"{model_dir}; copy the file into the directory instead of linking "
                             "to it")


def read_regular_file(path: str | Path, what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes``; else FileNotFoundError
    (missing) or :class:`ModelFileError`, starting with the path and naming the ``what``."""
    path = Path(path)
    with open_regular(path, what, max_bytes) as (f, _):
        try:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as e:
            raise unreadable(path, what, e) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise ModelFileError(f"{path}: the {what} has more than the {max_bytes:,} bytes allowed")
    return data


def one_line(e: object) -> str:
    """An exception's message on one line (errors quote it after a file's path)."""
    return " ".join(str(e).split())
