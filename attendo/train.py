"""Training: optimisation, schedules, validation, checkpoints, early stopping and resume.

A run writes everything into ``train.out_dir`` (see :mod:`attendo.checkpoint`). It can be
killed at any moment: ``attendo train --resume DIR`` restores weights, optimizer moments,
learning-rate schedule, RNG and the position in the batch stream from ``last.safetensors``,
so only the steps since the last checkpoint are lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from . import distributed, metrics
from .checkpoint import (
    CKPT_DIR,
    DECODING_FILES,
    LAST_FILE,
    MODEL_FILE,
    ModelFileError,
    build_model_for_weights,
    check_model_dir,
    init_weights,
    load_training_state,
    prune_checkpoints,
    save_training_state,
    save_weights,
)
from .config import Config, ConfigError, load_config
from .data.batching import BatchStream, iterate_batches
from .data.binarized import PreparedCorpus, StalePreparation, ensure_prepared, prepared_dir
from .data.prepare import (
    Corpus,
    build_codecs,
    encode_copy,
    encode_pairs,
    load_codecs,
    load_corpora,
    load_eval_corpora,
    save_codecs,
)
from .data.vocab import Vocab
from .divergence import DivergenceGuard, TrainingDiverged
from .model.seq2seq import Seq2Seq, build_model
from .model.size import check_model_size
from .model.transformer import TransformerDecoder
from .translator import Translator
from .utils import DirLock, atomic_write_text, stop_point

log = logging.getLogger("attendo")


def lr_factor(cfg, step: int) -> float:
    """Multiplier of train.lr at optimizer step ``step`` (1-based), before plateau scaling."""
    w = cfg.warmup_steps
    warm = min(1.0, step / w) if w else 1.0
    if cfg.schedule == "inverse_sqrt":  # Vaswani et al. 2017, sec. 5.3 (peak lr at step w)
        return min(step / w, math.sqrt(w / max(step, 1)))
    if cfg.schedule == "linear" and cfg.max_steps and step >= w:
        return max(0.0, (cfg.max_steps - step) / max(cfg.max_steps - w, 1))
    return warm


INIT_DATA_KEYS = ("tokenizer", "joint_vocab", "lowercase")


def init_source(cfg: Config) -> Path:
    """train.init_from as a checked model directory: it has weights and vocabularies, and was
    trained with the same tokenizer kind, joint vocabulary and lowercasing as ``cfg``."""
    start = Path(cfg.train.init_from)
    try:  # what fine-tuning reads of it: its config, tokenizers, vocabularies and weights
        check_model_dir(start, DECODING_FILES + (MODEL_FILE,))
    except ModelFileError as e:
        raise ConfigError(f"train.init_from: {e}") from None
    for name in (MODEL_FILE, "config.yaml", "src.vocab.json", "tgt.vocab.json"):
        if not (start / name).is_file():
            raise ConfigError(f"train.init_from: {start}: no {name} there (expected a trained "
                              "model directory)")
    try:
        data = (yaml.safe_load((start / "config.yaml").read_text(encoding="utf-8")) or {}).get(
            "data") or {}
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise ConfigError(f"train.init_from: {start / 'config.yaml'}: unreadable ({e})") from None
    for key in INIT_DATA_KEYS:
        theirs, ours = data.get(key), getattr(cfg.data, key)
        if theirs is not None and theirs != ours:
            raise ConfigError(
                f"train.init_from: {start} was trained with data.{key}: {theirs}, this config "
                f"has {ours}; its tokenizers are reused, so set data.{key}: {theirs}")
    return start


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


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device is cuda but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a gradient scaler is needed) for train.precision."""
    if precision == "fp32":
        return None, False
    if device.type != "cuda":
        if precision == "fp16":
            raise ValueError("train.precision: fp16 needs a CUDA device; use bf16 on CPU")
        return torch.bfloat16, False  # bf16 and amp on CPU
    if precision == "amp":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise ValueError("train.precision: this GPU has no bf16; use fp16 or amp")
        return torch.bfloat16, False
    return torch.float16, True


