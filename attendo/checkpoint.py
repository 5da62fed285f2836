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

import contextlib
import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .utils import atomic_write_bytes

MODEL_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
CKPT_DIR = "checkpoints"


class ModelFileError(ValueError):
    """A file of a model directory (weights, tokenizer, vocabulary) is unreadable, corrupt, or
    does not fit the model. The message is one line that starts with the file's path."""


MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header
# tensors the model keeps but does not store (e.g. sinusoidal position tables) may take at most
# this much, or as much as the weights file, whichever is more: an absurd model.max_positions
# must be an error, not an allocation of terabytes
MAX_UNSTORED_BYTES = 1 << 30
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # accepted for floating tensors (cast on load)
_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_ST_DTYPE = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


@contextlib.contextmanager
def _open_regular(path: Path, what: str, max_bytes: int | None) -> Iterator[tuple[BinaryIO, int]]:
    """Open ``path`` for reading only if it is a regular file of at most ``max_bytes``: a FIFO,
    device or directory is refused before it is opened (opening a FIFO blocks)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{path}: the {what} is not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise ModelFileError(
            f"{path}: the {what} has {st.st_size:,} bytes, more than the {max_bytes:,} allowed"
        )
    try:
        # O_NONBLOCK: should the path have become a FIFO since the stat, open does not block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{path}: the {what} is not a regular file")
        yield f, st.st_size


# what attendo reads from (or appends to) in a model directory, besides the tokenizer files a
# tokenizer description lists and the step checkpoints (each checked where it is read)
MODEL_DIR_FILES = {
    "config.yaml": "config file", "src.tokenizer.json": "tokenizer description",
    "tgt.tokenizer.json": "tokenizer description", "src.vocab.json": "vocabulary file",
    "tgt.vocab.json": "vocabulary file", MODEL_FILE: "weights file", LAST_FILE: "training state",
    "metrics.jsonl": "metrics log", "train.log": "training log", CKPT_DIR: "checkpoint folder",
}


def check_inside(path: str | Path, model_dir: str | Path, what: str) -> None:
    """Refuse ``path`` unless it resolves inside ``model_dir``: a model directory is one
    self-contained thing, and a link in it to a file elsewhere (``/etc/passwd``,
    ``~/.ssh/id_rsa``) must not be read, quoted in an error or served. A :class:`ModelFileError`
    names the file and where it leads."""
    path = Path(path)
    try:
        root = Path(model_dir).resolve()
    except (OSError, RuntimeError) as e:
        raise ModelFileError(f"{model_dir}: cannot resolve the model directory ({e})") from None
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # e.g. a symlink loop
        raise ModelFileError(
            f"{path}: the {what} cannot be resolved (a symlink loop?); expected a file inside "
            f"the model directory {model_dir}"
        ) from None
    if not target.is_relative_to(root):
        raise ModelFileError(
            f"{path}: the {what} leads to {target}, outside the model directory {model_dir}; "
            "copy the file into the directory instead of linking to it"
        )


# what translating reads: config, tokenizers and vocabularies (and model.safetensors unless
# other weights are named)
DECODING_FILES = ("config.yaml", "src.tokenizer.json", "tgt.tokenizer.json", "src.vocab.json",
                  "tgt.vocab.json")


def check_model_dir(model_dir: str | Path, names: tuple[str, ...] | None = None) -> None:
    """Refuse a model directory whose files ``names`` (default: all of
    :data:`MODEL_DIR_FILES` and the step checkpoints, what training reads and writes) do not
    all resolve inside it; see :func:`check_inside`. Missing files are left to their readers."""
    model_dir = Path(model_dir)
    for name in MODEL_DIR_FILES if names is None else names:
        if os.path.lexists(model_dir / name):
            check_inside(model_dir / name, model_dir, MODEL_DIR_FILES[name])
    if names is None and (model_dir / CKPT_DIR).is_dir():
        for path in (model_dir / CKPT_DIR).glob("step-*.safetensors"):
            check_inside(path, model_dir, "step checkpoint")


def read_regular_file(path: str | Path, what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``max_bytes``.

    Raises FileNotFoundError (missing) or :class:`ModelFileError` (anything else), with a
    message that starts with the path and says it is the ``what`` (e.g. "vocabulary file")."""
    path = Path(path)
    with _open_regular(path, what, max_bytes) as (f, _):
        try:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as e:
            raise ModelFileError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise ModelFileError(f"{path}: the {what} has more than the {max_bytes:,} bytes allowed")
    return data


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header describes it."""

    dtype: str  # safetensors' name: "F32", "BF16", "I64", ...
    shape: tuple[int, ...]


@dataclass
class WeightsHeader:
    """The checked header of a safetensors file: what it holds, without the tensor data."""

    path: Path
    tensors: dict[str, TensorInfo]
    meta: dict[str, Any]  # attendo's JSON metadata
    size: int  # bytes in the file


def _one_line(e: object) -> str:
    return " ".join(str(e).split())


def _parse_header(path: Path, f: BinaryIO, size: int) -> WeightsHeader:
    """Read and check the header of the safetensors file open as ``f`` (positioned at 0): the
    8-byte little-endian header length, the JSON, and every tensor's dtype, shape and byte
    range against the file's size."""
    if size < 8:
        raise ModelFileError(
            f"{path}: not a safetensors file ({size} bytes, too short for a header"
            + ("; truncated?)" if size else "; the file is empty)")
        )
    head = f.read(8)
    n = int.from_bytes(head, "little")
    if n > size - 8 or n > MAX_HEADER_BYTES:
        # a zip (torch.save) or pickle (protocol 2-5) start reads as an impossible length
        if head[:4] == b"PK\x03\x04" or (head[0] == 0x80 and 2 <= head[1] <= 5):
            raise ModelFileError(
                f"{path}: a PyTorch pickle (torch.save) file, not safetensors; attendo reads "
                "only safetensors weights (pickles can run code when loaded)"
            )
        raise ModelFileError(
            f"{path}: not a safetensors file, or truncated: its header length says {n:,} bytes "
            f"but the file has {size:,}"
        )
    raw = f.read(n)
    if len(raw) != n:
        raise ModelFileError(f"{path}: the file ended inside its header (truncated?)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(
            f"{path}: not a safetensors file: its header is not valid JSON ({_one_line(e)})"
        ) from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a safetensors file: its header is not a JSON object")
    meta = _attendo_meta(path, header.pop("__metadata__", None))
    data_len = size - 8 - n
    tensors = {name: _tensor_info(path, name, info, data_len) for name, info in header.items()}
    return WeightsHeader(path, tensors, meta, size)


