"""Divergence: every test that stops a training gone wrong, with its thresholds explained.

A learning rate far too high need not produce a NaN. With ``train.lr=1e30`` one Adam step moves
every weight by about 1e30; from then on the loss is ~1e32 nats per token and the validation
perplexity e^100 (the ceiling of :func:`attendo.metrics.perplexity`), yet every number is
finite: such a model would save, load, and decode to garbage. :class:`DivergenceGuard` holds
every test that stops such a run, in one place:

per update, on numbers the trainer reads anyway at its one host synchronisation (so they cost
the device nothing):

- a non-finite loss or gradient norm: the update is skipped, and ``MAX_BAD_UPDATES`` in a row
  stop training;
- a training loss far above its running level, or a gradient norm that no working model
  produces, for ``SUSTAIN`` updates in a row (one odd batch is noise; five in a row are not);

per checkpoint, before anything is written:

- a weight that is not finite, or of a magnitude no working model reaches (``WEIGHT_LIMIT``);
- a validation perplexity that the target vocabulary rules out for a working model
  (``PPL_FACTOR``).

Each test raises :class:`TrainingDiverged`: one line that names the step, what was seen, the
likely cause (``train.lr``) and how to go on. The trainer runs the per-update tests before it
applies the update, and the checkpoint tests before validate-and-save writes anything, so
``model.safetensors`` (best) and ``last.safetensors`` are never written from a diverged state;
the checkpoints on disk are the last good ones, unchanged, and
``attendo train --resume DIR train.lr=...`` goes on from the last of them. The tests draw no
random numbers and change nothing that training computes: a run that does not diverge is
bit-for-bit the same with them as without them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import AttendoError

MAX_BAD_UPDATES = 5
"""Non-finite updates in a row (each one skipped) before training stops."""

SUSTAIN = 5
"""Finite but far-off updates (a loss spike or an exploded gradient) in a row before training
stops. One bad batch, or a short spike that the optimizer recovers from, is ordinary."""

LOSS_EMA = 0.98
"""Weight of the past in the running loss level: an exponential average of the per-token
training NLL over ordinary updates (time constant ~50 updates). Far-off updates do not move it,
so a run stuck at a diverged loss keeps counting."""

SPIKE_FACTOR = 4.0
SPIKE_NATS = 2.0
"""An update's training loss (NLL per target token, without label smoothing or extra terms) is
far off when it is above ``SPIKE_FACTOR * level + SPIKE_NATS``. Batch-to-batch noise is tens of
percent of the level: measured, the largest ratio of an update's loss to that bound was 0.39
on the Multi30k Transformer config (1,200 updates, its warm-up included), 0.30 on the Multi30k
RNN config (400 updates) and 0.21 on toy dates (600 updates). The 2 nats keep a nearly
converged run (level 0.01) from stopping on one hard stretch of batches; the factor keeps a
fresh run from stopping at all: starting at ln |V|, about 9 for 8,000 pieces, a spike would
need 38 nats per token, four times worse than uniform guessing. The first update sets the
level (it is never far off itself). With ``train.lr=1e30`` the second update's loss is ~1e31."""

GRAD_NORM_LIMIT = 1e6
"""Gradient norm (over all weights, before clipping) above which an update counts as exploded.
The loss is a mean over tokens (or sentences), whose gradients stay small while activations do:
measured, the largest norms of ordinary runs were 4.1 on the Multi30k Transformer config, 2.8
on the Multi30k RNN config and 3.2 on toy dates, first updates included. (A run that
``train.lr=1e30`` blew up has saturated units that pass little gradient, norms ~8: its loss
and weights stop it. This test is for gradients that explode before the loss moves.)"""

WEIGHT_LIMIT = 1e4
"""Largest weight magnitude a working model can have. Weights start at magnitudes of 1 or less
(LayerNorm gains 1, uniform or normal initialisations scaled by the layer width), and Adam moves
a weight by at most about lr per update (1e-3 for 1e5 updates in one direction would give
100, and real runs stay near 1: measured, at most 1.25 after 1,200
updates of the Multi30k Transformer config, 0.47 after 400 of its RNN config, 0.75 after 600
of toy dates). A weight of 1e4 turns any ordinary activation into a saturated one, and its
products overflow half precision (65504)."""

PPL_FACTOR = 10.0
"""Validation perplexity above ``PPL_FACTOR * |V_tgt|`` rules out a working model. Uniform
guessing over the target vocabulary scores exactly |V_tgt|, and a freshly initialised model
scores about that (its logits are small; measured, 1.8 |V| for the Multi30k Transformer
config's first batch, 1.0 |V| for toy dates), so ten times worse than uniform means the model
is confidently wrong about nearly every token: it has diverged, however finite its numbers."""


class TrainingDiverged(ValueError, AttendoError):
    """Training diverged (non-finite or absurd losses, gradients, weights or validation
    perplexity); nothing from the diverged state was saved."""


class DivergenceGuard:
    """The divergence tests of one training run (see the module docstring).

    ``lr`` is ``train.lr`` (named in messages as the likely cause), ``tgt_vocab_size`` the
    target vocabulary's size (for the perplexity bound), ``out_dir`` the run directory (named
    in the command to resume with). ``kept``, given to every test, is the step of the last
    checkpoint written (0: none), which the message names as what is kept."""

    def __init__(self, lr: float, tgt_vocab_size: int, out_dir: str):
        self.lr = lr
        self.tgt_vocab_size = tgt_vocab_size
        self.out_dir = out_dir
        self.level: float | None = None  # running per-token training NLL of ordinary updates
        self.bad_updates = 0  # non-finite updates in a row (skipped)
        self.far_off = 0  # finite updates in a row with a loss spike or an exploded gradient

    def _stop(self, step: int, what: str, kept: int):
        saved = (f"The checkpoints up to step {kept} are kept, nothing later was saved" if kept
                 else "Nothing was saved (no checkpoint had been written yet)")
        raise TrainingDiverged(
            f"training diverged: at step {step}, {what}; likely cause: train.lr={self.lr:g} is "
            f"too high. {saved}: lower train.lr (or add train.warmup_steps or "
            f"train.clip_norm) and resume with `attendo train --resume {self.out_dir} "
            "train.lr=...`"
        )

    # -- per update ------------------------------------------------------------------------
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
        if not why:
            self.far_off = 0
            if nll is not None:
                self.level = nll if self.level is None else (
                    LOSS_EMA * self.level + (1 - LOSS_EMA) * nll)
            return
        self.far_off += 1
        if self.far_off >= SUSTAIN:
            self._stop(step, f"{self.far_off} updates in a row were far off, the last with "
                             f"{' and '.join(why)}", kept)

    # -- per checkpoint --------------------------------------------------------------------
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


__all__ = ["DivergenceGuard", "TrainingDiverged", "MAX_BAD_UPDATES", "SUSTAIN",
           "GRAD_NORM_LIMIT", "WEIGHT_LIMIT", "PPL_FACTOR", "SPIKE_FACTOR", "SPIKE_NATS"]
