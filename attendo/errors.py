"""User errors: the one exception type the command line reports as a line, not a traceback.

Every error a user can cause with a bad file, flag, setting or input (``ConfigError``,
``CorpusError``, ``ModelFileError``, ``TrainingDiverged``, ...) is an :class:`AttendoError`,
besides its built-in type (mostly ``ValueError``). ``attendo.cli.main`` prints it as
``attendo CMD: error: MESSAGE``, exit code 2; any other exception is a bug and keeps its
traceback. The lowest layer: it imports nothing from attendo.
"""

from __future__ import annotations


class AttendoError(Exception):
    """A user error: the message says what is wrong and what to do."""


class UsageError(AttendoError, ValueError):
    """A bad argument or option value (a flag, a library function's keyword, a combination)."""


def is_out_of_memory(e: RuntimeError) -> bool:
    """torch's allocation failures: CUDA's OutOfMemoryError, the CPU allocator's message."""
    text = str(e)
    return type(e).__name__ == "OutOfMemoryError" or any(
        m in text for m in ("out of memory", "can't allocate memory", "DefaultCPUAllocator"))


def out_of_memory_text(e: RuntimeError) -> str:
    """The one line an allocation failure is reported as, saying what to lower."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return (f"out of memory ({first}); the model fits (its size is checked before it is "
            "built) but a batch's activations did not: lower train.batch_size (decoding: "
            "--batch-size or decode.batch_size). Checkpoints already written are kept; resume "
            "with attendo train --resume DIR")


def os_error_text(e: OSError) -> str:
    """One line for an OSError, naming its file(s) when it has them."""
    if e.filename is None:
        return str(e)
    where = str(e.filename) if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"{where}: {e.strerror or e}"
