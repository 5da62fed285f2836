"""Configuration: nested dataclasses loaded from YAML, validated strictly.

An unknown or misspelt key, a value of the wrong type or an impossible value raises
:class:`ConfigError` naming the dotted key and what is allowed. Every number setting must be
finite (``nan`` and ``inf`` are rejected naming the key, since torch would only fail later
without it). Dotted overrides (``train.lr=5e-4``) are applied before validation, so they get
the same checks.

The sections and their own checks are :mod:`attendo.config.sections`; the typed YAML machinery
(types, unknown keys, overrides) :mod:`attendo.config.strict`; this module holds the whole
:class:`Config`, its cross-section checks, and where a fault lies (file or command line).
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .sections import DataConfig, DecodeConfig, ModelConfig, TrainConfig
from .strict import (
    ConfigError,
    OverrideError,
    apply_overrides,
    build_dataclass,
    read_yaml,
)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def validate(self) -> Config:
        self.data.validate()
        self.model.validate()
        self.train.validate()
        self.decode.validate()
        m = self.model
        if self.train.coverage_from_step and not m.coverage:
            raise ConfigError(
                "train.coverage_from_step: needs model.coverage: true (it is when the coverage "
                "mechanism and its loss start)"
            )
        if self.train.coverage_loss > 0 and self.train.coverage_loss_form == "min" \
                and not m.coverage:
            raise ConfigError(
                "train.coverage_loss: needs model.coverage: true (the loss is on the coverage "
                "vector the decoder carries), or train.coverage_loss_form: doubly_stochastic"
            )
        if self.train.coverage_loss > 0 and m.attention == "none" and m.decoder == "rnn":
            raise ConfigError("train.coverage_loss: needs attention (model.attention: none)")
        if m.context_gate and (m.decoder != "rnn" or m.attention == "none"):
            raise ConfigError("model.context_gate: gates the RNN decoder's attention context; "
                              "needs model.decoder: rnn and an attention")
        if self.train.guided_alignment.file:
            self._validate_guided_alignment()
        self._validate_images()
        if m.tie_src_tgt and not self.data.joint_vocab:
            raise ConfigError(
                "model.tie_src_tgt: needs data.joint_vocab: true (one vocabulary for both sides)"
            )
        if m.encoder == "cnn" or (m.positions == "learned" and "transformer" in (m.encoder, m.decoder)):
            longest = max(self.decode.max_input_tokens, self.decode.max_len, self.data.max_len + 1)
            if longest > m.max_positions:
                raise ConfigError(
                    f"model.max_positions: {m.max_positions} learned positions cannot cover "
                    f"{longest} tokens (decode.max_input_tokens / decode.max_len / data.max_len + 1)"
                )
        return self

    def _validate_images(self) -> None:
        d, image = self.data, self.model.encoder == "image"
        if image != (d.src_type == "image"):
            raise ConfigError("data.src_type: 'image' goes with model.encoder: image, and a text "
                              f"source with a text encoder; got data.src_type: {d.src_type} and "
                              f"model.encoder: {self.model.encoder}")
        if not image:
            return
        for key, bad in (("data.toy", d.toy), ("data.prepared", d.prepared),
                         ("data.train_tgt", d.train_tgt), ("data.train_weights", d.train_weights),
                         ("train.guided_alignment.file", self.train.guided_alignment.file)):
            if bad:
                raise ConfigError(f"{key}: not for image sources (data.train_src is one list "
                                  "of image<TAB>text lines)")
        if isinstance(d.train_src, list):
            raise ConfigError("data.train_src: one image list file for image sources")

    def _validate_guided_alignment(self) -> None:
        ga, m = self.train.guided_alignment, self.model
        key = "train.guided_alignment"
        if m.decoder == "rnn" and m.attention == "none":
            raise ConfigError(f"{key}.file: supervises the attention, but model.attention is 'none'")
        if m.attention_normalizer != "softmax":
            raise ConfigError(
                f"{key}.file: the alignment cross-entropy needs softmax attention (sparsemax and "
                f"entmax give exact zeros, whose log is -inf); model.attention_normalizer is "
                f"{m.attention_normalizer!r}")
        if self.data.skip_bad_lines:
            raise ConfigError(
                f"{key}.file: its lines follow the training pairs one for one, so "
                "data.skip_bad_lines (which drops pairs) cannot be on")
        if m.decoder == "transformer":
            if ga.layer is not None and not -m.dec_layers <= ga.layer < m.dec_layers:
                raise ConfigError(
                    f"{key}.layer: {ga.layer} is not a decoder layer (dec_layers="
                    f"{m.dec_layers}; use 0..{m.dec_layers - 1}, -1 for the last, or null for "
                    "model.attn_layer)")
            if not -m.heads <= ga.head < m.heads:
                raise ConfigError(
                    f"{key}.head: {ga.head} is not a head (model.heads={m.heads}; use "
                    f"0..{m.heads - 1})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Config:
    raw = apply_overrides(copy.deepcopy(raw or {}), list(overrides or []))
    return build_dataclass(Config, raw, "").validate()


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file, apply dotted overrides and validate.

    A ConfigError says where the problem is: in an override (``command line: train.lr=.inf:
    must be a finite number, got inf``, also for a misspelt key given as one), in the file
    (``PATH: model.dropout: ...``), or in the two together (``PATH with the command line
    decode.beam_size=2: decode.n_best: ...``)."""
    path = Path(path)
    raw = read_yaml(path)
    overrides = list(overrides or [])
    try:
        cfg = config_from_dict(raw or {}, overrides)
    except ConfigError as e:
        raise ConfigError(_where(e, path, raw, overrides)) from None
    resolve_paths(cfg, path.parent)
    return cfg