class _LossModule(torch.nn.Module):
    """The training objective as a forward(), so DistributedDataParallel can wrap it.

    Returns (loss, nll, n_tokens, coverage loss or None); see :meth:`Seq2Seq.losses`."""

    def __init__(self, model: Seq2Seq, label_smoothing: float, coverage_loss: float = 0.0,
                 align_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.coverage_loss = coverage_loss
        self.align_weight = align_weight  # train.guided_alignment.weight

    def forward(self, src, src_lens, tgt_in, tgt_out, src_ext=None, align=None):
        return self.model.losses(
            src, src_lens, tgt_in, tgt_out, Vocab.PAD, self.label_smoothing,
            self.coverage_loss, src_ext, align, self.align_weight,
        )


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg = cfg
        self.dir = Path(cfg.train.out_dir)
        self.t0 = time.time()
        tc = cfg.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        device_name = distributed.device_for(tc.device)
        self.dist = distributed.init(device_name)
        torch.manual_seed(tc.seed)
        self.device = pick_device(device_name, self.dist.local_rank)
        self.amp_dtype, needs_scaler = resolve_precision(tc.precision, self.device)
        # a model that cannot fit is refused before any file is written or tokenizer trained
        # (with the smallest vocabularies; build_model checks again with the real ones)
        n = len(Vocab.SPECIALS)
        check_model_size(cfg.model, n, n, training=True, device=self.device, at_least=True)
        self.scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
        if not self.dist.is_main:
            log.setLevel(logging.WARNING)  # rank-0-only logging
        self.dir.mkdir(parents=True, exist_ok=True)
        # one training per directory: a second one fails here (DirectoryBusy), before it
        # touches the first one's files; released by _close (or when this process ends)
        self._lock = DirLock(self.dir).acquire() if self.dist.is_main else None
        if self.dist.is_main:
            remove_temporary_files(self.dir)  # left by a write that a kill interrupted
        # a prepared (memory-mapped) corpus, or None: the training text is read into memory
        self.prepared_dir = prepared_dir(cfg)
        if self.prepared_dir is None:
            train, self.valid, self.test = load_corpora(cfg.data, seed=tc.seed)
        else:
            train = None
            self.valid, self.test = load_eval_corpora(cfg.data)
        self._setup_file_log()
        try:
            self._setup(cfg, train, resume)
        except BaseException:
            self._close()
            raise

    def _setup_prepared(self, cfg: Config, resume: bool, start: Path | None):
        """Training data from a prepared folder (:mod:`attendo.data.binarized`): rank 0
        prepares it when needed, every rank memory-maps it; returns the id views."""
        assert self.prepared_dir is not None
        if self.dist.is_main:
            ensure_prepared(cfg, self.prepared_dir, seed=cfg.train.seed, resume=resume)
        distributed.barrier(self.dist)
        data = PreparedCorpus(self.prepared_dir, cfg.data)
        distributed.check_agreement(self.dist, "training data", data.fingerprint())
        prepared_codecs = data.codecs(cfg.data.lowercase)
        if resume:
            self.src, self.tgt = load_codecs(self.dir, cfg.data.lowercase)
            if (self.src.vocab, self.tgt.vocab) != (prepared_codecs[0].vocab,
                                                     prepared_codecs[1].vocab):
                raise StalePreparation(
                    f"{self.prepared_dir}: its vocabularies differ from those of the run in "
                    f"{self.dir}; resume with the preparation the run started with")
        else:
            self.src, self.tgt = prepared_codecs
            if start is not None:
                theirs = self._codecs_of(start, cfg)
                if (theirs[0].vocab, theirs[1].vocab) != (prepared_codecs[0].vocab,
                                                          prepared_codecs[1].vocab):
                    raise ConfigError(
                        f"train.init_from: {start}: its vocabularies differ from those of the "
                        f"prepared data in {self.prepared_dir}; prepare the data with the "
                        "model's tokenizers, or train from scratch")
            if self.dist.is_main:
                save_codecs(self.dir, self.src, self.tgt)
                atomic_write_text(self.dir / "config.yaml", cfg.to_yaml())
            distributed.barrier(self.dist)
        src_ids, tgt_ids, dropped = data.training_views(
            cfg.data.max_len, cfg.data.max_ratio, cfg.data.train_weights or None
        )
        if data.manifest["skipped"]:
            log.warning("train: %d bad pairs were skipped when %s was prepared; the first: %s",
                        data.manifest["skipped"], self.prepared_dir, data.manifest["problems"][0])
        return src_ids, tgt_ids, dropped

    def _save_resumed_config(self, cfg: Config) -> None:
        """Overrides given with ``--resume`` become the run's config.yaml once the checkpoint
        has loaded under them, so a later resume (or a translation) without them goes on as
        this one does, as OpenNMT-py's and fairseq's checkpoints keep the options they last
        ran with."""
        path = self.dir / "config.yaml"
        text = cfg.to_yaml()
        if path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
            log.info("%s: rewritten with this resume's overrides", path)

    def _setup(self, cfg: Config, train: Corpus | None, resume: bool) -> None:
        tc = cfg.train
        distributed.check_agreement(self.dist, "config", cfg.to_dict())
        # fine-tuning: the checked model directory whose tokenizers and weights this run takes
        start = init_source(cfg) if tc.init_from and not resume else None
        kept = None
        if train is None:
            src_ids, tgt_ids, dropped = self._setup_prepared(cfg, resume, start)
        else:
            distributed.check_agreement(
                self.dist, "training data", [len(train), train.src[:50], train.tgt[-50:]]
            )
            if resume:
                self.src, self.tgt = load_codecs(self.dir, cfg.data.lowercase)
            else:
                if self.dist.is_main:  # one rank trains the tokenizers, the others read them
                    self.src, self.tgt = (self._codecs_of(start, cfg) if start is not None
                                          else build_codecs(cfg.data, train, seed=tc.seed))
                    save_codecs(self.dir, self.src, self.tgt)
                    atomic_write_text(self.dir / "config.yaml", cfg.to_yaml())
                distributed.barrier(self.dist)
                if not self.dist.is_main:
                    self.src, self.tgt = load_codecs(self.dir, cfg.data.lowercase)
            src_ids, tgt_ids, kept = encode_pairs(
                train, self.src, self.tgt, cfg.data.max_len, cfg.data.max_ratio
            )
            dropped = len(train) - len(kept)
        if not len(src_ids):
            raise ValueError("no training pairs left after the length filters (data.max_len)")
        log.info(
            "train: %d pairs (%d dropped by length filters); vocab src %d, tgt %d",
            len(src_ids), dropped, len(self.src.vocab), len(self.tgt.vocab),
        )
        self.valid_ids = None
        self.valid_copy = None  # copy models: source and targets in the extended vocabulary
        if self.valid is not None:
            valid_src, valid_tgt, valid_kept = encode_pairs(self.valid, self.src, self.tgt)
            self.valid_ids = (valid_src, valid_tgt)
            if cfg.model.copy:
                self.valid_copy = encode_copy(self.valid, self.src, self.tgt, valid_kept)
        copy = encode_copy(train, self.src, self.tgt, kept) if cfg.model.copy else None
        align = self._guided_targets(cfg, train, kept)
        if resume:  # sizes in config.yaml checked against the checkpoint before allocating
            self.model: Seq2Seq = build_model_for_weights(
                self.dir / LAST_FILE, cfg.model, len(self.src.vocab), len(self.tgt.vocab),
                self.dir / "config.yaml", training=True, device=self.device,
            )
        else:
            self.model = build_model(cfg.model, len(self.src.vocab), len(self.tgt.vocab),
                                     training=True, device=self.device)
            if start is not None:
                weights = start / MODEL_FILE
                new = init_weights(weights, self.model, "this run's config")
                with torch.no_grad():  # added coverage starts at 0: the model starts as it was
                    for name, p in self.model.named_parameters():
                        if name in new and name.endswith(".w_c"):
                            p.zero_()
                log.info("initialised from %s%s", weights,
                         f"; new to this model (kept as initialised): {', '.join(new)}"
                         if new else "")
        self.model.to(self.device)
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("model: %s parameters on %s (%s)", f"{n_params:,}", self.device, tc.precision)
        opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        # fused: one kernel per parameter group instead of ~10 small ops per tensor
        # (the per-tensor loop was ~8% of a CPU Transformer step)
        self.optimizer = opt_cls(
            self.model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.state = TrainerState()
        if resume:
            last = self.dir / LAST_FILE
            saved = load_training_state(last, self.model, self.optimizer)
            try:
                self.state = TrainerState(**saved)
            except TypeError as e:  # keys of another version, or a hand-edited file
                raise ModelFileError(
                    f"{last}: trainer state does not fit this attendo ({e})"
                ) from None
            log.info("resumed from %s at step %d", last, self.state.step)
            if self.dist.is_main:
                self._truncate_metrics()
                self._save_resumed_config(cfg)
        if self.dist.enabled:
            # the saved RNG is rank 0's; give each rank its own dropout stream again
            torch.manual_seed(tc.seed * 1000 + self.dist.rank + self.state.step)
        ga = tc.guided_alignment
        if align is not None and isinstance(self.model.decoder, TransformerDecoder):
            # the supervised head's layer takes the explicit-weights path in forward()
            layer = self.model.decoder.attn_layer if ga.layer is None else ga.layer
            self.model.decoder.align_head = (layer % cfg.model.dec_layers,
                                             ga.head % cfg.model.heads)
        self.loss_module: torch.nn.Module = _LossModule(
            self.model, tc.label_smoothing, tc.coverage_loss,
            ga.weight if align is not None else 0.0,
        )
        self._objective = self.loss_module  # the module itself, also once DDP wraps it
        # the coverage weights (w_c of the scorer, zero-initialised) for coverage_from_step
        self._coverage_params = [p for n, p in self.model.named_parameters()
                                 if n.endswith(".w_c")]
        if tc.coverage_from_step and not resume:
            with torch.no_grad():  # phase one: coverage has no effect on the scores
                for p in self._coverage_params:
                    p.zero_()
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_module = DDP(self.loss_module, device_ids=ids)
        self.stream = BatchStream(
            src_ids, tgt_ids, tc.batch_size, tc.batch_type, tc.seed,
            epoch=self.state.epoch, offset=self.state.offset,
            rank=self.dist.rank, world_size=self.dist.world_size, copy=copy, align=align,
        )
        self.batches = iterate_batches(
            self.stream, tc.num_workers, pin_memory=self.device.type == "cuda"
        )
        self._tb = self._tensorboard() if self.dist.is_main else None
        # last.safetensors is written right after a validation, so a resumed step was validated
        self._last_valid_step: int | None = self.state.step if resume else None
        # summed coverage loss of the last train_step (None: the model has no coverage)
        self.step_cov: float | None = None
        # summed alignment cross-entropy and aligned target pieces of the last train_step
        # (None: no guided alignment)
        self.step_align: tuple[float, float] | None = None
        # every test that stops a diverging run (non-finite or absurd losses, gradients,
        # weights, validation perplexity), with its thresholds: attendo/divergence.py
        self.guard = DivergenceGuard(tc.lr, len(self.tgt.vocab), str(self.dir))

    @staticmethod
    def _codecs_of(model_dir: Path, cfg: Config):
        """The tokenizers and vocabularies of the model that train.init_from names."""
        try:
            return load_codecs(model_dir, cfg.data.lowercase)
        except (OSError, ValueError) as e:
            raise ConfigError(f"train.init_from: {model_dir}: cannot read its tokenizers and "
                              f"vocabularies ({e})") from None

    def _guided_targets(self, cfg: Config, train: Corpus | None, kept: list[int] | None):
        """Per kept training pair, its (target piece, source piece) links from
        train.guided_alignment.file (see :func:`attendo.align.guided_targets`), or None."""
        ga = cfg.train.guided_alignment
        if not ga.file:
            return None
        if train is None or kept is None:  # prepared_dir() already refuses this
            raise ConfigError("train.guided_alignment.file: needs the in-memory training path "
                              "(one training file, data.prepared unset)")
        if not Path(ga.file).is_file():
            raise ConfigError(f"train.guided_alignment.file: {ga.file}: no such file")
        from .align import guided_targets

        align, unmapped = guided_targets(ga.file, train.src, train.tgt, kept, self.src, self.tgt,
                                         shift=ga.shift)
        n_links = sum(len(a) for a in align)
        log.info("guided alignment: %d piece links from %s (weight %g%s)", n_links, ga.file,
                 ga.weight, ", shifted rows" if ga.shift else "")
        if unmapped:
            log.warning("guided alignment: %d of %d training pairs have no links: their pieces "
                        "do not group into their whitespace words", unmapped, len(align))
        return align

    # -- bookkeeping -------------------------------------------------------------------
    def _setup_file_log(self) -> None:
        if not self.dist.is_main:
            self._log_handler = None
            return
        handler = logging.FileHandler(self.dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        self._log_handler = handler

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.dir / "tensorboard"))

    def elapsed(self) -> float:
        return self.state.elapsed_s + time.time() - self.t0

    def _metric(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("step",):
                    self._tb.add_scalar(f"{record['type']}/{k}", v, record["step"])

    def _truncate_metrics(self) -> None:
        """Drop the records a killed run logged after its last checkpoint (they are logged
        again as the resumed run repeats those steps) and a torn last line; atomic rewrite."""
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("step", 0) <= self.state.step:
                kept.append(line + "\n")
        atomic_write_text(path, "".join(kept))

    def _set_lr(self) -> float:
        tc = self.cfg.train
        lr = tc.lr * lr_factor(tc, self.state.step + 1) * self.state.lr_scale
        if tc.schedule == "plateau":
            lr = max(lr, tc.min_lr) if self.state.step >= tc.warmup_steps else lr
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- the loop ----------------------------------------------------------------------
    def _done(self) -> str | None:
        tc, st = self.cfg.train, self.state
        if tc.max_steps and st.step >= tc.max_steps:
            return f"reached train.max_steps={tc.max_steps}"
        if tc.max_epochs and st.epoch >= tc.max_epochs:
            return f"reached train.max_epochs={tc.max_epochs}"
        if tc.max_minutes:
            # clocks differ slightly between ranks: stop all of them when any one is out of time
            out = distributed.any_true(
                self.dist, self.elapsed() >= tc.max_minutes * 60, self.device
            )
            if out:
                return f"reached train.max_minutes={tc.max_minutes}"
        if tc.patience and st.bad_valids >= tc.patience:
            return f"early stopping: no improvement in {tc.patience} validations"
        return None

    def train_step(self, batches) -> tuple[float, float, int]:
        """One optimizer step over ``batches`` (accum_steps micro-batches on this rank).

        The summed loss is divided by the token (or sentence) count of the whole effective
        batch, over all micro-batches and all ranks, so N processes x B x accumulation gives the
        same gradient as one process accumulating the same batches.
        """
        tc = self.cfg.train
        if not isinstance(batches, list | tuple):
            batches = [batches]
        local = sum(b.n_tgt_tokens if tc.normalization == "tokens" else b.size for b in batches)
        # DDP averages gradients over ranks, so each rank divides by (global count / world)
        denom = distributed.all_sum(self.dist, float(local), self.device) / self.dist.world_size
        # two-phase coverage (See et al. 2017): no coverage loss and no change to the coverage
        # weights (still 0, so the model is one without coverage) before coverage_from_step
        phase_one = self.state.step + 1 < tc.coverage_from_step
        self._objective.coverage_loss = 0.0 if phase_one else tc.coverage_loss
        self.optimizer.zero_grad(set_to_none=True)
        # loss, nll, coverage, alignment cross-entropy, aligned target pieces
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        total_n = 0
        has_cov = has_align = False
        for i, batch in enumerate(batches):
            batch = batch.to(self.device, non_blocking=True)
            last = i == len(batches) - 1
            sync = contextlib.nullcontext()
            if self.dist.enabled and not last:
                sync = self.loss_module.no_sync()  # all-reduce once, after the last micro-batch
            with sync:
                with self._autocast():
                    parts = self.loss_module(
                        batch.src, batch.src_lens, batch.tgt_in, batch.loss_target, batch.src_ext,
                        batch.align,
                    )
                    loss, nll, cov, n = parts[:4]
                scaled = loss / denom
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
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
        if phase_one:
            for p in self._coverage_params:
                p.grad = None  # the optimizer skips them: they stay exactly 0
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # the gradient norm (clipped to train.clip_norm when set) is the same on every rank
        # after DDP's all-reduce, so all ranks agree on skipping a non-finite update
        norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), tc.clip_norm or math.inf
        )
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
            in_a_row = self.guard.non_finite(self.state.step + 1, what, self._kept_step())
            log.warning("step %d: non-finite %s (%s); update skipped (%d in a row)",
                        self.state.step + 1, what, loss_sum if what == "loss" else norm_value,
                        in_a_row)
            self.optimizer.zero_grad(set_to_none=True)
            return 0.0, 0.0, 0
        # finite but diverging (a loss spike, an exploded gradient): stop before applying it.
        # Distributed ranks see different batches, so they decide on the shared norm alone.
        self.guard.update(self.state.step + 1,
                          None if self.dist.enabled else nll_sum / max(total_n, 1),
                          norm_value, self._kept_step())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss_sum, nll_sum, total_n

    def run(self) -> dict[str, Any]:
        tc, st = self.cfg.train, self.state
        self.model.train()
        reason = self._done()
        total = tc.max_steps or None
        show = tc.progress and self.dist.is_main
        bar = tqdm(total=total, initial=st.step, disable=not show, unit="step",
                   dynamic_ncols=True, desc="train")
        win_loss = win_nll = 0.0
        win_cov: float | None = None
        win_align: list[float] | None = None  # summed alignment CE, aligned target pieces
        win_tok, win_t0 = 0, time.time()
        clean = False
        try:
            while reason is None:
                micro = [next(self.batches) for _ in range(tc.accum_steps)]
                lr = self._set_lr()
                loss, nll, n = self.train_step(micro)
                st.step += 1
                st.tokens += n
                st.epoch, st.offset = self.stream.epoch, self.stream.offset
                win_loss, win_nll, win_tok = win_loss + loss, win_nll + nll, win_tok + n
                if self.step_cov is not None:
                    win_cov = (win_cov or 0.0) + self.step_cov
                if self.step_align is not None:
                    win_align = win_align or [0.0, 0.0]
                    win_align[0] += self.step_align[0]
                    win_align[1] += self.step_align[1]
                bar.update(1)
                if st.step % tc.log_every == 0:
                    dt = max(time.time() - win_t0, 1e-9)
                    rec = {
                        "type": "train", "step": st.step, "epoch": st.epoch,
                        "loss": win_loss / win_tok, "ppl": metrics.perplexity(win_nll, win_tok),
                        "lr": lr, "tok_per_s": win_tok / dt, "elapsed_s": round(self.elapsed(), 2),
                    }
                    if win_cov is not None:  # per target token, before the lambda weight
                        rec["cov_loss"] = win_cov / max(win_tok, 1)
                    if win_align is not None:  # per aligned target piece, before the lambda
                        rec["align_loss"] = win_align[0] / max(win_align[1], 1)
                    if self.device.type == "cuda":  # peak GPU memory since the start
                        rec["peak_mem_mb"] = round(
                            torch.cuda.max_memory_allocated(self.device) / 2**20)
                    self._metric(rec)
                    post = dict(loss=f"{rec['loss']:.3f}", ppl=f"{rec['ppl']:.1f}",
                                lr=f"{lr:.2e}", tok_s=f"{rec['tok_per_s']:.0f}")
                    if "cov_loss" in rec:
                        post["cov"] = f"{rec['cov_loss']:.4f}"
                    if "align_loss" in rec:
                        post["align"] = f"{rec['align_loss']:.4f}"
                    if tc.max_minutes and not tc.max_steps:  # tqdm has no total to estimate from
                        left = max(0.0, tc.max_minutes * 60 - self.elapsed())
                        post["eta"] = time.strftime("%H:%M:%S", time.gmtime(left))
                    bar.set_postfix(post)
                    if not tc.progress:
                        cov_text = f"  cov_loss {rec['cov_loss']:.4f}" if "cov_loss" in rec else ""
                        if "align_loss" in rec:
                            cov_text += f"  align_loss {rec['align_loss']:.4f}"
                        log.info("step %d  loss %.3f  ppl %.2f%s  lr %.2e  %.0f tok/s",
                                 st.step, rec["loss"], rec["ppl"], cov_text, lr, rec["tok_per_s"])
                    win_loss = win_nll = 0.0
                    win_cov = None
                    win_align = None
                    win_tok, win_t0 = 0, time.time()
                if st.step % tc.valid_every == 0:
                    self.validate_and_save()
                    win_t0 = time.time()  # validation time is not training throughput
                stop_point("update", st.step)  # tests only: ATTENDO_STOP_AT=update:N
                reason = self._done()
            if self._last_valid_step != st.step:
                self.validate_and_save()
            log.info("training finished at step %d: %s", st.step, reason)
            clean = True
        finally:
            bar.close()
            self._close(clean)
        return {"step": st.step, "reason": reason, "best": st.best, "history": st.history}

    def _close(self, clean: bool = False) -> None:
        if getattr(self, "_tb", None) is not None:
            self._tb.close()
            self._tb = None
        handler = getattr(self, "_log_handler", None)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
            self._log_handler = None
        if getattr(self, "dist", None) is not None and self.dist.enabled:
            distributed.shutdown(clean)
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    # -- validation and checkpoints ----------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Dev loss/perplexity and greedy BLEU (on up to valid_max_sents sentences)."""
        tc = self.cfg.train
        rec: dict[str, Any] = {"type": "valid", "step": self.state.step}
        if self.valid_ids is None:
            return rec
        t = time.time()
        nll, n = metrics.corpus_nll(self.model, *self.valid_ids, batch_size=64, device=self.device,
                                    copy=self.valid_copy)
        rec["loss"] = nll / max(n, 1)
        rec["ppl"] = metrics.perplexity(nll, n)
        # a perplexity no working model has stops training here, before decoding garbage
        self.guard.check_validation(self.state.step, rec["ppl"], self._kept_step())
        if tc.valid_bleu and self.valid is not None:
            k = min(tc.valid_max_sents, len(self.valid))
            translator = Translator(self.model, self.src, self.tgt, self.cfg)
            hyps = [t.text for t in translator.translate(self.valid.src[:k], beam=1)]
            rec["bleu"] = metrics.bleu(hyps, self.valid.tgt[:k]).score
            rec["example"] = {"src": self.valid.src[0], "ref": self.valid.tgt[0], "hyp": hyps[0]}
        self.model.train()
        rec["valid_s"] = round(time.time() - t, 2)
        return rec

    def validate_and_save(self) -> None:
        """Rank 0 validates and writes checkpoints; the others wait, then adopt its counters
        (best, patience, plateau) so every rank stops and decays the lr together."""
        self._check_weights()  # on every rank: they hold the same weights
        if self.dist.is_main:
            self._validate_and_save()
        self._last_valid_step = self.state.step
        distributed.barrier(self.dist)
        if self.dist.enabled:
            keys = ("best", "bad_valids", "plateau_bad", "lr_scale", "history")
            shared = distributed.broadcast(self.dist, {k: getattr(self.state, k) for k in keys})
            for k, v in shared.items():
                setattr(self.state, k, v)

    def _kept_step(self) -> int:
        """Step of the last checkpoint written (0: none), which a divergence stop keeps."""
        return self._last_valid_step or 0

    def _check_weights(self) -> None:
        """A model with non-finite or exploded weights is never validated, saved or made
        "best" (:meth:`DivergenceGuard.check_weights`)."""
        self.guard.check_weights(self.model, self.state.step, self._kept_step())

    def _validate_and_save(self) -> None:
        tc, st = self.cfg.train, self.state
        rec = self.validate()
        rec["elapsed_s"] = round(self.elapsed(), 2)
        metric = rec.get(tc.early_stopping_metric)
        if metric is not None and not math.isfinite(metric):
            log.warning("valid step %d: %s is %s; not a candidate for the best model",
                        st.step, tc.early_stopping_metric, metric)
            metric = None
        improved = False
        if metric is not None:
            better = (lambda a, b: a > b) if tc.early_stopping_metric == "bleu" else (lambda a, b: a < b)
            improved = st.best is None or better(metric, st.best)
            if improved:
                st.best, st.bad_valids, st.plateau_bad = metric, 0, 0
            else:
                st.bad_valids += 1
                st.plateau_bad += 1
                if tc.schedule == "plateau" and st.plateau_bad >= tc.plateau_patience:
                    st.lr_scale *= tc.plateau_factor
                    st.plateau_bad = 0
                    log.info("plateau: lr scale now %.4g", st.lr_scale)
        rec["best"] = improved
        st.history.append({k: v for k, v in rec.items() if k != "example"})
        self._metric(rec)
        if "ppl" in rec:
            msg = f"valid step {st.step}: ppl {rec['ppl']:.2f}"
            if "bleu" in rec:
                msg += f"  bleu {rec['bleu']:.2f}  | {rec['example']['hyp']}"
            log.info(msg + ("  (best)" if improved else ""))
        meta = {"step": st.step, "elapsed_s": rec["elapsed_s"], "valid": st.history[-1]}
        if improved or (metric is None and tc.early_stopping_metric not in rec):
            save_weights(self.dir / MODEL_FILE, self.model, meta)
        save_weights(self.dir / CKPT_DIR / f"step-{st.step}.safetensors", self.model, meta)
        prune_checkpoints(self.dir, tc.keep_last)
        trainer_state = dict(st.__dict__)
        trainer_state["elapsed_s"] = self.elapsed()
        save_training_state(self.dir / LAST_FILE, self.model, self.optimizer, trainer_state)


