"""The training objective: the loss as a module (so DistributedDataParallel can wrap it),
See et al.'s two-phase coverage as one switch, and the forward and backward passes of one
update's micro-batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from ..data.batching import Batch
from ..data.vocab import Vocab
from ..model.seq2seq import Seq2Seq


class Objective(torch.nn.Module):
    """The training objective as a forward(): :meth:`Seq2Seq.losses` (loss, nll, coverage loss,
    tokens, alignment cross-entropy, aligned target pieces)."""

    def __init__(self, model: Seq2Seq, label_smoothing: float, coverage_loss: float = 0.0,
                 align_weight: float = 0.0, coverage_form: str = "min"):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing
        self.coverage_loss, self.align_weight = coverage_loss, align_weight
        self.coverage_form = coverage_form

    def forward(self, src, src_lens, tgt_in, tgt_out, src_ext=None, align=None):
        return self.model.losses(src, src_lens, tgt_in, tgt_out, Vocab.PAD, self.label_smoothing,
                                 self.coverage_loss, src_ext, align, self.align_weight,
                                 self.coverage_form)


class CoverageSwitch:
    """Two-phase coverage (See et al. 2017, sec. 3): before train.coverage_from_step no
    coverage loss and no change to the coverage weights (still 0, so the model is one without
    coverage); from that update on, the coverage loss as configured."""

    def __init__(self, objective: Objective, model: Seq2Seq, weight: float, from_step: int,
                 zero: bool):
        self.objective, self.weight, self.from_step = objective, weight, from_step
        self.params = model.coverage_parameters()  # w_c of the scorer, zero-initialised
        self.phase_one: bool | None = None
        if from_step and zero:  # a new run: coverage has no effect on the scores yet
            with torch.no_grad():
                for p in self.params:
                    p.zero_()

    def enter(self, step: int) -> None:
        """Before update ``step`` (1-based): the phase it belongs to."""
        phase_one = step < self.from_step
        if phase_one != self.phase_one:
            self.phase_one = phase_one
            self.objective.coverage_loss = 0.0 if phase_one else self.weight

    def drop_gradients(self) -> None:
        """In phase one, after the backward pass: the coverage weights stay exactly 0."""
        if self.phase_one:
            for p in self.params:
                p.grad = None


def forward_backward(loss_module: torch.nn.Module, batches: Sequence[Batch], denom: float,
                     device: torch.device, autocast: Callable[[], AbstractContextManager],
                     scaler, distributed: bool) -> tuple[torch.Tensor, int, bool, bool]:
    """Gradients of the summed loss of ``batches`` divided by ``denom``; returns the sums
    (loss, nll, coverage, alignment cross-entropy, aligned target pieces) as one float64
    tensor on ``device``, the target tokens, and whether coverage and guided-alignment terms
    were there. Under DDP the gradients are all-reduced once, after the last micro-batch."""
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    total_n = 0
    has_cov = has_align = False
    for i, batch in enumerate(batches):
        batch = batch.to(device, non_blocking=True)
        defer = distributed and i < len(batches) - 1  # DDP: all-reduce after the last only
        with loss_module.no_sync() if defer else nullcontext():
            with autocast():
                parts = loss_module(batch.src, batch.src_lens, batch.tgt_in, batch.loss_target,
                                    batch.src_ext, batch.align)
                loss, nll, cov = parts[:3]
            scaled = loss / denom
            (scaler.scale(scaled) if scaler else scaled).backward()
        sums[0] += loss.detach()
        sums[1] += nll  # detached by Seq2Seq.losses, like cov
        if cov is not None:
            sums[2] += cov
            has_cov = True
        if parts[4] is not None:  # guided alignment
            sums[3] += parts[4].detach()
            sums[4] += parts[5]
            has_align = True
        total_n += batch.n_tgt_tokens
    return sums, total_n, has_cov, has_align
