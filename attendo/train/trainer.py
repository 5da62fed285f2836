"""The training loop: :class:`Trainer` turns a config into a trained model directory, one
optimizer update at a time (:meth:`Trainer.step`); what it is built from lives beside it
(``data``, ``setup``, ``objective``, ``validation``, ``state``, ``progress``)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import distributed
from ..checkpoint import LAST_FILE
from ..config import Config
from ..data.batching import BatchStream, iterate_batches
from ..data.memmap import prepared_dir
from ..data.prepare import load_corpora, load_eval_corpora
from ..data.vocab import Vocab
from ..model.size import check_model_size
from ..utils import DirLock, stop_point
from . import setup, state
from .data import init_source, load_training_data
from .divergence import DivergenceGuard
from .interrupt import Interrupted, stop_on_signals
from .objective import CoverageSwitch, Objective, forward_backward
from .progress import RunLog, StepResult, Window, show
from .schedule import set_lr, stop_reason
from .validation import Validation

log = logging.getLogger("attendo")


class Trainer(Validation):
    """One training run in ``cfg.train.out_dir``: ``run()`` trains to the end of its budget;
    ``step()`` makes one update and ``close()`` lets the directory go (for benchmarks)."""

    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg = cfg
        self.dir = Path(cfg.train.out_dir)
        self.t0 = time.time()
        tc = cfg.train
        self.dist, self.device = setup.start_process(tc)
        self.amp_dtype, needs_scaler = setup.resolve_precision(tc.precision, self.device)
        # a model that cannot fit is refused before any file is written (with the smallest
        # vocabularies; build_model checks again with the real ones)
        n = len(Vocab.SPECIALS)
        check_model_size(cfg.model, n, n, training=True, device=self.device, at_least=True)
        self.scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
        if not self.dist.is_main:
            log.setLevel(logging.WARNING)  # rank-0-only logging
        self.dir.mkdir(parents=True, exist_ok=True)
        # one training per directory: a second one fails here (DirectoryBusy), before it
        # touches the first one's files; released by close (or when this process ends)
        self._lock = DirLock(self.dir).acquire() if self.dist.is_main else None
        if self.dist.is_main:
            state.remove_temporary_files(self.dir)  # left by a write that a kill interrupted
        self.prepared_dir = prepared_dir(cfg)  # memory-mapped corpus, or None: text in memory
        if self.prepared_dir is None:
            train, self.valid, self.test = load_corpora(cfg.data, seed=tc.seed)
        else:
            train = None
            self.valid, self.test = load_eval_corpora(cfg.data)
        self.run_log = RunLog(self.dir, self.dist.is_main)
        try:
            self._setup(cfg, train, resume)
        except BaseException:
            self.close()
            raise

    def _setup(self, cfg: Config, train, resume: bool) -> None:
        tc = cfg.train
        distributed.check_agreement(self.dist, "config", cfg.to_dict())
        start = init_source(cfg) if tc.init_from and not resume else None  # fine-tuning
        data = load_training_data(cfg, self.dist, self.dir, train, self.valid, self.prepared_dir,
                                  resume, start)
        self.src, self.tgt = data.src, data.tgt
        self.valid_ids, self.valid_copy = data.valid_ids, data.valid_copy
        self.model = setup.build_training_model(cfg, self.src.size, len(self.tgt.vocab),
                                                self.dir, self.device, resume, start)
        self.optimizer = setup.make_optimizer(tc, self.model, self.device)
        self.state = state.TrainerState()
        if resume:
            self.state = state.load_state(self.dir / LAST_FILE, self.model, self.optimizer)
            log.info("resumed from %s at step %d", self.dir / LAST_FILE, self.state.step)
            if self.dist.is_main:
                state.truncate_metrics(self.dir, self.state.step)
                state.save_resumed_config(self.dir, cfg)
        setup.reseed_rank(tc, self.dist, self.state.step)
        ga = tc.guided_alignment
        if data.align is not None:
            setup.supervise_head(self.model, ga)
        self.objective = Objective(self.model, tc.label_smoothing, tc.coverage_loss,
                                   ga.weight if data.align is not None else 0.0,
                                   tc.coverage_loss_form)
        self.coverage = CoverageSwitch(self.objective, self.model, tc.coverage_loss,
                                       tc.coverage_from_step, zero=not resume)
        self.loss_module = setup.wrap_ddp(self.objective, self.dist, self.device)
        self.stream = BatchStream(data.src_ids, data.tgt_ids, tc.batch_size, tc.batch_type,
                                  tc.seed, epoch=self.state.epoch, offset=self.state.offset,
                                  rank=self.dist.rank, world_size=self.dist.world_size,
                                  copy=data.copy, align=data.align)
        self.batches = iterate_batches(self.stream, tc.num_workers,
                                       pin_memory=self.device.type == "cuda")
        if tc.tensorboard:
            self.run_log.open_tensorboard()
        # last.safetensors is written right after a validation, so a resumed step was validated
        self.last_valid_step: int | None = self.state.step if resume else None
        # of the last train_step: summed coverage loss (None: no coverage), and summed
        # alignment cross-entropy and aligned target pieces (None: no guided alignment)
        self.step_cov: float | None = None
        self.step_align: tuple[float, float] | None = None
        self.guard = DivergenceGuard(tc.lr, len(self.tgt.vocab), str(self.dir))

    def elapsed(self) -> float:
        return self.state.elapsed_s + time.time() - self.t0

    def kept_step(self) -> int:
        """Step of the last checkpoint written (0: none), which a divergence stop keeps."""
        return self.last_valid_step or 0

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def step(self) -> StepResult:
        """One optimizer update on the next train.accum_steps batches, at the scheduled
        learning rate; advances the step, token and data-position counters."""
        tc, st = self.cfg.train, self.state
        batches = [next(self.batches) for _ in range(tc.accum_steps)]
        lr = set_lr(tc, st, self.optimizer)
        loss, nll, n = self.train_step(batches)
        st.step += 1
        st.tokens += n
        st.epoch, st.offset = self.stream.epoch, self.stream.offset
        return StepResult(loss, nll, n, lr, batches, self.step_cov, self.step_align)

    def train_step(self, batches) -> tuple[float, float, int]:
        """One optimizer update over ``batches`` (accum_steps micro-batches on this rank), at
        the learning rate already set; returns (summed loss, summed nll, target tokens). The
        summed loss is divided by the token (or sentence) count of the whole effective batch,
        over all micro-batches and ranks, so N processes x B x accumulation gives the same
        gradient as one process accumulating the same batches."""
        tc, step = self.cfg.train, self.state.step + 1
        local = sum(b.n_tgt_tokens if tc.normalization == "tokens" else b.size for b in batches)
        # DDP averages gradients over ranks, so each rank divides by (global count / world)
        denom = distributed.all_sum(self.dist, float(local), self.device) / self.dist.world_size
        self.coverage.enter(step)
        self.optimizer.zero_grad(set_to_none=True)
        sums, total_n, has_cov, has_align = forward_backward(
            self.loss_module, batches, denom, self.device, self._autocast, self.scaler,
            self.dist.enabled)
        self.coverage.drop_gradients()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # the gradient norm (clipped to train.clip_norm when set) is the same on every rank
        # after DDP's all-reduce, so all ranks agree on skipping a non-finite update
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_norm or math.inf)
        # the one host synchronisation of an update: the logged sums and the finiteness check
        check = torch.cat([sums, norm.reshape(1).to(sums)])
        loss_sum, nll_sum, cov_sum, align_sum, n_aligned, norm_value = check.tolist()
        self.step_cov = cov_sum if has_cov else None
        self.step_align = (align_sum, n_aligned) if has_align else None
        finite = math.isfinite(norm_value) and (self.dist.enabled or math.isfinite(loss_sum))
        if self.scaler is None and not finite:
            # never apply a non-finite update (it would turn every weight into NaN); stop when
            # it keeps happening. The grad scaler (fp16) skips and rescales by itself.
            what = "gradient norm" if math.isfinite(loss_sum) else "loss"
            in_a_row = self.guard.non_finite(step, what, self.kept_step())
            log.warning("step %d: non-finite %s (%s); update skipped (%d in a row)", step, what,
                        loss_sum if what == "loss" else norm_value, in_a_row)
            self.optimizer.zero_grad(set_to_none=True)
            return 0.0, 0.0, 0
        # finite but diverging (a loss spike, an exploded gradient): stop before applying it.
        # Distributed ranks see different batches, so they decide on the shared norm alone.
        self.guard.update(step, None if self.dist.enabled else nll_sum / max(total_n, 1),
                          norm_value, self.kept_step())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss_sum, nll_sum, total_n

    def run(self) -> dict[str, Any]:
        tc, st = self.cfg.train, self.state
        self.model.train()
        reason = stop_reason(tc, st, self.elapsed, self.dist, self.device)
        bar = tqdm(total=tc.max_steps or None, initial=st.step, unit="step", desc="train",
                   disable=not (tc.progress and self.dist.is_main), dynamic_ncols=True)
        window, clean = Window(), False
        try:
            with stop_on_signals() as stop:
                while reason is None:
                    window.add(self.step())
                    bar.update(1)
                    self._after_step(window, bar)
                    stop_point("update", st.step)  # tests only: ATTENDO_STOP_AT=update:N
                    if distributed.any_true(self.dist, stop.signame is not None, self.device):
                        self._save_interrupted(stop.signame or "SIGTERM")  # raises
                    reason = stop_reason(tc, st, self.elapsed, self.dist, self.device)
            if self.last_valid_step != st.step:
                self.validate_and_save()
            log.info("training finished at step %d: %s", st.step, reason)
            clean = True
        finally:
            bar.close()
            self.close(clean)
        return {"step": st.step, "reason": reason, "best": st.best, "history": st.history}

    def _after_step(self, window: Window, bar) -> None:
        """Log every train.log_every updates, validate and save every train.valid_every."""
        tc, st = self.cfg.train, self.state
        if st.step % tc.log_every == 0:
            rec = window.record(st.step, st.epoch, self.elapsed(), self.device)
            self.run_log.metric(rec)
            left = (max(0.0, tc.max_minutes * 60 - self.elapsed())
                    if tc.max_minutes and not tc.max_steps else None)
            show(rec, bar, tc, left)
            window.reset()
        if st.step % tc.valid_every == 0:
            self.validate_and_save()
            window.t0 = time.time()  # validation time is not training throughput

    def _save_interrupted(self, signame: str) -> None:
        """After a SIGINT/SIGTERM: ``last.safetensors`` at this step (no validation, so the
        resumed run continues exactly as an uninterrupted one would), then stop."""
        if self.dist.is_main and self.last_valid_step != self.state.step:
            state.save_state(self.dir, self.model, self.optimizer, self.state, self.elapsed())
        distributed.barrier(self.dist)
        raise Interrupted(signame, self.state.step, self.dir)

    def close(self, clean: bool = False) -> None:
        """Stop the batch workers, close the logs and the process group and release the
        directory lock (``run()`` does this when it ends; idempotent)."""
        if getattr(self, "batches", None) is not None:
            self.batches.close()  # a generator: shuts its collation workers down
        if getattr(self, "run_log", None) is not None:
            self.run_log.close()
        if getattr(self, "dist", None) is not None and self.dist.enabled:
            distributed.shutdown(clean)
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None
