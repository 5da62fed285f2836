"""Training: optimisation, schedules, validation, checkpoints, early stopping and resume.

A run writes everything into ``train.out_dir`` (see :mod:`attendo.checkpoint`). It can be
killed at any moment: ``attendo train --resume DIR`` restores weights, optimizer moments,
learning-rate schedule, RNG and the position in the batch stream from ``last.safetensors``,
so only the steps since the last checkpoint are lost. One module per concern: ``trainer``
(the loop), ``api``, ``data``, ``setup``, ``objective``, ``schedule``, ``validation``,
``state`` (checkpoint contents), ``progress`` (logs) and ``divergence``.
"""

from __future__ import annotations

from .api import resume, train, train_new
from .data import INIT_DATA_KEYS, init_source
from .divergence import DivergenceGuard, TrainingDiverged
from .objective import CoverageSwitch, Objective
from .progress import StepResult
from .schedule import lr_factor
from .setup import pick_device, resolve_precision
from .state import TrainerState, clear_run, remove_temporary_files
from .trainer import Trainer

__all__ = ["Trainer", "TrainerState", "StepResult", "TrainingDiverged", "DivergenceGuard",
           "train", "train_new", "resume", "clear_run", "lr_factor", "pick_device",
           "resolve_precision", "init_source", "remove_temporary_files", "INIT_DATA_KEYS",
           "Objective", "CoverageSwitch"]