def _attendo_meta(path: Path, metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(f"{path}: the header's __metadata__ must map names to strings")
    try:
        meta = json.loads(metadata.get("attendo", "{}"))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(
            f"{path}: the attendo metadata in the header is not valid JSON ({_one_line(e)})"
        ) from None
    if not isinstance(meta, dict):
        raise ModelFileError(
            f"{path}: the attendo metadata in the header must be a JSON object, "
            f"got {type(meta).__name__}"
        )
    return meta


def _tensor_info(path: Path, name: str, info: Any, data_len: int) -> TensorInfo:
    if not isinstance(info, dict):
        raise ModelFileError(f"{path}: header entry {name!r} is not a tensor description")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _ITEMSIZE:
        raise ModelFileError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ModelFileError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise ModelFileError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    if offsets[1] > data_len:
        raise ModelFileError(
            f"{path}: tensor {name!r} ends at byte {offsets[1]:,} of the data, but the file "
            f"holds only {data_len:,} bytes of data (truncated?)"
        )
    if offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[dtype]:
        raise ModelFileError(
            f"{path}: tensor {name!r} ({dtype} {shape}) needs "
            f"{math.prod(shape) * _ITEMSIZE[dtype]:,} bytes, but its data_offsets span "
            f"{offsets[1] - offsets[0]:,}"
        )
    return TensorInfo(dtype, tuple(shape))


def read_header(path: str | Path) -> WeightsHeader:
    """The checked header of a safetensors weights file, without reading the tensors."""
    path = Path(path)
    with _open_regular(path, "weights file", None) as (f, size):
        try:
            return _parse_header(path, f, size)
        except OSError as e:
            raise _unreadable(path, e) from None


def _unreadable(path: Path, e: OSError) -> ModelFileError:
    return ModelFileError(f"{path}: cannot read the weights file ({e.strerror or e})")


def _read(path: Path) -> tuple[WeightsHeader, dict[str, torch.Tensor]]:
    """Header and tensors of a safetensors file; every problem is a ModelFileError."""
    with _open_regular(path, "weights file", None) as (f, size):
        try:
            header = _parse_header(path, f, size)
            f.seek(0)
            data = f.read()
        except OSError as e:
            raise _unreadable(path, e) from None
    if len(data) != size:
        raise ModelFileError(f"{path}: the file changed while it was read")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises SafetensorError, and others for odd files
        raise ModelFileError(f"{path}: not a valid safetensors file ({_one_line(e)})") from None
    return header, tensors


def _weight_name(key: str) -> str | None:
    """The model's name for a stored tensor (``model.`` prefix off), None for optimizer/RNG."""
    if key.startswith(("optim.", "rng.")):
        return None
    return key[len("model."):] if key.startswith("model.") else key


def check_weights(header: WeightsHeader, model: nn.Module, source: str = "config.yaml",
                  allow_missing: bool = False) -> list[str]:
    """Check that the weights ``header`` describes fit ``model`` (which may be on the ``meta``
    device): the same tensor names and shapes, floating-point data where the model has it.
    With ``allow_missing`` the model may have tensors the file lacks (fine-tuning a model with
    a mechanism added); returns their names.

    Raises :class:`ModelFileError` naming the file and the first tensor that does not fit;
    ``source`` says where the model came from, for the message."""
    path = header.path
    stored: dict[str, TensorInfo] = {}
    for key, info in header.tensors.items():
        name = _weight_name(key)
        if name is not None:
            stored[name] = info
    expected = model.state_dict()
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    if (missing and not allow_missing) or unexpected:
        raise ModelFileError(
            f"{path}: weights do not match the model built from {source} "
            f"(missing {len(missing)}: {missing[:5]}, unexpected {len(unexpected)}: "
            f"{unexpected[:5]})"
        )
    for name, want in expected.items():
        info = stored.get(name)
        if info is None:
            continue
        if info.shape != tuple(want.shape):
            raise ModelFileError(
                f"{path}: tensor {name!r} has shape {list(info.shape)}, but the model built "
                f"from {source} needs {list(want.shape)} (do these weights belong to it?)"
            )
        if want.is_floating_point():
            if info.dtype not in FLOAT_DTYPES:
                raise ModelFileError(
                    f"{path}: tensor {name!r} is {info.dtype}, but the model needs floating-point "
                    f"weights ({', '.join(FLOAT_DTYPES)})"
                )
        elif info.dtype != _ST_DTYPE.get(want.dtype):
            raise ModelFileError(
                f"{path}: tensor {name!r} is {info.dtype}, but the model needs "
                f"{_ST_DTYPE.get(want.dtype, want.dtype)}"
            )
    return missing


def _non_finite(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def _load_checked(
    header: WeightsHeader, tensors: dict[str, torch.Tensor], model: nn.Module, source: str,
    allow_missing: bool = False,
) -> list[str]:
    """Load the checked weights into ``model``: finite values only, cast to its dtypes; returns
    the model's tensors the file lacks (only with ``allow_missing``)."""
    path = header.path
    missing = check_weights(header, model, source, allow_missing)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        name = _weight_name(key)
        if name is None:
            continue
        bad = _non_finite(value)
        if bad:
            raise ModelFileError(
                f"{path}: tensor {name!r} has {bad:,} non-finite values (NaN or Inf) among "
                f"{value.numel():,}; refusing to load a diverged or corrupted model"
            )
        state[name] = value.to(expected[name].dtype)
    try:
        model.load_state_dict(state, strict=not missing)
    except (RuntimeError, ValueError) as e:
        raise ModelFileError(f"{path}: {_one_line(e)}") from None
    return missing


def build_model_for_weights(
    weights: str | Path,
    cfg: Any,
    src_vocab_size: int,
    tgt_vocab_size: int,
    config: str | Path = "config.yaml",
    *,
    training: bool = False,
    device: torch.device | str | None = None,
) -> nn.Module:
    """``build_model(cfg, src_vocab_size, tgt_vocab_size)``, built only once the weights file is
    known to fit it: the model's size is estimated from ``cfg`` and checked against the memory
    it will be ``training`` or decoding in on ``device`` (a ConfigError naming ``config`` and the
    keys), then it is built on the ``meta`` device (no memory) and its tensors compared with the
    header of ``weights``, so that an absurd size in config.yaml, or weights of another model,
    is an error instead of an allocation of many gigabytes. The weights are not loaded (see
    :func:`load_weights`); ``config`` names the config file in messages."""
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
        raise ModelFileError(
            f"{config}: the model would need {need / 2**30:,.1f} GiB for tensors that are not "
            f"stored in {weights} (largest: {name} {list(big.shape)}); check the sizes in it "
            "(e.g. model.max_positions)"
        )
    del skeleton
    return assemble_model(cfg, src_vocab_size, tgt_vocab_size)  # build_model, checked above


def _cpu(t: torch.Tensor) -> torch.Tensor:
    # clone: tied weights share storage, which safetensors refuses to save twice
    return t.detach().to("cpu").clone().contiguous()


def save_weights(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    tensors = {k: _cpu(v) for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata={"attendo": json.dumps(meta or {})}))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and attendo's JSON metadata from one safetensors file.

    The header is checked (with bounds) before the tensors are read; a missing file is a
    FileNotFoundError, anything else wrong a :class:`ModelFileError` naming the file."""
    header, tensors = _read(Path(path))
    return tensors, header.meta


def load_weights(path: str | Path, model: nn.Module, source: str = "config.yaml") -> dict[str, Any]:
    """Load the weights in ``path`` (``model.safetensors``, a step checkpoint, or the
    ``model.*`` tensors of ``last.safetensors``) into ``model``; returns attendo's metadata.

    Names, shapes and dtypes must fit the model (floating tensors may be stored as F16, BF16,
    F32 or F64 and are cast to the model's dtype) and every value must be finite; otherwise a
    :class:`ModelFileError` names the file and the tensor. ``source`` is where the model came
    from, for messages."""
    header, tensors = _read(Path(path))
    _load_checked(header, tensors, model, source)
    return header.meta


def init_weights(path: str | Path, model: nn.Module, source: str = "config.yaml") -> list[str]:
    """Fine-tuning: load the weights in ``path`` into ``model`` like :func:`load_weights`, except
    that the model may have tensors the file lacks (a mechanism added, such as coverage); those
    keep their initialisation and their names are returned. Every stored tensor must still fit
    by name and shape."""
    header, tensors = _read(Path(path))
    return _load_checked(header, tensors, model, source, allow_missing=True)


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
    tensors.update(rng_tensors())
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
    """Restore what :func:`save_training_state` wrote; returns the trainer state dict.

    Anything in the file that does not fit ``model`` and ``optimizer`` (or is not finite) is a
    :class:`ModelFileError` naming the file."""
    path = Path(path)
    header, tensors = _read(path)
    meta = header.meta
    trainer, groups = meta.get("trainer"), meta.get("param_groups")
    scalars_by_pid = meta.get("optim_scalars", {})
    if (
        not isinstance(trainer, dict)
        or not isinstance(groups, list)
        or not all(isinstance(g, dict) for g in groups)
        or not isinstance(scalars_by_pid, dict)
        or not all(isinstance(s, dict) for s in scalars_by_pid.values())
    ):
        raise ModelFileError(
            f"{path}: not a training state (its attendo metadata lacks a valid 'trainer', "
            "'param_groups' or 'optim_scalars'); --resume needs the last.safetensors of a run"
        )
    _load_checked(header, tensors, model, "config.yaml")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            parts = name.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit() or not 0 <= int(parts[1]) < len(params):
                raise ModelFileError(
                    f"{path}: optimizer tensor {name!r} is not optim.N.NAME with N one of the "
                    f"model's {len(params)} parameters"
                )
            pid, key = int(parts[1]), parts[2]
            if value.dim() and value.shape != params[pid].shape:
                raise ModelFileError(
                    f"{path}: optimizer tensor {name!r} has shape {list(value.shape)}, but "
                    f"parameter {pid} has {list(params[pid].shape)}"
                )
            if _non_finite(value):
                raise ModelFileError(
                    f"{path}: optimizer tensor {name!r} has non-finite values (NaN or Inf)"
                )
            state.setdefault(pid, {})[key] = value
    for pid, scalars in scalars_by_pid.items():
        if not str(pid).isdigit():
            raise ModelFileError(f"{path}: optim_scalars has a key {pid!r}, not a parameter id")
        state.setdefault(int(pid), {}).update(scalars)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise ModelFileError(
            f"{path}: the optimizer state does not fit the optimizer of this model "
            f"({_one_line(e)})"
        ) from None
    try:
        restore_rng(tensors)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: invalid random-number state ({_one_line(e)})") from None
    return trainer


def rng_tensors() -> dict[str, torch.Tensor]:
    """The random-number generator state of every device in use: the CPU generator (data
    order, CPU dropout) and each initialised CUDA device's (CUDA dropout)."""
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = state
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Set the generators :func:`rng_tensors` saved; CUDA states are restored for the devices
    this machine has (a checkpoint from a CPU run leaves the CUDA generators as seeded)."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i in range(n):
        state = tensors.get(f"rng.cuda.{i}")
        if state is not None:
            torch.cuda.set_rng_state(state, i)


def step_checkpoints(model_dir: str | Path) -> list[Path]:
    """Step checkpoints, oldest first; one that resolves outside ``model_dir`` is a
    :class:`ModelFileError` (see :func:`check_inside`)."""
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


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several weight files (Vaswani et al. 2017, sec. 6.1).

    Every file must hold the same tensors with the same shapes, floating-point and finite; a
    :class:`ModelFileError` names the first file (and tensor) that does not."""
    total: dict[str, torch.Tensor] = {}
    first: tuple[Path, dict[str, tuple[int, ...]]] | None = None
    for p in paths:
        p = Path(p)
        _, tensors = _read(p)
        weights: dict[str, torch.Tensor] = {}
        for k, v in tensors.items():
            name = _weight_name(k)
            if name is None:
                continue
            if not v.is_floating_point():
                raise ModelFileError(
                    f"{p}: tensor {name!r} is {v.dtype}; only floating-point weights are averaged"
                )
            if _non_finite(v):
                raise ModelFileError(f"{p}: tensor {name!r} has non-finite values (NaN or Inf)")
            weights[name] = v
        shapes = {k: tuple(v.shape) for k, v in weights.items()}
        if first is None:
            first = (p, shapes)
        elif shapes != first[1]:
            other, want = first
            diff = sorted(set(shapes) ^ set(want)) or [k for k in shapes if shapes[k] != want[k]]
            here, there = shapes.get(diff[0]), want.get(diff[0])
            raise ModelFileError(
                f"{p}: does not hold the same tensors as {other} (first difference: "
                f"{diff[0]!r}, shape {'absent' if here is None else list(here)} here, "
                f"{'absent' if there is None else list(there)} there)"
            )
        for k, v in weights.items():
            total[k] = total.get(k, 0) + v.double()
    return {k: (v / len(paths)).float() for k, v in total.items()}
