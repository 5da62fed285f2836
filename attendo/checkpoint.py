"""Model directories and checkpoints: safetensors + JSON, written atomically, never pickles.

A model directory holds everything needed to translate or to resume::

    config.yaml                 the full validated config
    src.tokenizer.json (+ src.spm.model), tgt.tokenizer.json (+ tgt.spm.model)
    src.vocab.json, tgt.vocab.json
    model.safetensors           best weights so far (what attendo.load uses)
    last.safetensors            weights + optimizer + RNG + trainer state (for --resume)
    checkpoints/step-N.safetensors   weights at step N (the newest keep_last are kept)
    metrics.jsonl               one JSON object per log line / validation

Weight files are :mod:`attendo.weights`'s, file-safety checks :mod:`attendo.files`'s. Each
file is one atomic write: a run killed at any moment leaves the previous version of every file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

# the file-safety and weights layers, re-exported: attendo.checkpoint is where callers look
from .files import ModelFileError, check_inside, one_line
from .utils import atomic_write_bytes
from .weights import (  # noqa: F401
    average_checkpoints,
    check_weights,
    count_non_finite,
    cpu_copy,
    init_weights,
    load_checked,
    load_weights,
    read_checked,
    read_header,
    read_safetensors,
    save_weights,
)

MODEL_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
CKPT_DIR = "checkpoints"

# what attendo reads from (or appends to) in a model directory, besides the tokenizer files a
# tokenizer description lists and the step checkpoints (each checked where it is read)
MODEL_DIR_FILES = {
    "config.yaml": "config file", "src.tokenizer.json": "tokenizer description",
    "tgt.tokenizer.json": "tokenizer description", "src.vocab.json": "vocabulary file",
    "tgt.vocab.json": "vocabulary file", MODEL_FILE: "weights file", LAST_FILE: "training state",
    "metrics.jsonl": "metrics log", "train.log": "training log", CKPT_DIR: "checkpoint folder",
}
# what translating reads (and model.safetensors unless other weights are named)
DECODING_FILES = ("config.yaml", "src.tokenizer.json", "tgt.tokenizer.json", "src.vocab.json",
                  "tgt.vocab.json")


def check_model_dir(model_dir: str | Path, names: tuple[str, ...] | None = None) -> None:
    """Refuse a model directory whose files ``names`` (default: :data:`MODEL_DIR_FILES` and the
    step checkpoints) do not all resolve inside it; missing files are left to their readers."""
    model_dir = Path(model_dir)
    for name in MODEL_DIR_FILES if names is None else names:
        if os.path.lexists(model_dir / name):
            check_inside(model_dir / name, model_dir, MODEL_DIR_FILES[name])
    if names is None and (model_dir / CKPT_DIR).is_dir():
        for path in (model_dir / CKPT_DIR).glob("step-*.safetensors"):
            check_inside(path, model_dir, "step checkpoint")


# tensors the model keeps but does not store (e.g. sinusoidal position tables) may take at most
# this much, or as much as the weights file: an absurd model.max_positions is an error
MAX_UNSTORED_BYTES = 1 << 30


def build_model_for_weights(weights: str | Path, cfg: Any, src_vocab_size: int,
                            tgt_vocab_size: int, config: str | Path = "config.yaml", *,
                            training: bool = False,
                            device: torch.device | str | None = None) -> nn.Module:
    """``build_model(cfg, src_vocab_size, tgt_vocab_size)``, built only once the weights file is
    known to fit it: its size is checked against the memory it will be ``training`` or decoding
    in on ``device`` (a ConfigError naming ``config`` and the keys), then it is built on the
    ``meta`` device and compared with the header of ``weights``, so an absurd size in
    config.yaml, or another model's weights, is an error instead of an allocation of many
    gigabytes. The weights are not loaded (see :func:`load_weights`)."""
    from .config import ConfigError
    from .model.seq2seq import assemble_model
    from .model.size import build_on_meta, check_model_size

    weights = Path(weights)
    try:
        check_model_size(cfg, src_vocab_size, tgt_vocab_size, training=training, device=device)
    except ConfigError as e:
        raise ConfigError(f"{config}: {e}") from None
    header = read_header(weights)
    skeleton = build_on_meta(lambda: assemble_model(cfg, src_vocab_size, tgt_vocab_size))
    check_weights(header, skeleton, str(config))
    stored = skeleton.state_dict()
    unstored = [(n, b) for n, b in skeleton.named_buffers() if n not in stored]
    need = sum(b.numel() * b.element_size() for _, b in unstored)
    if need > max(MAX_UNSTORED_BYTES, header.size):
        name, big = max(unstored, key=lambda nb: nb[1].numel() * nb[1].element_size())
        raise ModelFileError(f"{config}: the model would need {need / 2**30:,.1f} GiB for "
                             f"tensors that are not stored in {weights} (largest: {name} "
                             f"{list(big.shape)}); check the sizes in it "
                             "(e.g. model.max_positions)")
    del skeleton
    return assemble_model(cfg, src_vocab_size, tgt_vocab_size)  # build_model, checked above


def save_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        trainer_state: dict[str, Any]) -> None:
    """Weights, optimizer moments, RNG and trainer counters in one atomically written file."""
    tensors = {f"model.{k}": cpu_copy(v) for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = cpu_copy(value)
    tensors.update(rng_tensors())
    scalars = {str(pid): {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)}
               for pid, s in opt["state"].items()}
    meta = {"trainer": trainer_state, "param_groups": opt["param_groups"], "optim_scalars": scalars}
    atomic_write_bytes(path, st_save(tensors, metadata={"attendo": json.dumps(meta)}))


def load_training_state(path: str | Path, model: nn.Module,
                        optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns the trainer state dict. Anything
    that does not fit ``model`` and ``optimizer`` (or is not finite) is a ModelFileError."""
    path = Path(path)
    header, tensors = read_checked(path)
    meta = header.meta
    trainer, groups = meta.get("trainer"), meta.get("param_groups")
    scalars_by_pid = meta.get("optim_scalars", {})
    if not (isinstance(trainer, dict) and isinstance(groups, list)
            and all(isinstance(g, dict) for g in groups) and isinstance(scalars_by_pid, dict)
            and all(isinstance(s, dict) for s in scalars_by_pid.values())):
        raise ModelFileError(f"{path}: not a training state (its attendo metadata lacks a valid "
                             "'trainer', 'param_groups' or 'optim_scalars'); --resume needs the "
                             "last.safetensors of a run")
    load_checked(header, tensors, model, "config.yaml")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        parts = name.split(".", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not 0 <= int(parts[1]) < len(params):
            raise ModelFileError(f"{path}: optimizer tensor {name!r} is not optim.N.NAME with N "
                                 f"one of the model's {len(params)} parameters")
        pid, key = int(parts[1]), parts[2]
        if value.dim() and value.shape != params[pid].shape:
            raise ModelFileError(f"{path}: optimizer tensor {name!r} has shape "
                                 f"{list(value.shape)}, but parameter {pid} has "
                                 f"{list(params[pid].shape)}")
        if count_non_finite(value):
            raise ModelFileError(f"{path}: optimizer tensor {name!r} has non-finite values "
                                 "(NaN or Inf)")
        state.setdefault(pid, {})[key] = value
    for pid, scalars in scalars_by_pid.items():
        if not str(pid).isdigit():
            raise ModelFileError(f"{path}: optim_scalars has a key {pid!r}, not a parameter id")
        state.setdefault(int(pid), {}).update(scalars)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise ModelFileError(f"{path}: the optimizer state does not fit the optimizer of this "
                             f"model ({one_line(e)})") from None
    try:
        restore_rng(tensors)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: invalid random-number state ({one_line(e)})") from None
    return trainer


def rng_tensors() -> dict[str, torch.Tensor]:
    """The random-number generator state of every device in use: the CPU generator (data
    order, CPU dropout) and each initialised CUDA device's (CUDA dropout)."""
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Set the generators :func:`rng_tensors` saved; CUDA states are restored for the devices
    this machine has (a checkpoint from a CPU run leaves the CUDA generators as seeded)."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        if f"rng.cuda.{i}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"], i)


def step_checkpoints(model_dir: str | Path) -> list[Path]:
    """Step checkpoints, oldest first; one that resolves outside ``model_dir`` is an error."""
    d = Path(model_dir) / CKPT_DIR
    if os.path.lexists(d):
        check_inside(d, model_dir, "checkpoint folder")
    paths = sorted((p for p in d.glob("step-*.safetensors") if p.stem[5:].isdigit()),
                   key=lambda p: int(p.stem[5:]))
    for p in paths:
        check_inside(p, model_dir, "step checkpoint")
    return paths


def prune_checkpoints(model_dir: str | Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for p in step_checkpoints(model_dir)[:-keep_last]:
        p.unlink(missing_ok=True)

