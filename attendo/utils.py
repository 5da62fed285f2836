"""Small helpers shared across attendo: atomic file writes, transparent gzip reading, the
lock that keeps two trainings out of one directory, and the test-only stop points
(``ATTENDO_STOP_AT``, see :func:`stop_point`)."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import secrets
import signal
import socket
from pathlib import Path
from typing import BinaryIO, TextIO

from .errors import AttendoError

GZIP_MAGIC = b"\x1f\x8b"

# -- test-only stop points --------------------------------------------------------------------
STOP_AT_ENV = "ATTENDO_STOP_AT"


def _parse_stop_at(value: str | None) -> tuple[str, str, int] | None:
    """``update:N`` -> ("update", "N", 1); ``write:NAME[:K]`` -> ("write", NAME, K)."""
    if not value:
        return None
    kind, _, rest = value.partition(":")
    name, _, nth = rest.partition(":") if kind == "write" else (rest, "", "")
    ok = kind == "update" and rest.isdigit() or (
        kind == "write" and bool(name) and (not nth or nth.isdigit() and int(nth) > 0))
    if not ok:
        raise ValueError(f"{STOP_AT_ENV}={value!r}: expected update:N or write:NAME[:K]")
    return kind, str(int(name)) if kind == "update" else name, int(nth or 1)


_STOP_AT = _parse_stop_at(os.environ.get(STOP_AT_ENV))  # read once: unset costs one test
_stop_counts: dict[str, int] = {}  # file name -> atomic writes of it seen in this process


def stop_point(kind: str, name: str | int) -> None:
    """Stop this process (SIGSTOP) where ``ATTENDO_STOP_AT`` asks, so that a test can SIGKILL
    a training at a moment it chose (``tests/test_kill_resume.py``): ``update:N`` right after
    update N is complete (its metrics line, and checkpoint when due, written);
    ``write:NAME[:K]`` in the K-th (default first) atomic write of a file named NAME, after its
    temporary file is fsynced, before the rename. Unset (outside tests) it costs one test."""
    if _STOP_AT is None or (kind, str(name)) != _STOP_AT[:2]:
        return
    name = str(name)
    _stop_counts[name] = _stop_counts.get(name, 0) + 1
    if _stop_counts[name] == _STOP_AT[2]:
        os.kill(os.getpid(), signal.SIGSTOP)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one: a
    temporary file in the same directory (``os.replace`` is only atomic within one file
    system), fsynced, renamed over ``path``. Missing parent directories are created."""
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
        if _STOP_AT is not None:  # a test's kill point between the write and the rename
            stop_point("write", path.name)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # make the rename durable; best effort, since some platforms cannot open directories
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def open_binary(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressing on the fly if it is gzip data (told by
    its magic bytes, not by a ``.gz`` suffix)."""
    with open(path, "rb") as f:
        gz = f.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gz else open(path, "rb")  # type: ignore[return-value]


def open_text(path: str | Path) -> TextIO:
    """Open a UTF-8 text file, plain or gzip, for reading. ``newline="\\n"`` keeps a lone
    ``\\r`` from breaking lines, so line numbers agree with ``wc -l`` and the corpus readers."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline="\n")


# -- one training per directory -------------------------------------------------------------
LOCK_FILE = ".attendo.lock"


class DirectoryBusy(RuntimeError, AttendoError):
    """Another process holds the lock of a run directory (see :class:`DirLock`)."""


class DirLock:
    """An advisory lock on ``DIR/.attendo.lock`` (``fcntl.flock``) held while a training
    writes into DIR, so that a second training (a repeated ``--resume``, a second study on the
    same out_dir) fails at once with :class:`DirectoryBusy` instead of overwriting the first
    one's checkpoints. The system drops the lock when its process ends, however it ends (no
    stale locks). Re-entrant within a process (the CLI holds it across ``clear_run`` and the
    trainer takes it again); the file keeps the owner's pid and host for the message. No lock
    where there is no ``fcntl`` (Windows)."""

    _held: dict[str, list] = {}  # resolved directory -> [open file, holders in this process]

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self._key: str | None = None  # the resolved directory while this object holds it

    def acquire(self) -> DirLock:
        try:
            import fcntl
        except ImportError:  # Windows
            return self
        if self._key is not None:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        key = str(self.dir.resolve())
        if key in DirLock._held:
            DirLock._held[key][1] += 1
            self._key = key
            return self
        f = open(self.dir / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            f.close()
            raise DirectoryBusy(f"{self.dir}: another training is writing into this directory "
                                f"({owner}, holding {self.dir / LOCK_FILE}); wait for it to "
                                "finish or stop it, or use another train.out_dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        DirLock._held[key] = [f, 1]
        self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        key, self._key = self._key, None
        held = DirLock._held.get(key)
        if held is not None:
            held[1] -= 1
            if held[1] == 0:
                del DirLock._held[key]
                held[0].close()  # closing the file releases the flock

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a Trainer dropped without run() lets go of its directory
        with contextlib.suppress(Exception):
            self.release()
