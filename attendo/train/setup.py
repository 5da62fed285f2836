"""A run's machinery, built once: the process (threads, seed, device, process group), the
model (new, resumed or from train.init_from), the optimizer, each rank's dropout stream, DDP
and the head that guided alignment supervises."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import distributed
from ..checkpoint import LAST_FILE, MODEL_FILE, build_model_for_weights, init_weights
from ..config import Config, ConfigError
from ..model.seq2seq import Seq2Seq
from ..model.size import build_model

log = logging.getLogger("attendo")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a gradient scaler is needed) for train.precision."""
    if precision == "fp32":
        return None, False
    if device.type != "cuda":
        if precision == "fp16":
            raise ConfigError("train.precision: fp16 needs a CUDA device; use bf16 on CPU")
        return torch.bfloat16, False  # bf16 and amp on CPU
    if precision == "amp":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision: this GPU has no bf16; use fp16 or amp")
        return torch.bfloat16, False
    return torch.float16, True


def start_process(tc) -> tuple[distributed.DistInfo, torch.device]:
    """Threads, the process group (under torchrun), the seed, and this process's device."""
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device_name = distributed.device_for(tc.device)
    dist = distributed.init(device_name)
    torch.manual_seed(tc.seed)
    return dist, pick_device(device_name, dist.local_rank)


def build_training_model(cfg: Config, n_src: int, n_tgt: int, out: Path,
                         device: torch.device, resume: bool, start: Path | None) -> Seq2Seq:
    """A new model, one sized by the checkpoint to resume (its weights are loaded with the
    optimizer), or one initialised from ``start`` (train.init_from) on ``device``."""
    if resume:  # sizes in config.yaml checked against the checkpoint before allocating
        model: Seq2Seq = build_model_for_weights(out / LAST_FILE, cfg.model, n_src, n_tgt,
                                                 out / "config.yaml", training=True, device=device)
    else:
        model = build_model(cfg.model, n_src, n_tgt, training=True, device=device)
        if start is not None:
            weights = start / MODEL_FILE
            new = init_weights(weights, model, "this run's config")
            coverage = {id(p) for p in model.coverage_parameters()}
            with torch.no_grad():  # added coverage starts at 0: the model starts as it was
                for name, p in model.named_parameters():
                    if name in new and id(p) in coverage:
                        p.zero_()
            added = f"; new to this model (kept as initialised): {', '.join(new)}" if new else ""
            log.info("initialised from %s%s", weights, added)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s parameters on %s (%s)", f"{n_params:,}", device, cfg.train.precision)
    return model


def make_optimizer(tc, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel per parameter group instead of ~10 small ops per tensor (the
    # per-tensor loop was ~8% of a CPU Transformer step)
    return opt_cls(model.parameters(), lr=tc.lr, betas=tuple(tc.betas),
                   weight_decay=tc.weight_decay, fused=device.type in ("cpu", "cuda"))


def reseed_rank(tc, dist, step: int) -> None:
    """The saved RNG is rank 0's: give each distributed rank its own dropout stream again."""
    if dist.enabled:
        torch.manual_seed(tc.seed * 1000 + dist.rank + step)


def supervise_head(model: Seq2Seq, ga) -> None:
    """Guided alignment on a multi-head decoder: the (layer, head) train.guided_alignment
    names (the decoder's attention layer by default), which then takes the explicit-weights
    path in forward(). One attention distribution per step (an RNN) needs no choice."""
    if model.attention_heads is None:
        return
    layers, n_heads = model.attention_heads
    layer = model.decoder.attn_layer if ga.layer is None else ga.layer
    model.decoder.align_head = (layer % layers, ga.head % n_heads)


def wrap_ddp(module: torch.nn.Module, dist, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when training in several processes."""
    if not dist.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