PATH_KEYS = ("data.train_src", "data.train_tgt", "data.valid_src", "data.valid_tgt",
             "data.test_src", "data.test_tgt", "data.prepared", "data.tokenizer_model",
             "data.tgt_tokenizer_model", "train.init_from", "train.guided_alignment.file")


def _names_something(path: str) -> bool:
    return bool(glob.glob(path)) if any(c in path for c in "*?[") else Path(path).exists()


def resolve_paths(cfg: Config, config_dir: Path) -> None:
    """Relative file paths in a config (:data:`PATH_KEYS`) are read from the working
    directory, as always; one that names nothing there but something beside the config file
    is read from there instead, so a config kept next to its data works from anywhere."""
    def resolve(value: str) -> str:
        if not value or Path(value).is_absolute() or _names_something(value):
            return value
        beside = str(config_dir / value)
        return beside if _names_something(beside) else value

    for key in PATH_KEYS:
        *parents, name = key.split(".")
        section = cfg
        for part in parents:
            section = getattr(section, part)
        value = getattr(section, name)
        setattr(section, name, [resolve(v) for v in value] if isinstance(value, list)
                else resolve(value))


_KEY = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.S)


def _where(e: ConfigError, path: Path, raw: Any, overrides: list[str]) -> str:
    """The message of ``e`` (raised for the file ``path`` with ``overrides``), prefixed with
    where the fault lies: the override that set the key it names, the file, or both."""
    if isinstance(e, OverrideError):
        return f"command line: {e.item}: {e.problem}"
    m = _KEY.match(str(e))
    if m and overrides:
        key, problem = m.groups()
        for item in reversed(overrides):  # the last override of a key is the one that holds
            dotted = item.split("=", 1)[0].strip()
            if (key == dotted or key.startswith((dotted + ".", dotted + "["))
                    or dotted.startswith(key + ".")):  # model.x.y=1: "model.x: unknown key"
                shown = problem if key == dotted else f"{key}: {problem}"
                return f"command line: {item}: {shown}"
    if overrides:
        try:
            config_from_dict(raw or {}, [])
            alone = None
        except ConfigError as file_error:
            alone = str(file_error)
        if alone != str(e):  # the file alone is fine, or fails otherwise: the mix is at fault
            return f"{path} with the command line {' '.join(overrides)}: {e}"
    return f"{path}: {e}"