def train(cfg: Config) -> Path:
    """Train a model from a config (Python API); returns the model directory."""
    Trainer(cfg).run()
    return Path(cfg.train.out_dir)


def resume(model_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Continue the run in ``model_dir`` from its last checkpoint. A run stopped before its
    first checkpoint was complete (no ``last.safetensors``) has nothing to continue: it starts
    again from step 0 with the directory's config, which is what it would have done."""
    model_dir = Path(model_dir)
    check_model_dir(model_dir)  # its files are its own: a link to elsewhere is refused
    cfg = load_config(model_dir / "config.yaml", overrides)
    cfg.train.out_dir = str(model_dir)
    with DirLock(model_dir) if distributed.is_rank_zero() else contextlib.nullcontext():
        _resume(model_dir, cfg)
    return model_dir


def _resume(model_dir: Path, cfg: Config) -> None:
    if not (model_dir / LAST_FILE).exists():
        log.warning("%s: no checkpoint was completed; starting again from step 0",
                    model_dir / LAST_FILE)
        if distributed.is_rank_zero():
            clear_run(model_dir)
        Trainer(cfg).run()
    else:
        Trainer(cfg, resume=True).run()


def clear_run(out: Path) -> None:
    """Remove what a previous run left in ``out`` (weights, checkpoints, logs, metrics and
    temporary files of interrupted writes), keeping its config and tokenizers."""
    import shutil

    for name in ("metrics.jsonl", "train.log", LAST_FILE, MODEL_FILE):
        (out / name).unlink(missing_ok=True)
    for name in (CKPT_DIR, "tensorboard"):
        shutil.rmtree(out / name, ignore_errors=True)
    remove_temporary_files(out)


def remove_temporary_files(out: Path) -> None:
    """Delete ``.NAME.PID.HEX.tmp`` files that a killed atomic write left behind (rank 0
    only: no other process writes into a run directory while it trains)."""
    for d in (out, out / CKPT_DIR):
        if d.is_dir():
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


__all__ = ["Trainer", "TrainerState", "TrainingDiverged", "train", "resume", "clear_run",
           "lr_factor"]
