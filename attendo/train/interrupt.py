"""Stopping a training by signal without losing it: SIGINT (Ctrl-C) or SIGTERM (a scheduler's
kill, ``timeout``) asks the loop to finish its update, write ``last.safetensors`` (atomically,
as every checkpoint) and stop with :class:`Interrupted`, whose message is the command that
resumes the run exactly there. A second SIGINT or SIGTERM stops at once, without saving."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("attendo")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The training stopped on a signal after saving its state at ``step`` in ``out``."""

    def __init__(self, signame: str, step: int, out: Path):
        self.signame, self.step, self.out = signame, step, out
        super().__init__(f"{signame} at step {step}: saved {out / 'last.safetensors'}; "
                         f"resume with: attendo train --resume {out}")


class StopRequest:
    """Set by the first SIGINT/SIGTERM (``signame``); the loop polls it after each update."""

    def __init__(self) -> None:
        self.signame: str | None = None

    def handle(self, signum: int, frame) -> None:
        if self.signame is not None:  # the second signal: stop now
            raise KeyboardInterrupt
        self.signame = signal.Signals(signum).name
        log.warning("%s: finishing this update, then saving a checkpoint and stopping "
                    "(%s again stops at once, without saving)", self.signame, self.signame)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install :class:`StopRequest`'s handler for SIGINT and SIGTERM while the loop runs, and
    give the previous handlers back after it (signals go to the main thread only: elsewhere
    nothing is installed and the request never comes)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, stop.handle)
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
