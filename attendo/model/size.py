"""A model's size before it is built: parameters and bytes estimated from the config and
checked against the memory this process may use.

The estimate builds the model on the ``meta`` device (shapes, no data) with at most two layers
per stack and extrapolates: every layer after a stack's first has the same shapes, so each
count is exactly bilinear in (enc_layers, dec_layers). It answers in milliseconds whatever the
config says, so an absurd size is a one-line :class:`~attendo.config.ConfigError` naming the
key and the estimate, not an integer overflow, an allocator failure or minutes of building.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..config import ConfigError, ModelConfig
from .seq2seq import Seq2Seq, assemble_model

# per parameter while training: weights, gradients and Adam's two moments (activations come
# on top, so a model refused by this bound could never train)
TRAINING_COPIES = 4
# config keys an estimate can blame, in the order a message names them
SIZE_KEYS = ("emb_dim", "enc_hidden", "enc_layers", "dec_hidden", "dec_layers", "out_dim",
             "d_model", "ff_dim", "max_positions", "location_max_len")
COMMON_VOCAB = 8000  # data.vocab_size's default: what a vocabulary is compared with for blame
_UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class ModelSize:
    """What a model holds: parameters (a tied one once) and their bytes, and the bytes of
    the tensors it keeps without training them (e.g. sinusoidal position tables)."""

    params: int
    param_bytes: int
    buffer_bytes: int

    def bytes_needed(self, training: bool) -> int:
        return self.param_bytes * (TRAINING_COPIES if training else 1) + self.buffer_bytes


class _Overflow(Exception):
    """A tensor of the model would have more elements or bytes than 64 bits can count."""


class _SkipInit(TorchFunctionMode):
    """Skip in-place initialisation (``normal_``, ``uniform_``, ``zero_``, ...) of ``meta``
    tensors: they hold no values, and torch's meta kernels for random fills import its
    compiler stack (about a second) on first use."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs, name = kwargs or {}, getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            t = args[0] if args else kwargs.get("tensor")
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the ``meta`` device without initialising the (value-less) tensors."""
    with torch.device("meta"), _SkipInit():
        return build()


def _count(cfg: ModelConfig, enc_layers: int, dec_layers: int, src_vocab: int, tgt_vocab: int,
           pad_id: int) -> tuple[int, int, int]:
    # attn_layer only picks which layer's attention is returned; it must exist in the small one
    small = dataclasses.replace(cfg, enc_layers=enc_layers, dec_layers=dec_layers, attn_layer=-1)
    try:
        model = build_on_meta(lambda: assemble_model(small, src_vocab, tgt_vocab, pad_id))
    except (RuntimeError, TypeError, OverflowError) as e:
        # torch: "Storage size calculation overflowed ...", "Overflow when unpacking long"
        if "overflow" in str(e).lower():
            raise _Overflow(str(e)) from None
        raise
    params = list(model.parameters())  # a shared (tied) parameter is listed once
    return (sum(p.numel() for p in params),
            sum(p.numel() * p.element_size() for p in params),
            sum(b.numel() * b.element_size() for b in model.buffers()))


def estimate_size(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int = 0) -> ModelSize:
    """The size of ``build_model(cfg, src_vocab, tgt_vocab)``, exact, without allocating: at
    most four ``meta`` builds of one- and two-layer stacks, extrapolated to the configured
    layers. Raises :class:`_Overflow` when a tensor's size would not fit 64 bits."""
    E, D = cfg.enc_layers, cfg.dec_layers
    f = {(e, d): _count(cfg, e, d, src_vocab, tgt_vocab, pad_id)
         for e in range(1, min(E, 2) + 1) for d in range(1, min(D, 2) + 1)}

    def at(i: int) -> int:  # bilinear in (E - 1, D - 1) through the measured corners
        a = f[1, 1][i]
        b = f[2, 1][i] - a if E > 1 else 0
        c = f[1, 2][i] - a if D > 1 else 0
        bc = f[2, 2][i] - f[2, 1][i] - f[1, 2][i] + a if E > 1 and D > 1 else 0
        return a + b * (E - 1) + c * (D - 1) + bc * (E - 1) * (D - 1)

    return ModelSize(at(0), at(1), at(2))


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2: no limit) -> None


def _cgroup_limit(proc: Path = Path("/proc/self/cgroup"),
                  mount: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The smallest memory limit of this process's cgroup and its ancestors (v2
    ``memory.max``, v1 ``memory.limit_in_bytes``), or None."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for parts in (line.split(":", 2) for line in lines):
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":
            root, name = mount, "memory.max"
        elif "memory" in controllers.split(","):
            root, name = mount / "memory", "memory.limit_in_bytes"
        else:
            continue
        d = root / rel.lstrip("/")
        # in a cgroup namespace the path may not exist under the mount: the root is ours then
        for folder in [d, *d.parents]:
            if folder == root or root in folder.parents:
                limit = _read_int(folder / name)
                if limit is not None and limit < _UNLIMITED:
                    limits.append(limit)
    return min(limits) if limits else None


