"""Safetensors weight files, checked before anything is allocated: the header is parsed with
bounds checks, a model (possibly on the ``meta`` device) is compared with it (names, shapes,
floating dtypes), values must be finite; every problem is a :class:`ModelFileError` naming the
file. Training state and the model directory layout are :mod:`attendo.checkpoint`'s."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .files import ModelFileError, one_line, open_regular, unreadable
from .utils import atomic_write_bytes

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header
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


def _parse_header(path: Path, f: BinaryIO, size: int) -> WeightsHeader:
    """Read and check the header of the safetensors file open as ``f`` (positioned at 0): the
    8-byte little-endian header length, the JSON, and every tensor's dtype, shape and byte
    range against the file's size."""
    if size < 8:
        raise ModelFileError(f"{path}: not a safetensors file ({size} bytes, too short for a "
                             f"header{'; truncated?)' if size else '; the file is empty)'}")
    head = f.read(8)
    n = int.from_bytes(head, "little")
    if n > size - 8 or n > MAX_HEADER_BYTES:
        # a zip (torch.save) or pickle (protocol 2-5) start reads as an impossible length
        if head[:4] == b"PK\x03\x04" or (head[0] == 0x80 and 2 <= head[1] <= 5):
            raise ModelFileError(f"{path}: a PyTorch pickle (torch.save) file, not safetensors; "
                                 "attendo reads only safetensors weights (pickles can run code "
                                 "when loaded)")
        raise ModelFileError(f"{path}: not a safetensors file, or truncated: its header length "
                             f"says {n:,} bytes but the file has {size:,}")
    raw = f.read(n)
    if len(raw) != n:
        raise ModelFileError(f"{path}: the file ended inside its header (truncated?)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{path}: not a safetensors file: its header is not valid JSON "
                             f"({one_line(e)})") from None
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
        raise ModelFileError(f"{path}: the attendo metadata in the header is not valid JSON "
                             f"({one_line(e)})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: the attendo metadata in the header must be a JSON "
                             f"object, got {type(meta).__name__}")
    return meta


def _tensor_info(path: Path, name: str, info: Any, data_len: int) -> TensorInfo:
    if not isinstance(info, dict):
        raise ModelFileError(f"{path}: header entry {name!r} is not a tensor description")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _ITEMSIZE:
        raise ModelFileError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ModelFileError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise ModelFileError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    if offsets[1] > data_len:
        raise ModelFileError(f"{path}: tensor {name!r} ends at byte {offsets[1]:,} of the data, "
                             f"but the file holds only {data_len:,} bytes of data (truncated?)")
    need = math.prod(shape) * _ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != need:
        raise ModelFileError(f"{path}: tensor {name!r} ({dtype} {shape}) needs {need:,} bytes, "
                             f"but its data_offsets span {offsets[1] - offsets[0]:,}")
    return TensorInfo(dtype, tuple(shape))


def read_header(path: str | Path) -> WeightsHeader:
    """The checked header of a safetensors weights file, without reading the tensors."""
    path = Path(path)
    with open_regular(path, "weights file", None) as (f, size):
        try:
            return _parse_header(path, f, size)
        except OSError as e:
            raise unreadable(path, "weights file", e) from None


def read_checked(path: Path) -> tuple[WeightsHeader, dict[str, torch.Tensor]]:
    """Header and tensors of a safetensors file; every problem is a ModelFileError."""
    with open_regular(path, "weights file", None) as (f, size):
        try:
            header = _parse_header(path, f, size)
            f.seek(0)
            data = f.read()
        except OSError as e:
            raise unreadable(path, "weights file", e) from None
    if len(data) != size:
        raise ModelFileError(f"{path}: the file changed while it was read")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises SafetensorError, and others for odd files
        raise ModelFileError(f"{path}: not a valid safetensors file ({one_line(e)})") from None
    return header, tensors


def weight_name(key: str) -> str | None:
    """The model's name for a stored tensor (``model.`` prefix off), None for optimizer/RNG."""
    if key.startswith(("optim.", "rng.")):
        return None
    return key[len("model."):] if key.startswith("model.") else key


