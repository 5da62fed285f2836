"""What a run keeps on disk and takes back on resume: the trainer's counters, the
checkpoints (built on :func:`attendo.checkpoint.save_training_state` and
:func:`~attendo.checkpoint.load_training_state`), metrics.jsonl as of the checkpoint, and the
clean-up of what an interrupted run left."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (
    CKPT_DIR,
    LAST_FILE,
    MODEL_FILE,
    ModelFileError,
    load_training_state,
    prune_checkpoints,
    save_training_state,
    save_weights,
)
from ..config import Config
from ..utils import atomic_write_text

log = logging.getLogger("attendo")


@dataclass
class TrainerState:
    """Counters saved with every checkpoint (JSON)."""

    step: int = 0
    epoch: int = 0
    offset: int = 0  # next batch within the epoch
    elapsed_s: float = 0.0  # wall time spent in earlier runs of this training
    tokens: int = 0  # target tokens trained on
    best: float | None = None  # best early-stopping metric so far
    bad_valids: int = 0  # validations since the best one
    plateau_bad: int = 0
    lr_scale: float = 1.0  # reduce-on-plateau multiplier
    history: list[dict[str, Any]] = field(default_factory=list)  # validation results


def load_state(last: Path, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer) -> TrainerState:
    """Weights, optimizer moments and RNG from ``last`` (in place); returns the counters."""
    saved = load_training_state(last, model, optimizer)
    try:
        return TrainerState(**saved)
    except TypeError as e:  # keys of another version, or a hand-edited file
        raise ModelFileError(f"{last}: trainer state does not fit this attendo ({e})") from None


def save_checkpoints(out: Path, model: torch.nn.Module, meta: dict[str, Any], best: bool,
                     keep_last: int) -> None:
    """The weights after a validation: ``model.safetensors`` when ``best``, and
    ``checkpoints/step-N.safetensors`` (the last ``keep_last`` kept)."""
    if best:
        save_weights(out / MODEL_FILE, model, meta)
    save_weights(out / CKPT_DIR / f"step-{meta['step']}.safetensors", model, meta)
    prune_checkpoints(out, keep_last)


def save_state(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               state: TrainerState, elapsed_s: float) -> None:
    """``last.safetensors``: weights, optimizer, RNG and the counters, for ``--resume``."""
    save_training_state(out / LAST_FILE, model, optimizer,
                        {**state.__dict__, "elapsed_s": elapsed_s})


def truncate_metrics(out: Path, step: int) -> None:
    """Drop the records a killed run logged after its last checkpoint (they are logged
    again as the resumed run repeats those steps) and a torn last line; atomic rewrite."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def save_resumed_config(out: Path, cfg: Config) -> None:
    """Overrides given with ``--resume`` become the run's config.yaml once the checkpoint
    has loaded under them, so a later resume (or a translation) goes on as this one does (as
    OpenNMT-py's and fairseq's checkpoints keep the options they last ran with)."""
    path, text = out / "config.yaml", cfg.to_yaml()
    if path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
        log.info("%s: rewritten with this resume's overrides", path)


def clear_run(out: Path) -> None:
    """Remove what a previous run left in ``out`` (weights, checkpoints, logs, metrics and
    temporary files of interrupted writes), keeping its config and tokenizers."""
    for name in ("metrics.jsonl", "train.log", LAST_FILE, MODEL_FILE):
        (out / name).unlink(missing_ok=True)
    for name in (CKPT_DIR, "tensorboard"):
        shutil.rmtree(out / name, ignore_errors=True)
    remove_temporary_files(out)


def remove_temporary_files(out: Path) -> None:
    """Delete ``.NAME.PID.HEX.tmp`` files that a killed atomic write left behind (rank 0
    only: no other process writes into a run directory while it trains)."""
    for tmp in [*out.glob(".*.tmp"), *(out / CKPT_DIR).glob(".*.tmp")]:
        tmp.unlink(missing_ok=True)
