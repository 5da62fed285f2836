"""``attendo average``: the mean of a run's newest step checkpoints, as one weights file that
loads into the run's model (checked before and after it is written)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors.torch import save as st_save

from .checkpoint import average_checkpoints, step_checkpoints
from .errors import UsageError
from .translator import Translator
from .utils import atomic_write_bytes

log = logging.getLogger("attendo")


def average_last(model_dir: str | Path, last: int = 5, output: str | Path | None = None
                 ) -> tuple[Path, list[Path]]:
    """Average the ``last`` newest ``checkpoints/step-N.safetensors`` of ``model_dir`` into
    ``output`` (default MODEL/averaged.safetensors); returns that path and the files
    averaged (all of them, with a warning, when there are fewer)."""
    model_dir = Path(model_dir)
    if last < 1:
        raise UsageError(f"--last must be >= 1, got {last}")
    if output and Path(output).is_dir():
        raise UsageError(f"{output}: is a directory, expected a file path for --output")
    ckpts = step_checkpoints(model_dir)
    if not ckpts:
        raise UsageError(f"{model_dir}: no step checkpoints in {model_dir / 'checkpoints'}")
    chosen = ckpts[-last:]
    if len(chosen) < last:
        log.warning("only %d step checkpoints in %s; averaging all of them "
                    "(train.keep_last keeps the newest N; 0 keeps all)", len(chosen), model_dir)
    out = Path(output) if output else model_dir / "averaged.safetensors"
    # the checkpoints against each other (the first that differs is named with the one it
    # differs from), then the directory, its config (sizes) and the newest checkpoint are
    # checked before anything is written; the average itself is checked once written
    mean = average_checkpoints(chosen)
    Translator.from_dir(model_dir, weights=chosen[-1])
    meta = json.dumps({"averaged": [p.name for p in chosen]})
    atomic_write_bytes(out, st_save(mean, metadata={"attendo": meta}))
    Translator.from_dir(model_dir, weights=out)  # the average must load into the configured model
    return out, chosen
