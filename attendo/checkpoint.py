"""Model directories and checkpoints: safetensors + JSON, written atomically, never pickles.

A model directory holds everything needed to translate or to resume::

    config.yaml                 the full validated config
    src.tokenizer.json (+ src.spm.model), tgt.tokenizer.json (+ tgt.spm.model)
    src.vocab.json, tgt.vocab.json
    model.safetensors           best weights so far (what attendo.load uses)
    last.safetensors            weights + optimizer + RNG + trainer state (for --resume)
    checkpoints/step-N.safetensors   weights at step N (the newest keep_last are kept)
    metrics.jsonl               one JSON object per log line / validation

Each file is one atomic write, so a run killed at any moment leaves the previous
complete version of every file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .utils import atomic_write_bytes

MODEL_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
CKPT_DIR = "checkpoints"


def _cpu(t: torch.Tensor) -> torch.Tensor:
    # clone: tied weights share storage, which safetensors refuses to save twice
    return t.detach().to("cpu").clone().contiguous()


def save_weights(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    tensors = {k: _cpu(v) for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata={"attendo": json.dumps(meta or {})}))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and attendo's JSON metadata from one safetensors file."""
    path = Path(path)
    data = path.read_bytes()
    tensors = st_load(data)
    # the metadata header: 8-byte little-endian length, then JSON
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header.get("__metadata__", {}).get("attendo", "{}"))
    return tensors, meta


def load_weights(path: str | Path, model: nn.Module) -> dict[str, Any]:
    tensors, meta = read_safetensors(path)
    tensors = {k[len("model."):] if k.startswith("model.") else k: v for k, v in tensors.items()
               if not k.startswith(("optim.", "rng."))}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the model built from config.yaml "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return meta


def save_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
) -> None:
    """Weights, optimizer moments, RNG and trainer counters in one atomically written file."""
    tensors = {f"model.{k}": _cpu(v) for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = _cpu(value)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "trainer": trainer_state,
        "param_groups": opt["param_groups"],
        "optim_scalars": {
            str(pid): {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)}
            for pid, s in opt["state"].items()
        },
    }
    atomic_write_bytes(path, st_save(tensors, metadata={"attendo": json.dumps(meta)}))


def load_training_state(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns the trainer state dict."""
    tensors, meta = read_safetensors(path)
    load_weights(path, model)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, scalars in meta.get("optim_scalars", {}).items():
        state.setdefault(int(pid), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return meta["trainer"]


def step_checkpoints(model_dir: str | Path) -> list[Path]:
    """Step checkpoints, oldest first."""
    d = Path(model_dir) / CKPT_DIR
    return sorted(d.glob("step-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))


def prune_checkpoints(model_dir: str | Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for p in step_checkpoints(model_dir)[:-keep_last]:
        p.unlink(missing_ok=True)


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several weight files (Vaswani et al. 2017, sec. 6.1)."""
    total: dict[str, torch.Tensor] = {}
    for p in paths:
        tensors, _ = read_safetensors(p)
        for k, v in tensors.items():
            if k.startswith(("optim.", "rng.")):
                continue
            k = k[len("model."):] if k.startswith("model.") else k
            total[k] = total.get(k, 0) + v.double()
    return {k: (v / len(paths)).float() for k, v in total.items()}