def _vm_kib(field: str) -> int:
    """This process's ``field`` (VmSize, VmData) from /proc/self/status in bytes, 0 if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_memory(device: torch.device | str | None = None) -> tuple[int, str]:
    """The most memory a model on ``device`` (CPU when None) could take, in bytes, and where
    that bound comes from: for CUDA the device's memory; for the CPU the smallest of physical
    memory, the cgroup limit, and the address-space and data-segment limits
    (``ulimit -v``/``-d``) less what this process already uses of them."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: no CUDA device is available")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: no such device (this machine has "
                              f"{torch.cuda.device_count()} CUDA devices)")
        return torch.cuda.get_device_properties(index).total_memory, f"the memory of cuda:{index}"
    bounds: list[tuple[int, str]] = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        bounds.append((os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
                       "physical memory"))
    cgroup = _cgroup_limit()
    if cgroup is not None:
        bounds.append((cgroup, "the cgroup memory limit"))
    try:
        import resource
    except ImportError:  # not on Unix
        return min(bounds, default=(_UNLIMITED, "no known limit"))
    for limit, field, what in ((resource.RLIMIT_AS, "VmSize", "address-space limit, ulimit -v"),
                               (resource.RLIMIT_DATA, "VmData", "data limit, ulimit -d")):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY and soft >= 0:
            bounds.append((max(soft - _vm_kib(field), 0),
                           f"what is left of the {_gb(soft)} {what}"))
    return min(bounds, default=(_UNLIMITED, "no known limit"))


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def _needed(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int,
            training: bool) -> float:
    try:
        return estimate_size(cfg, src_vocab, tgt_vocab, pad_id).bytes_needed(training)
    except _Overflow:
        return math.inf


def _blame(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int, training: bool,
           need: float) -> str:
    """The size keys (``model.key=value``) that make ``need`` large: each whose default would
    at least halve it (largest effect first), else every size key above its default."""
    default = ModelConfig()
    above = [k for k in SIZE_KEYS if getattr(cfg, k) > getattr(default, k)]
    effect: list[tuple[float, str]] = []
    for key in above:
        try:
            less = _needed(dataclasses.replace(cfg, **{key: getattr(default, key)}),
                           src_vocab, tgt_vocab, pad_id, training)
        except (ValueError, RuntimeError, TypeError):  # the default does not fit the others
            continue
        if less * 2 <= need:
            effect.append((less, f"model.{key}={getattr(cfg, key)}"))
    if max(src_vocab, tgt_vocab) > COMMON_VOCAB:
        less = _needed(cfg, min(src_vocab, COMMON_VOCAB), min(tgt_vocab, COMMON_VOCAB), pad_id,
                       training)
        if less * 2 <= need:
            effect.append((less, f"the vocabularies ({src_vocab:,} source and {tgt_vocab:,} "
                                 "target entries; data.vocab_size)"))
    if effect:
        return ", ".join(name for _, name in sorted(effect, key=lambda e: e[0]))
    if above:
        return ", ".join(f"model.{k}={getattr(cfg, k)}" for k in above)
    return "model sizes"


def check_model_size(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int = 0, *,
                     training: bool = False, device: torch.device | str | None = None,
                     at_least: bool = False) -> ModelSize:
    """The size of the model ``cfg`` describes, refused with a :class:`ConfigError` (one
    line naming the size keys and the estimate) when a tensor's size would overflow 64 bits,
    or when it cannot fit in memory: the model is built in CPU memory, and trained
    (``training``: weights, gradients and two Adam moments) or decoded on ``device``
    (``"meta"``: no memory check). ``at_least``: the vocabulary sizes are lower bounds (the
    vocabularies are not built yet), and the message says so."""
    try:
        size = estimate_size(cfg, src_vocab, tgt_vocab, pad_id)
    except _Overflow as e:
        keys = _blame(cfg, src_vocab, tgt_vocab, pad_id, training, math.inf)
        raise ConfigError(
            f"{keys}: a tensor of this model would have more bytes than 64 bits can count "
            f"({' '.join(str(e).split()[:8])}); use sizes that fit in memory"
        ) from None
    try:
        device = torch.device(device or "cpu")
    except RuntimeError as e:
        raise ConfigError(f"device {str(device)!r}: {' '.join(str(e).split())}") from None
    if device.type == "meta":  # shapes only: nothing to fit
        return size
    checks = [(training and device.type != "cuda", torch.device("cpu"))]
    if device.type == "cuda":
        checks.append((training, device))
    for train_here, where in checks:
        need = size.bytes_needed(train_here)
        have, source = available_memory(where)
        if need > have:
            keys = _blame(cfg, src_vocab, tgt_vocab, pad_id, train_here, need)
            use = (f"training needs about {_gb(need)} ({TRAINING_COPIES} copies of its "
                   f"{_gb(size.param_bytes)}: weights, gradients, Adam's two moments)"
                   if train_here else f"its tensors need {_gb(need)}")
            raise ConfigError(f"{keys}: the model has {'at least ' if at_least else ''}"
                              f"{size.params:,} parameters; {use}, more than the {_gb(have)} "
                              f"available ({source}); use smaller sizes")
    return size


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0,
                *, training: bool = False, device: torch.device | str | None = None) -> Seq2Seq:
    """Encoder (rnn | cnn | transformer) + decoder (rnn | transformer), any mix: RNN parts start
    from U(-0.1, 0.1), CNN and Transformer parts initialise themselves; ``tie_src_tgt`` makes
    the encoder use the decoder's embeddings. Nothing is allocated before
    :func:`check_model_size` has found that the model fits in memory, ``training`` or not, on
    ``device`` (CPU when None); under ``torch.device("meta")`` only the overflow is checked."""
    on_meta = torch.get_default_device().type == "meta"
    check_model_size(cfg, src_vocab_size, tgt_vocab_size, pad_id, training=training,
                     device="meta" if on_meta else device)
    return assemble_model(cfg, src_vocab_size, tgt_vocab_size, pad_id)
