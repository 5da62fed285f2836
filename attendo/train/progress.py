"""What a run reports: train.log, metrics.jsonl (+ TensorBoard when installed), and the
train records summed over each window of train.log_every updates, with their log line and
progress-bar postfix. Only rank 0 writes."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import metrics
from ..errors import UsageError

log = logging.getLogger("attendo")


class RunLog:
    """train.log (a handler on the 'attendo' logger) and metrics.jsonl of a run directory;
    on ranks other than 0 both are off."""

    def __init__(self, out: Path, is_main: bool):
        self.out, self.is_main, self.tb = out, is_main, None
        self.handler: logging.Handler | None = None
        if is_main:
            self.handler = logging.FileHandler(out / "train.log")
            self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(self.handler)

    def open_tensorboard(self) -> None:
        """train.tensorboard: the metrics also go to OUT/tensorboard (event files)."""
        if self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UsageError("train.tensorboard: needs the tensorboard package: pip install "
                                 "'attendo[tensorboard]' (or set train.tensorboard: false)") from None
            self.tb = SummaryWriter(str(self.out / "tensorboard"))

    def metric(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self.tb.add_scalar(f"{record['type']}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.handler is not None:
            log.removeHandler(self.handler)
            self.handler.close()
            self.handler = None


@dataclass
class StepResult:
    """One optimizer update (:meth:`Trainer.step`)."""

    loss: float  # summed training loss (label-smoothed, + weighted extra terms)
    nll: float  # summed negative log-likelihood
    tokens: int  # target tokens of the update (0: a non-finite update was skipped)
    lr: float  # its learning rate
    batches: list = field(default_factory=list)  # the micro-batches it trained on (this rank)
    cov: float | None = None  # summed coverage loss (None: the model has no coverage)
    align: tuple[float, float] | None = None  # summed alignment CE, aligned target pieces

    @property
    def sentences(self) -> int:
        return sum(b.size for b in self.batches)


class Window:
    """Sums of the updates since the last train record."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss = self.nll = self.lr = 0.0
        self.cov: float | None = None
        self.align: list[float] | None = None  # summed alignment CE, aligned target pieces
        self.tokens, self.t0 = 0, time.time()

    def add(self, r: StepResult) -> None:
        self.loss, self.nll = self.loss + r.loss, self.nll + r.nll
        self.tokens += r.tokens
        self.lr = r.lr
        if r.cov is not None:
            self.cov = (self.cov or 0.0) + r.cov
        if r.align is not None:
            a = self.align or [0.0, 0.0]
            self.align = [a[0] + r.align[0], a[1] + r.align[1]]

    def record(self, step: int, epoch: int, elapsed_s: float, device: torch.device) -> dict:
        dt = max(time.time() - self.t0, 1e-9)
        rec = {
            "type": "train", "step": step, "epoch": epoch,
            "loss": self.loss / self.tokens, "ppl": metrics.perplexity(self.nll, self.tokens),
            "lr": self.lr, "tok_per_s": self.tokens / dt, "elapsed_s": round(elapsed_s, 2),
        }
        if self.cov is not None:  # per target token, before the lambda weight
            rec["cov_loss"] = self.cov / max(self.tokens, 1)
        if self.align is not None:  # per aligned target piece, before the lambda
            rec["align_loss"] = self.align[0] / max(self.align[1], 1)
        if device.type == "cuda":  # peak GPU memory since the start
            rec["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        return rec


def show(rec: dict, bar, tc, seconds_left: float | None) -> None:
    """A train record on the progress bar, or as a log line when train.progress is off;
    ``seconds_left`` of train.max_minutes when that is the only budget."""
    post = dict(loss=f"{rec['loss']:.3f}", ppl=f"{rec['ppl']:.1f}", lr=f"{rec['lr']:.2e}",
                tok_s=f"{rec['tok_per_s']:.0f}")
    extra = [k for k in ("cov_loss", "align_loss") if k in rec]
    post.update({k.removesuffix("_loss"): f"{rec[k]:.4f}" for k in extra})
    if seconds_left is not None:  # tqdm has no total to estimate from
        post["eta"] = time.strftime("%H:%M:%S", time.gmtime(seconds_left))
    bar.set_postfix(post)
    if not tc.progress:
        log.info("step %d  loss %.3f  ppl %.2f%s  lr %.2e  %.0f tok/s", rec["step"], rec["loss"],
                 rec["ppl"], "".join(f"  {k} {rec[k]:.4f}" for k in extra), rec["lr"],
                 rec["tok_per_s"])
