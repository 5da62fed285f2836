"""The study file: its keys, variants, budget and test set, validated into a :class:`Study`."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import diagnostics as dg
from ..config import (
    Config,
    ConfigError,
    apply_overrides,
    build_dataclass,
    config_from_dict,
    read_yaml,
)
from ..config.strict import unknown_key
from ..errors import AttendoError

DONE_FILE = "study_done.json"
EVAL_FILE = "study_eval.json"
HYP_FILE = "study_test.hyp"
# train keys the study sets for every variant (one seed, one budget, its own folder)
STUDY_KEYS = ("train.out_dir", "train.seed", "train.max_steps", "train.max_minutes",
              "train.max_epochs")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class StudyError(ValueError, AttendoError):
    """A study that cannot run as asked; the message says why and what to do."""


@dataclass
class BudgetConfig:
    """Training budget of every variant; training stops at the first limit reached."""

    steps: int = 0  # optimizer steps (0 = no step limit)
    minutes: float = 0.0  # wall-clock minutes, start-up and validations included (0 = none)

    def validate(self) -> None:
        if self.steps < 0 or self.minutes < 0:
            raise ConfigError("budget: steps and minutes must be >= 0")
        if not self.steps and not self.minutes:
            raise ConfigError("budget: set steps and/or minutes (both are 0)")

    def describe(self) -> str:
        parts = ([f"{self.steps} steps"] if self.steps else []) + (
            [f"{self.minutes:g} minutes"] if self.minutes else [])
        return " or ".join(parts)


@dataclass
class StudyTestConfig:
    """The test set every variant is evaluated on, and the diagnostics' settings."""

    # "" = the base config's data.test_src (or its generated toy test split); an image model's
    # test set is one list of image<TAB>text lines (test.ref empty), its boxes beside it
    src: str = ""
    ref: str = ""
    max_sents: int = 0  # evaluate on the first N sentences (0 = all)
    beam: int = 0  # 0 = the base config's decode.beam_size
    align_gold: str = ""  # Pharaoh links for AER (see attendo evaluate --align-gold)
    align_method: Literal["argmax", "threshold"] = "argmax"
    align_threshold: float = 0.5
    rare_max_count: int = 5  # a source word seen <= this many times in training is rare
    heatmap_sentence: int = 0  # 0-based index of the test sentence drawn under every variant

    def validate(self) -> None:
        for key in ("max_sents", "beam", "rare_max_count", "heatmap_sentence"):
            if getattr(self, key) < 0:
                raise ConfigError(f"test.{key}: must be >= 0")
        if not 0 < self.align_threshold <= 1:
            raise ConfigError("test.align_threshold: must be in (0, 1]")


@dataclass
class Variant:
    name: str = ""
    overrides: list[str] = field(default_factory=list)
    # a finished variant of another study (its model folder) trained with this very config:
    # reused instead of trained again; its config is checked against this one at run time
    trained: str = ""


@dataclass
class StudySettings:
    name: str = ""
    overrides: list[str] = field(default_factory=list)
    seed: int = 1
    out_dir: str = "runs/study"
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    test: StudyTestConfig = field(default_factory=StudyTestConfig)


TOP_KEYS = ["name", "base", "overrides", "seed", "budget", "out_dir", "test", "variants"]


@dataclass
class Study:
    """A validated study: settings, and the full config of each variant."""

    path: Path
    settings: StudySettings
    raw: dict[str, Any]  # the study as read (after command-line overrides), for the report
    variants: list[Variant]
    configs: dict[str, Config]  # variant name -> its validated config

    @property
    def out(self) -> Path:
        return Path(self.settings.out_dir)

    def model_dir(self, name: str) -> Path:
        """Variant ``name``'s model: its own folder, or the ``trained`` one it reuses."""
        v = next((v for v in self.variants if v.name == name), None)
        return Path(v.trained) if v is not None and v.trained else self.work_dir(name)

    def work_dir(self, name: str) -> Path:
        """Where the study keeps variant ``name``'s test outputs (its model folder when the
        study trains it)."""
        return self.out / "models" / name

    @property
    def report_dir(self) -> Path:
        return self.out / "report"


