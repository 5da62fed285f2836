"""Divergence: every test that stops a training gone wrong, with its thresholds explained.

A learning rate far too high need not produce a NaN: after one Adam step at ``train.lr=1e30``
the loss is ~1e32 nats per token and the validation perplexity e^100, every number finite, and
such a model would save, load and decode to garbage. :class:`DivergenceGuard` stops such runs:

- per update (on numbers the trainer reads anyway at its one host synchronisation): a
  non-finite loss or gradient norm skips the update, ``MAX_BAD_UPDATES`` in a row stop; a loss
  far above its running level or an absurd gradient norm stop after ``SUSTAIN`` in a row;
- per checkpoint, before anything is written: a weight not finite or above ``WEIGHT_LIMIT``, a
  validation perplexity that the target vocabulary rules out (``PPL_FACTOR``).

Each raises :class:`TrainingDiverged` (one line: step, what was seen, ``train.lr`` as the likely
cause, how to go on) before the update is applied or a checkpoint written, so the checkpoints
on disk are the last good ones and ``attendo train --resume DIR train.lr=...`` goes on from
them. The tests draw no random numbers and change nothing: a run that does not diverge is
bit-for-bit the same with them as without them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import AttendoError

MAX_BAD_UPDATES = 5  # non-finite updates in a row (each one skipped) before training stops

# Finite but far-off updates (a loss spike or an exploded gradient) in a row before training
# stops: one bad batch, or a short spike the optimizer recovers from, is ordinary.
SUSTAIN = 5

# Weight of the past in the running loss level, an exponential average of the per-token NLL
# over ordinary updates (time constant ~50). Far-off updates do not move it, so a run stuck at
# a diverged loss keeps counting.
LOSS_EMA = 0.98

# An update's training NLL per target token is far off above SPIKE_FACTOR * level + SPIKE_NATS.
# Batch noise is tens of percent: the largest ratio of a loss to this bound measured 0.39
# (Multi30k Transformer, 1,200 updates with warm-up), 0.30 (Multi30k RNN) and 0.21 (toy dates).
# The 2 nats keep a nearly converged run (level 0.01) going through a hard stretch; the factor
# keeps a fresh one (level ln |V| ~ 9) going, as a spike would need 38 nats, four times worse
# than uniform guessing. The first update sets the level. At lr=1e30 the second loss is ~1e31.
SPIKE_FACTOR = 4.0
SPIKE_NATS = 2.0

# Gradient norm (all weights, before clipping) of an exploded update. The loss is a mean over
# tokens, so ordinary norms stay small: at most 4.1, 2.8 and 3.2 measured on the three configs
# above, first updates included. (lr=1e30 saturates units, norms ~8: its loss and weights stop
# it; this test is for gradients that explode before the loss moves.)
GRAD_NORM_LIMIT = 1e6

# Largest weight magnitude of a working model. Weights start at magnitudes of 1 or less, Adam
# moves one by at most about lr per update, and real runs stay near 1 (measured at most 1.25,
# 0.47 and 0.75 on the three configs). A weight of 1e4 saturates any ordinary activation, and
# its products overflow half precision (65504).
WEIGHT_LIMIT = 1e4

# Validation perplexity above PPL_FACTOR * |V_tgt| rules out a working model: uniform guessing
# scores |V_tgt|, a fresh model about that (measured 1.8 |V| and 1.0 |V|), so ten times worse
# means it is confidently wrong about nearly every token, however finite its numbers.
PPL_FACTOR = 10.0


class TrainingDiverged(ValueError, AttendoError):
    """Training diverged (non-finite or absurd losses, gradients, weights or validation
    perplexity); nothing from the diverged state was saved."""


class DivergenceGuard:
    """The divergence tests of one training run: ``lr`` is ``train.lr`` (the likely cause),
    ``out_dir`` the run directory (in the command to resume with). ``kept``, given to every
    test, is the step of the last checkpoint written (0: none)."""

    def __init__(self, lr: float, tgt_vocab_size: int, out_dir: str):
        self.lr, self.tgt_vocab_size, self.out_dir = lr, tgt_vocab_size, out_dir
        self.level: float | None = None  # running per-token training NLL of ordinary updates
        self.bad_updates = 0  # non-finite updates in a row (skipped)
        self.far_off = 0  # finite updates in a row with a loss spike or an exploded gradient

    def _stop(self, step: int, what: str, kept: int):
        saved = (f"The checkpoints up to step {kept} are kept, nothing later was saved" if kept
                 else "Nothing was saved (no checkpoint had been written yet)")
        raise TrainingDiverged(f"training diverged: at step {step}, {what}; likely cause: "
                               f"train.lr={self.lr:g} is too high. {saved}: lower train.lr (or "
                               "add train.warmup_steps or train.clip_norm) and resume with "
                               f"`attendo train --resume {self.out_dir} train.lr=...`")

    def non_finite(self, step: int, what: str, kept: int) -> int:
        """Count an update with a non-finite ``what`` ("loss" or "gradient norm"), which the
        trainer skips; stops at ``MAX_BAD_UPDATES`` in a row. Returns the count so far."""
        self.bad_updates += 1
        if self.bad_updates >= MAX_BAD_UPDATES:
            self._stop(step, f"{self.bad_updates} updates in a row had a non-finite {what}", kept)
        return self.bad_updates

    def update(self, step: int, nll: float | None, grad_norm: float, kept: int) -> None:
        """Check update ``step`` before it is applied: ``nll`` its training NLL per target
        token (None where ranks see different batches: distributed runs decide on the
        gradient norm, which all ranks share), ``grad_norm`` its gradient norm."""
        self.bad_updates = 0
        if not math.isfinite(grad_norm) or (nll is not None and not math.isfinite(nll)):
            return  # only the fp16 grad scaler applies such an update: it skips it itself
        why = []
        if grad_norm > GRAD_NORM_LIMIT:
            why.append(f"a gradient norm of {grad_norm:.3g} (ordinary runs stay below "
                       f"{GRAD_NORM_LIMIT:g})")
        if nll is not None and self.level is not None and (
                nll > SPIKE_FACTOR * self.level + SPIKE_NATS):
            why.append(f"a training loss of {nll:.3g} nats per token (its running level "
                       f"was {self.level:.3g})")
        self.far_off = self.far_off + 1 if why else 0
        if not why and nll is not None:
            self.level = nll if self.level is None else LOSS_EMA * self.level + (1 - LOSS_EMA) * nll
        if self.far_off >= SUSTAIN:
            self._stop(step, f"{self.far_off} updates in a row were far off, the last with "
                             f"{' and '.join(why)}", kept)

    def check_weights(self, model: nn.Module, step: int, kept: int) -> None:
        """Every weight finite and below ``WEIGHT_LIMIT`` in magnitude (one host sync)."""
        named = [(n, p) for n, p in model.named_parameters() if p.numel()]
        with torch.no_grad():  # max |w| per tensor; NaN propagates through amax
            peaks = torch.stack([p.abs().amax().float() for _, p in named]).tolist()
        bad = [n for (n, _), v in zip(named, peaks) if not math.isfinite(v)]
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            self._stop(step, f"weights are not finite ({bad[0]}{more})", kept)
        worst = max(range(len(peaks)), key=peaks.__getitem__)
        if peaks[worst] > WEIGHT_LIMIT:
            self._stop(step, f"weights exploded: |{named[worst][0]}| reaches {peaks[worst]:.3g} "
                             f"(a working model's stay far below {WEIGHT_LIMIT:g})", kept)

    def check_validation(self, step: int, ppl: float, kept: int) -> None:
        """Validation perplexity at most ``PPL_FACTOR`` times the target vocabulary size."""
        limit = PPL_FACTOR * self.tgt_vocab_size
        if not ppl <= limit:  # NaN included
            self._stop(step, f"validation perplexity is {ppl:.3g}, above {limit:g} ("
                             f"{PPL_FACTOR:g} x the {self.tgt_vocab_size}-entry target "
                             "vocabulary; uniform guessing scores its size)", kept)
