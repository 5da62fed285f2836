"""When to stop and how fast to go: the learning-rate schedule and the training budgets."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import distributed


def lr_factor(cfg, step: int) -> float:
    """Multiplier of train.lr at optimizer step ``step`` (1-based), before plateau scaling."""
    w = cfg.warmup_steps
    warm = min(1.0, step / w) if w else 1.0
    if cfg.schedule == "inverse_sqrt":  # Vaswani et al. 2017, sec. 5.3 (peak lr at step w)
        return min(step / w, math.sqrt(w / max(step, 1)))
    if cfg.schedule == "linear" and cfg.max_steps and step >= w:
        return max(0.0, (cfg.max_steps - step) / max(cfg.max_steps - w, 1))
    return warm


def set_lr(tc, state, optimizer: torch.optim.Optimizer) -> float:
    """Set and return the learning rate of the next update (``state.step + 1``): the schedule
    times the reduce-on-plateau scale (not below train.min_lr after warm-up on plateau)."""
    lr = tc.lr * lr_factor(tc, state.step + 1) * state.lr_scale
    if tc.schedule == "plateau" and state.step >= tc.warmup_steps:
        lr = max(lr, tc.min_lr)
    for g in optimizer.param_groups:
        g["lr"] = lr
    return lr


def stop_reason(tc, state, elapsed: Callable[[], float], dist, device: torch.device) -> str | None:
    """Why training stops now (steps, epochs, minutes, early stopping), or None."""
    if tc.max_steps and state.step >= tc.max_steps:
        return f"reached train.max_steps={tc.max_steps}"
    if tc.max_epochs and state.epoch >= tc.max_epochs:
        return f"reached train.max_epochs={tc.max_epochs}"
    # clocks differ slightly between ranks: stop all of them when any one is out of time
    if tc.max_minutes and distributed.any_true(dist, elapsed() >= tc.max_minutes * 60, device):
        return f"reached train.max_minutes={tc.max_minutes}"
    if tc.patience and state.bad_valids >= tc.patience:
        return f"early stopping: no improvement in {tc.patience} validations"
    return None
