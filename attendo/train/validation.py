"""Validation: dev perplexity and greedy BLEU, the best model and its patience counters,
and the checkpoints written after each validation (rank 0 validates; the others adopt its
counters)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from .. import distributed, metrics
from ..translator import Translator
from .state import TrainerState, save_checkpoints, save_state

log = logging.getLogger("attendo")

SHARED = ("best", "bad_valids", "plateau_bad", "lr_scale", "history")  # rank 0's, adopted


def track_best(tc, st: TrainerState, rec: dict[str, Any]) -> tuple[bool, float | None]:
    """Update the best metric, patience and plateau counters (and the plateau lr scale)
    with a validation; returns (whether it is the best so far, its metric or None)."""
    metric = rec.get(tc.early_stopping_metric)
    if metric is not None and not math.isfinite(metric):
        log.warning("valid step %d: %s is %s; not a candidate for the best model",
                    st.step, tc.early_stopping_metric, metric)
        metric = None
    improved = False
    if metric is not None:
        higher = tc.early_stopping_metric == "bleu"
        improved = st.best is None or (metric > st.best if higher else metric < st.best)
        if improved:
            st.best, st.bad_valids, st.plateau_bad = metric, 0, 0
        else:
            st.bad_valids += 1
            st.plateau_bad += 1
            if tc.schedule == "plateau" and st.plateau_bad >= tc.plateau_patience:
                st.lr_scale *= tc.plateau_factor
                st.plateau_bad = 0
                log.info("plateau: lr scale now %.4g", st.lr_scale)
    return improved, metric


class Validation:
    """The trainer's validation and checkpoint methods, mixed into
    :class:`~attendo.train.trainer.Trainer`."""

    def validate(self) -> dict[str, Any]:
        """Dev loss/perplexity and greedy BLEU (on up to valid_max_sents sentences)."""
        tc = self.cfg.train
        rec: dict[str, Any] = {"type": "valid", "step": self.state.step}
        if self.valid_ids is None:
            return rec
        t = time.time()
        nll, n = metrics.corpus_nll(self.model, *self.valid_ids, batch_size=64,
                                    device=self.device, copy=self.valid_copy)
        rec["loss"] = nll / max(n, 1)
        rec["ppl"] = metrics.perplexity(nll, n)
        # a perplexity no working model has stops training here, before decoding garbage
        self.guard.check_validation(self.state.step, rec["ppl"], self.kept_step())
        valid = self.valid
        if tc.valid_bleu and valid is not None:
            k = min(tc.valid_max_sents, len(valid))
            translator = Translator(self.model, self.src, self.tgt, self.cfg)
            hyps = [t.text for t in translator.translate(valid.src[:k], beam=1)]
            rec["bleu"] = metrics.bleu(hyps, valid.tgt[:k]).score
            rec["example"] = {"src": valid.src[0], "ref": valid.tgt[0], "hyp": hyps[0]}
        self.model.train()
        rec["valid_s"] = round(time.time() - t, 2)
        return rec

    def validate_and_save(self) -> None:
        """Rank 0 validates, tracks the best, logs and writes the checkpoints and the state;
        the others wait, then adopt its counters (best, patience, plateau) so every rank stops
        and decays the lr together."""
        # a model with non-finite or exploded weights is never validated, saved or made "best"
        # (DivergenceGuard.check_weights); on every rank: they hold the same weights
        tc, st = self.cfg.train, self.state
        self.guard.check_weights(self.model, st.step, self.kept_step())
        if self.dist.is_main:
            rec = self.validate()
            rec["elapsed_s"] = round(self.elapsed(), 2)
            improved, metric = track_best(tc, st, rec)
            rec["best"] = improved
            st.history.append({k: v for k, v in rec.items() if k != "example"})
            self.run_log.metric(rec)
            if "ppl" in rec:
                msg = f"valid step {st.step}: ppl {rec['ppl']:.2f}"
                if "bleu" in rec:
                    msg += f"  bleu {rec['bleu']:.2f}  | {rec['example']['hyp']}"
                log.info(msg + ("  (best)" if improved else ""))
            meta = {"step": st.step, "elapsed_s": rec["elapsed_s"], "valid": st.history[-1]}
            best = improved or (metric is None and tc.early_stopping_metric not in rec)
            save_checkpoints(self.dir, self.model, meta, best, tc.keep_last)
            save_state(self.dir, self.model, self.optimizer, st, self.elapsed())
        self.last_valid_step = st.step
        distributed.barrier(self.dist)
        if self.dist.enabled:
            shared = distributed.broadcast(self.dist, {k: getattr(st, k) for k in SHARED})
            for k, v in shared.items():
                setattr(st, k, v)