def check_weights(header: WeightsHeader, model: nn.Module, source: str = "config.yaml",
                  allow_missing: bool = False) -> list[str]:
    """Check that the weights ``header`` describes fit ``model`` (which may be on the ``meta``
    device): the same tensor names and shapes, floating-point data where the model has it;
    else a :class:`ModelFileError` naming the file, the first tensor that does not fit and
    ``source``, where the model came from. With ``allow_missing`` the model may have tensors
    the file lacks (fine-tuning with a mechanism added); returns their names."""
    path = header.path
    stored = {weight_name(k): info for k, info in header.tensors.items()
              if weight_name(k) is not None}
    expected = model.state_dict()
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    if (missing and not allow_missing) or unexpected:
        raise ModelFileError(f"{path}: weights do not match the model built from {source} "
                             f"(missing {len(missing)}: {missing[:5]}, unexpected "
                             f"{len(unexpected)}: {unexpected[:5]})")
    for name, want in expected.items():
        info = stored.get(name)
        if info is None:
            continue
        if info.shape != tuple(want.shape):
            raise ModelFileError(f"{path}: tensor {name!r} has shape {list(info.shape)}, but the "
                                 f"model built from {source} needs {list(want.shape)} (do these "
                                 "weights belong to it?)")
        if want.is_floating_point():
            if info.dtype not in FLOAT_DTYPES:
                raise ModelFileError(f"{path}: tensor {name!r} is {info.dtype}, but the model "
                                     f"needs floating-point weights ({', '.join(FLOAT_DTYPES)})")
        elif info.dtype != _ST_DTYPE.get(want.dtype):
            raise ModelFileError(f"{path}: tensor {name!r} is {info.dtype}, but the model needs "
                                 f"{_ST_DTYPE.get(want.dtype, want.dtype)}")
    return missing


def count_non_finite(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def load_checked(header: WeightsHeader, tensors: dict[str, torch.Tensor], model: nn.Module,
                 source: str, allow_missing: bool = False) -> list[str]:
    """Load the checked weights into ``model``: finite values only, cast to its dtypes; returns
    the model's tensors the file lacks (only with ``allow_missing``)."""
    path = header.path
    missing = check_weights(header, model, source, allow_missing)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        name = weight_name(key)
        if name is None:
            continue
        bad = count_non_finite(value)
        if bad:
            raise ModelFileError(f"{path}: tensor {name!r} has {bad:,} non-finite values (NaN or "
                                 f"Inf) among {value.numel():,}; refusing to load a diverged or "
                                 "corrupted model")
        state[name] = value.to(expected[name].dtype)
    try:
        model.load_state_dict(state, strict=not missing)
    except (RuntimeError, ValueError) as e:
        raise ModelFileError(f"{path}: {one_line(e)}") from None
    return missing


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    # clone: tied weights share storage, which safetensors refuses to save twice
    return t.detach().to("cpu").clone().contiguous()


def save_weights(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    tensors = {k: cpu_copy(v) for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata={"attendo": json.dumps(meta or {})}))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and attendo's JSON metadata of one safetensors file (checked: a missing file is
    a FileNotFoundError, anything else wrong a :class:`ModelFileError` naming the file)."""
    header, tensors = read_checked(Path(path))
    return tensors, header.meta


def load_weights(path: str | Path, model: nn.Module, source: str = "config.yaml") -> dict[str, Any]:
    """Load the weights in ``path`` (``model.safetensors``, a step checkpoint, or the
    ``model.*`` tensors of ``last.safetensors``) into ``model``; returns attendo's metadata.
    Names, shapes and dtypes must fit (floating tensors are cast to the model's dtype) and
    every value be finite, else a :class:`ModelFileError` names the file and the tensor."""
    header, tensors = read_checked(Path(path))
    load_checked(header, tensors, model, source)
    return header.meta


def init_weights(path: str | Path, model: nn.Module, source: str = "config.yaml") -> list[str]:
    """Fine-tuning: :func:`load_weights`, except that the model may have tensors the file lacks
    (a mechanism added, such as coverage), which keep their initialisation; returns their
    names."""
    header, tensors = read_checked(Path(path))
    return load_checked(header, tensors, model, source, allow_missing=True)


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several weight files (Vaswani et al. 2017, sec. 6.1). Every file
    must hold the same tensors with the same shapes, floating-point and finite; a
    :class:`ModelFileError` names the first file (and tensor) that does not."""
    total: dict[str, torch.Tensor] = {}
    first: tuple[Path, dict[str, tuple[int, ...]]] | None = None
    for p in map(Path, paths):
        _, tensors = read_checked(p)
        named = [(weight_name(k), v) for k, v in tensors.items() if weight_name(k) is not None]
        for name, v in named:
            if not v.is_floating_point():
                raise ModelFileError(f"{p}: tensor {name!r} is {v.dtype}; only floating-point "
                                     "weights are averaged")
            if count_non_finite(v):
                raise ModelFileError(f"{p}: tensor {name!r} has non-finite values (NaN or Inf)")
        weights = dict(named)
        shapes = {k: tuple(v.shape) for k, v in weights.items()}
        if first is None:
            first = (p, shapes)
        elif shapes != first[1]:
            other, want = first
            diff = sorted(set(shapes) ^ set(want)) or [k for k in shapes if shapes[k] != want[k]]
            here, there = shapes.get(diff[0]), want.get(diff[0])
            raise ModelFileError(f"{p}: does not hold the same tensors as {other} (first "
                                 f"difference: {diff[0]!r}, shape "
                                 f"{'absent' if here is None else list(here)} here, "
                                 f"{'absent' if there is None else list(there)} there)")
        for k, v in weights.items():
            total[k] = total.get(k, 0) + v.double()
    return {k: (v / len(paths)).float() for k, v in total.items()}