def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Read, override (``budget.steps=20``, ``out_dir=...``) and validate a study file; every
    variant's config is built and validated here, before anything trains."""
    path = Path(path)
    raw = read_yaml(path, "study file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    try:
        return _study_from_raw(path, apply_overrides(raw, list(overrides or [])))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _study_from_raw(path: Path, raw: dict[str, Any]) -> Study:
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key(key, TOP_KEYS)
    rest = {k: v for k, v in raw.items() if k not in ("base", "variants")}
    settings: StudySettings = build_dataclass(StudySettings, rest, "")
    settings.budget.validate()
    settings.test.validate()
    base = _base_raw(raw.get("base"))
    variants = _variants(raw.get("variants"))
    for i, item in enumerate(settings.overrides):
        _check_override(item, f"overrides[{i}]")
    configs = {}
    for i, v in enumerate(variants):
        where = f"variants[{i}] ({v.name})"
        for k, item in enumerate(v.overrides):
            _check_override(item, f"{where}.overrides[{k}]")
        try:
            configs[v.name] = config_from_dict(
                base, settings.overrides + v.overrides + _study_overrides(settings, v.name))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    study = Study(path, settings, copy.deepcopy(raw), variants, configs)
    for i, v in enumerate(variants):
        if v.trained and Path(v.trained).resolve() == study.work_dir(v.name).resolve():
            raise ConfigError(f"variants[{i}] ({v.name}).trained: {v.trained} is this study's "
                              "own folder for the variant; name another study's variant")
    _check_test_source(study)
    return study


def _base_raw(base: Any) -> dict[str, Any]:
    if isinstance(base, dict):
        return base
    if isinstance(base, str) and base:
        try:
            raw = read_yaml(Path(base))
        except ConfigError as e:
            raise ConfigError(f"base: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"base: {Path(base)}: expected a config mapping (data, model, train, "
                              "decode)")
        return raw
    raise ConfigError("base: expected a train config: a path to a YAML file, or a mapping "
                      "with data/model/train/decode sections")


def _variants(items: Any) -> list[Variant]:
    if not isinstance(items, list) or not items:
        raise ConfigError("variants: expected a non-empty list of {name, overrides}")
    out: list[Variant] = []
    for i, item in enumerate(items):
        v: Variant = build_dataclass(Variant, item, f"variants[{i}]")
        if not v.name:
            raise ConfigError(f"variants[{i}].name: missing (every variant needs a name)")
        if not NAME_RE.match(v.name):
            raise ConfigError(
                f"variants[{i}].name: {v.name!r} is not a usable folder name (letters, digits "
                "and _ . + -, starting with a letter or digit)")
        if v.name in {x.name for x in out}:
            raise ConfigError(f"variants[{i}].name: {v.name!r} is used twice")
        out.append(v)
    return out


def _check_override(item: str, where: str) -> None:
    if "=" not in item:
        raise ConfigError(f"{where}: {item!r} is not a dotted override (section.key=value)")
    key = item.split("=", 1)[0].strip()
    if key in STUDY_KEYS:
        raise ConfigError(
            f"{where}: {key} is set by the study for every variant (seed, budget, out_dir); "
            "remove it from the overrides")


def _study_overrides(s: StudySettings, name: str) -> list[str]:
    return [f"train.out_dir={Path(s.out_dir) / 'models' / name}", f"train.seed={s.seed}",
            f"train.max_steps={s.budget.steps}", f"train.max_minutes={s.budget.minutes}",
            "train.max_epochs=0"]


def _check_test_source(study: Study) -> None:
    t = study.settings.test
    first = study.configs[study.variants[0].name]
    if first.data.src_type == "image" and t.ref:
        raise ConfigError("test.ref: an image study's test set is one list of image<TAB>text "
                          "lines (test.src); leave test.ref empty")
    if first.data.src_type != "image" and bool(t.src) != bool(t.ref):
        raise ConfigError("test.src and test.ref: set both or neither")
    if not t.src and not first.data.test_src and not (first.data.toy and first.data.toy_test_size):
        raise ConfigError("test: no test set; set test.src and test.ref (or the base config's "
                          "data.test_src and data.test_tgt)")
    for key, value in (("test.src", t.src), ("test.ref", t.ref), ("test.align_gold", t.align_gold)):
        if value and not Path(value).exists():
            raise ConfigError(f"{key}: {value}: no such file")


def test_path(study: Study) -> Path | None:
    """The study's test source file (None: the generated toy task's test split)."""
    data = study.configs[study.variants[0].name].data
    path = study.settings.test.src or data.test_src
    return Path(path) if path else None


def load_test_set(study: Study) -> tuple[list[str], list[str], list[dg.GoldAlignment] | None]:
    """The study's test sentences (first test.max_sents) and gold alignments (checked); for an
    image model, the test images' paths and their texts."""
    from ..data.corpus import read_parallel
    from ..data.images import read_image_tsv
    from ..data.prepare import load_corpora

    t = study.settings.test
    data = study.configs[study.variants[0].name].data
    if data.src_type == "image":
        src, ref, _ = read_image_tsv(test_path(study))
    elif t.src or data.test_src:
        src_path, ref_path = (t.src, t.ref) if t.src else (data.test_src, data.test_tgt or None)
        src, ref, _ = read_parallel(src_path, ref_path, max_chars=10**6)
    else:  # the generated toy task's test split (the trainer generates the same one)
        corpus = load_corpora(data, seed=study.settings.seed)[2]
        assert corpus is not None
        src, ref = corpus.src, corpus.tgt
    gold = None
    if t.align_gold:
        gold = dg.read_gold_alignments(t.align_gold)
        dg.check_gold(gold, t.align_gold, [len(s.split()) for s in src],
                      [len(r.split()) for r in ref])
    if t.max_sents:
        src, ref = src[: t.max_sents], ref[: t.max_sents]
        gold = gold[: t.max_sents] if gold is not None else None
    if t.heatmap_sentence >= len(src):
        raise ConfigError(f"{study.path}: test.heatmap_sentence: {t.heatmap_sentence} is past "
                          f"the end of the test set ({len(src)} sentences)")
    return src, ref, gold


def describe(study: Study) -> str:
    """What the study will do (for ``attendo study --check``)."""
    s = study.settings
    lines = [f"{study.path}: {len(study.variants)} variants, {s.budget.describe()} each, "
             f"seed {s.seed}, into {study.out}"]
    for i, v in enumerate(study.variants, 1):
        d = study.model_dir(v.name)
        state = ("finished" if (d / DONE_FILE).exists() else
                 "interrupted (will resume)" if (d / "last.safetensors").exists() else "to train")
        if v.trained:
            state = "reused" if (d / DONE_FILE).exists() else "missing: nothing to reuse"
        lines.append(f"  {i}/{len(study.variants)} {v.name:<24} {state:<26} "
                     f"{' '.join(v.overrides) or '(base)'}")
    return "\n".join(lines)
