"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

``attendo train cfg.yaml`` runs unchanged under ``torchrun --nproc_per_node=N``: torchrun
sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT, and :func:`init` joins the process
group (nccl on CUDA, gloo on CPU). Multi-node runs use torchrun's rendezvous arguments
(``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``); nothing in attendo changes.

Effective batch = processes x train.batch_size x train.accum_steps.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def device_for(name: str) -> str:
    """The device type for ``train.device`` (auto | cpu | cuda) in this launch.

    ``auto`` is cuda only if every process on this machine gets a GPU of its own; with fewer
    GPUs than local processes (say 2 processes on a 1-GPU machine) it falls back to cpu and
    gloo, which always works. An explicit ``cuda`` with too few GPUs is an error."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        return "cuda" if gpus >= max(local, 1) else "cpu"
    if name == "cuda" and local > gpus:
        raise UsageError(f"train.device is cuda but this machine has {gpus} CUDA device(s) for "
                         f"{local} processes; start at most one process per GPU, or use "
                         "train.device=cpu")
    return name


def is_rank_zero() -> bool:
    """Whether this process has global rank 0 as torchrun set it (also when not under it)."""
    return int(os.environ.get("RANK", "0")) == 0


def init(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                timeout=timedelta(minutes=30))
    return info


def shutdown(clean: bool = True) -> None:
    """Leave the process group. After a clean run all ranks first meet at a barrier: tearing
    gloo down while a peer still talks to it can abort the process ("terminate called without
    an active exception"). After an error there is no barrier (the peers may never come)."""
    if dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_agreement(info: DistInfo, what: str, obj: Any) -> None:
    """Fail clearly if ranks disagree on ``obj`` (config, data): all raise the same error."""
    if not info.enabled:
        return
    everyone: list[str | None] = [None] * info.world_size
    dist.all_gather_object(everyone, fingerprint(obj))
    if len(set(everyone)) > 1:
        detail = ", ".join(f"rank {r}: {fp}" for r, fp in enumerate(everyone))
        raise RuntimeError(f"ranks disagree on the {what} ({detail}); start all ranks alike")


def all_sum(info: DistInfo, value: float, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def any_true(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """True if any rank says True (so all ranks stop together)."""
    return all_sum(info, 1.0 if flag else 0.0, device) > 0


def broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's value of a JSON-able object, on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
