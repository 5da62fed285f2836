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
from .divergence import TrainingDiverged
from .setup import pick_device
from .state import clear_run
from .trainer import Trainer

__all__ = ["Trainer", "TrainingDiverged", "train", "train_new", "resume", "clear_run",
           "pick_device"]
