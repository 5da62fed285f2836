"""The Python API of training, and what ``attendo train`` calls: train a config, or resume
the run in a directory."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from .. import distributed
from ..checkpoint import LAST_FILE, check_model_dir
from ..config import Config, load_config
from ..errors import UsageError
from ..utils import DirLock
from .state import clear_run
from .trainer import Trainer

log = logging.getLogger("attendo")


def train(cfg: Config) -> Path:
    """Train a model from a config (Python API); returns the model directory."""
    Trainer(cfg).run()
    return Path(cfg.train.out_dir)


def train_new(cfg: Config, overwrite: bool = False) -> Path:
    """What ``attendo train CONFIG`` does: train into ``train.out_dir``, refusing a directory
    that holds a run with a checkpoint unless ``overwrite`` (then it is cleared first); the
    leftovers of a run stopped before its first checkpoint are cleared. The lock is held from
    before the clearing, so a directory another training is writing into is not cleared."""
    out = Path(cfg.train.out_dir)
    with DirLock(out) if distributed.is_rank_zero() else contextlib.nullcontext():
        leftovers = (out / "model.safetensors").exists() or (out / "checkpoints").is_dir()
        if (out / LAST_FILE).exists() and not overwrite:
            raise UsageError(f"{out} already holds a training run; use --resume {out} to "
                             "continue it, --overwrite to start over, or set train.out_dir")
        if (out / LAST_FILE).exists() or leftovers:
            if not overwrite:
                log.warning("%s: a run stopped before its first checkpoint; starting over", out)
            if distributed.is_rank_zero():  # under torchrun only rank 0 touches the files
                clear_run(out)
        Trainer(cfg).run()
    return out


def resume(model_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Continue the run in ``model_dir`` from its last checkpoint. A run stopped before its
    first checkpoint was complete (no ``last.safetensors``) starts again from step 0 with the
    directory's config, which is what it would have done."""
    model_dir = Path(model_dir)
    check_model_dir(model_dir)  # its files are its own: a link to elsewhere is refused
    cfg = load_config(model_dir / "config.yaml", overrides)
    cfg.train.out_dir = str(model_dir)
    with DirLock(model_dir) if distributed.is_rank_zero() else contextlib.nullcontext():
        if (model_dir / LAST_FILE).exists():
            Trainer(cfg, resume=True).run()
        else:
            log.warning("%s: no checkpoint was completed; starting again from step 0",
                        model_dir / LAST_FILE)
            if distributed.is_rank_zero():
                clear_run(model_dir)
            Trainer(cfg).run()
    return model_dir
