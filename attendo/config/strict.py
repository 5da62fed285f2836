"""Strict typed YAML: nested dataclasses built from parsed YAML against their type hints, for
attendo's config and study files. An unknown key (the closest allowed one suggested), a value
of the wrong type or a nan/inf number is a :class:`ConfigError` naming the dotted key; dotted
overrides (``train.lr=5e-4``) change the raw mapping before it is built, so get the same checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import AttendoError


class ConfigError(ValueError, AttendoError):
    """A configuration problem; the message names the key and what is allowed."""


def check_finite(section: str, settings: Any) -> None:
    """Raise a ConfigError naming the key of any number setting (or list element) of the
    dataclass ``settings`` that is nan or infinite."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{section}.{f.name}: must be a finite number, got {value}")


def positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


def describe(hint: Any) -> str:
    """A type hint in words: str | list[str] -> 'a string or a list of strings'."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(h) for h in typing.get_args(hint))
    if origin is list:
        (inner,) = typing.get_args(hint)
        word = describe(inner).removeprefix("a ").removeprefix("an ")
        return f"a list of {word}s"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             type(None): "null"}
    return names.get(hint, str(hint))


def check_type(key: str, value: Any, hint: Any) -> Any:
    """Check (and lightly coerce) one value against its type hint."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(hint)
        return [check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return check_type(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {describe(hint)}, got {value!r}")
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            return float(value)
    number = not isinstance(value, bool)
    ok = {type(None): value is None, bool: isinstance(value, bool), str: isinstance(value, str),
          int: number and isinstance(value, int), float: number and isinstance(value, int | float)}
    if hint not in ok:
        raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover
    if not ok[hint]:
        raise ConfigError(f"{key}: expected {describe(hint)}"
                          + ("" if hint is type(None) else f", got {value!r}"))
    return float(value) if hint is float else value


def unknown_key(key: Any, allowed: list[str], prefix: str = "") -> ConfigError:
    """The error for a key that is not among ``allowed``, suggesting the closest one."""
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{prefix}{key}: unknown key{hint} (allowed: {', '.join(allowed)})")


def build_dataclass(cls: type, raw: Any, prefix: str) -> Any:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise unknown_key(key, names, f"{prefix}." if prefix else "")
        hint = hints[key]
        kwargs[key] = (build_dataclass(hint, value, dotted) if dataclasses.is_dataclass(hint)
                       else check_type(dotted, value, hint))
    return cls(**kwargs)


class OverrideError(ConfigError):
    """An override string that cannot be applied (no ``=``, a value that is not YAML, a key
    under something that is not a section); ``item`` is the override, ``problem`` what is wrong."""

    def __init__(self, item: str, problem: str):
        super().__init__(f"override {item!r}: {problem}")
        self.item, self.problem = item, problem


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw config dict."""
    if overrides and not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping, got {raw!r}")
    for item in overrides:
        if "=" not in item:
            raise OverrideError(item, "expected section.key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = raw
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or an empty section in the YAML
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise OverrideError(item, f"{part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise OverrideError(item, "the value is not valid YAML "
                                f"({' '.join(str(e).split())})") from None
    return raw


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse a YAML file; a missing file or bad YAML is a ConfigError naming the path."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML {what}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start}); expected a YAML {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
