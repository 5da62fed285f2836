"""``attendo study STUDY.yaml``: train variants of one config under one budget and seed,
evaluate each on one test set, and write a report of measured numbers.

A study file::

    name: "Multi30k de-en: attention, coverage, copy"   # the report's title
    base: configs/multi30k_rnn.yaml      # a train config (path or inline mapping)
    overrides: [train.valid_every=250]   # dotted overrides for every variant
    seed: 1                              # train.seed of every variant
    budget: {minutes: 5}                 # and/or steps: N; replaces train.max_* of the base
    out_dir: runs/study_multi30k
    test: {src: data/multi30k/test_2016_flickr.de, ref: data/multi30k/test_2016_flickr.en}
    variants:
      - {name: none, overrides: [model.attention=none]}
      - {name: additive, overrides: []}
      # a finished variant of another study with exactly this config: evaluated, not retrained
      - {name: bpe, overrides: [data.tokenizer=bpe], trained: runs/other_study/models/bpe}

Paths are relative to the current directory, as in ``attendo train``. The study writes::

    OUT/models/NAME/      each variant's model directory (+ study_done.json, study_eval.json,
                          study_test.hyp); for a ``trained`` variant only the last two
    OUT/report/           report.md, results.json, PNG plots, configs/NAME.yaml, configs/study.yaml

Running it again skips finished variants (``study_done.json``) and their evaluation
(``study_eval.json`` for the same test settings), resumes an interrupted one from its
``last.safetensors``, and rewrites the report. The report states measured numbers only;
its interpretation section is left for a person to write.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from . import diagnostics as dg
from .config import (
    Config,
    ConfigError,
    _build,
    apply_overrides,
    config_from_dict,
    load_config,
    read_yaml,
)
from .utils import atomic_write_text

log = logging.getLogger("attendo")

DONE_FILE = "study_done.json"
EVAL_FILE = "study_eval.json"
HYP_FILE = "study_test.hyp"
# train keys the study sets for every variant (one seed, one budget, its own folder)
STUDY_KEYS = ("train.out_dir", "train.seed", "train.max_steps", "train.max_minutes",
              "train.max_epochs")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class StudyError(ValueError):
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

    src: str = ""  # "" = the base config's data.test_src (or its generated toy test split)
    ref: str = ""
    max_sents: int = 0  # evaluate on the first N sentences (0 = all)
    beam: int = 0  # 0 = the base config's decode.beam_size
    align_gold: str = ""  # Pharaoh links for AER (see attendo evaluate --align-gold)
    align_method: Literal["argmax", "threshold"] = "argmax"
    align_threshold: float = 0.5
    rare_max_count: int = 5  # a source word seen <= this many times in training is rare
    heatmap_sentence: int = 0  # 0-based index of the test sentence drawn under every variant

    def validate(self) -> None:
        if bool(self.src) != bool(self.ref):
            raise ConfigError("test.src and test.ref: set both or neither")
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


# -- loading --------------------------------------------------------------------------------
def _unknown(key: str, allowed: list[str], prefix: str = "") -> ConfigError:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{prefix}{key}: unknown key{hint} (allowed: {', '.join(allowed)})")


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
            raise _unknown(key, TOP_KEYS)
    rest = {k: v for k, v in raw.items() if k not in ("base", "variants")}
    settings: StudySettings = _build(StudySettings, rest, "")
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
        p = Path(base)
        try:
            raw = read_yaml(p)
        except ConfigError as e:
            raise ConfigError(f"base: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"base: {p}: expected a config mapping (data, model, train, decode)")
        return raw
    raise ConfigError("base: expected a train config: a path to a YAML file, or a mapping "
                      "with data/model/train/decode sections")


def _variants(items: Any) -> list[Variant]:
    if not isinstance(items, list) or not items:
        raise ConfigError("variants: expected a non-empty list of {name, overrides}")
    out: list[Variant] = []
    for i, item in enumerate(items):
        v: Variant = _build(Variant, item, f"variants[{i}]")
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
    if not t.src and not first.data.test_src and not (first.data.toy and first.data.toy_test_size):
        raise ConfigError("test: no test set; set test.src and test.ref (or the base config's "
                          "data.test_src and data.test_tgt)")
    for key, value in (("test.src", t.src), ("test.ref", t.ref), ("test.align_gold", t.align_gold)):
        if value and not Path(value).exists():
            raise ConfigError(f"{key}: {value}: no such file")


def load_test_set(study: Study) -> tuple[list[str], list[str], list[dg.GoldAlignment] | None]:
    """The study's test sentences (first test.max_sents) and gold alignments (checked)."""
    from .data.corpus import read_parallel
    from .data.prepare import load_corpora

    t = study.settings.test
    data = study.configs[study.variants[0].name].data
    if t.src or data.test_src:
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


# -- running --------------------------------------------------------------------------------
def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _config_diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} -> {y!r}")
    return out


def _check_same_config(model_dir: Path, cfg: Config, name: str, reused: bool = False) -> None:
    saved = load_config(model_dir / "config.yaml").to_dict()
    diff = _config_diff(saved, cfg.to_dict())
    if reused:  # another study's variant lives in its own folder; everything else must match
        diff = [d for d in diff if not d.startswith("train.out_dir:")]
    if diff:
        todo = ("give the variant the overrides it was trained with, or drop 'trained'"
                if reused else "delete that folder to train the variant again")
        raise StudyError(f"variant {name!r}: {model_dir} was trained with a different config "
                         f"({'; '.join(diff[:5])}); {todo}")


def _reuse_variant(study: Study, i: int, head: str) -> dict[str, Any]:
    v = study.variants[i]
    d = study.model_dir(v.name)
    if not (d / DONE_FILE).exists():
        raise StudyError(f"variant {v.name!r}: trained: {d} holds no finished study variant "
                         f"(no {DONE_FILE}); finish that study first, or drop 'trained'")
    _check_same_config(d, study.configs[v.name], v.name, reused=True)
    done = json.loads((d / DONE_FILE).read_text(encoding="utf-8"))
    log.info("%s: trained in %s (step %d), reused", head, d, done["step"])
    return {**done, "trained": str(d)}


def train_variant(study: Study, i: int) -> dict[str, Any]:
    """Train variant i unless it has finished; returns its study_done.json record."""
    from .checkpoint import LAST_FILE
    from .train import Trainer

    v = study.variants[i]
    cfg = study.configs[v.name]
    d = study.model_dir(v.name)
    n = len(study.variants)
    head = f"variant {i + 1}/{n} {v.name!r}"
    if v.trained:
        return _reuse_variant(study, i, head)
    if (d / DONE_FILE).exists():
        _check_same_config(d, cfg, v.name)
        done = json.loads((d / DONE_FILE).read_text(encoding="utf-8"))
        log.info("%s: finished earlier (step %d), not retrained", head, done["step"])
        return done
    resume = (d / LAST_FILE).exists()
    if resume:
        _check_same_config(d, cfg, v.name)
        log.info("%s: resuming the interrupted training in %s", head, d)
    else:
        for name in ("metrics.jsonl", "train.log"):  # a start that never reached a checkpoint
            (d / name).unlink(missing_ok=True)
        log.info("%s: training (%s, seed %d) into %s", head, study.settings.budget.describe(),
                 study.settings.seed, d)
    (d / EVAL_FILE).unlink(missing_ok=True)
    trainer = Trainer(cfg, resume=resume)
    result = trainer.run()
    done = {
        "step": result["step"],
        "reason": result["reason"],
        "train_minutes": round(trainer.elapsed() / 60, 2),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
    }
    atomic_write_text(d / DONE_FILE, json.dumps(done, indent=2) + "\n")
    return done


def evaluate_variant(study: Study, i: int, src: list[str], ref: list[str],
                     gold: list[dg.GoldAlignment] | None) -> dict[str, Any]:
    """Evaluate variant i on the test set, or reuse its earlier evaluation of the same set."""
    from .evaluate import evaluate_texts
    from .train import pick_device
    from .translator import Translator

    v = study.variants[i]
    d = study.model_dir(v.name)
    w = study.work_dir(v.name)
    t = study.settings.test
    key = {"test": dataclasses.asdict(t), "n": len(src), "src_head": src[:3], "ref_head": ref[:3]}
    path = w / EVAL_FILE
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            log.info("variant %d/%d %r: evaluated earlier", i + 1, len(study.variants), v.name)
            return saved
    log.info("variant %d/%d %r: evaluating on %d test sentences", i + 1, len(study.variants),
             v.name, len(src))
    cfg = study.configs[v.name]
    translator = Translator.from_dir(d, device=str(pick_device(cfg.train.device)))
    report, outs = evaluate_texts(
        translator, src, ref, beam=t.beam or None, gold=gold, gold_path=t.align_gold or None,
        align_method=t.align_method, align_threshold=t.align_threshold,
        rare_max_count=t.rare_max_count,
    )
    w.mkdir(parents=True, exist_ok=True)
    atomic_write_text(w / HYP_FILE, "".join(o.text + "\n" for o in outs))
    o = outs[t.heatmap_sentence]
    heat = {"src": src[t.heatmap_sentence], "hyp": o.text, "src_tokens": o.src_tokens,
            "tgt_tokens": o.tgt_tokens,
            "attention": None if o.attention is None else np.round(o.attention, 4).tolist()}
    for name in ("p_gen", "coverage"):
        if name in o.info:
            heat[name] = np.round(o.info[name], 4).tolist()
    record = {"key": key, "report": report, "heatmap": heat}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record


def run_study(study: Study) -> Path:
    """Train and evaluate every variant (skipping finished work), then write the report."""
    src, ref, gold = load_test_set(study)  # a bad test set fails before anything trains
    n = len(study.variants)
    log.info("study %s: %d variants, %s each, seed %d, %d test sentences -> %s",
             study.path, n, study.settings.budget.describe(), study.settings.seed, len(src),
             study.out)
    results = []
    for i, v in enumerate(study.variants):
        done = train_variant(study, i)
        ev = evaluate_variant(study, i, src, ref, gold)
        results.append({"name": v.name, "overrides": v.overrides, "train": done, **ev})
        log.info("variant %d/%d %r: BLEU %.2f", i + 1, n, v.name, ev["report"]["bleu"])
    path = write_report(study, results, src, ref)
    log.info("study report: %s", path)
    return path


# -- the report -----------------------------------------------------------------------------
def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _code(text: str) -> str:
    """Text shown verbatim in Markdown (an output may hold <unk>, *, | ...)."""
    return "`" + text.replace("`", "'") + "`" if text else "(empty)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _series(results: list[dict], get) -> str:
    return ", ".join(f"{r['name']} {_f(get(r))}" for r in results)


def _deltas(results: list[dict], get) -> str | None:
    base = get(results[0])
    if base is None or len(results) < 2:
        return None
    parts = [f"{r['name']} {get(r) - base:+.2f}" for r in results[1:] if get(r) is not None]
    return ", ".join(parts) if parts else None


def _extremes(results: list[dict], get, what: str) -> str | None:
    have = [r for r in results if get(r) is not None]
    if len(have) < 2:
        return None
    hi = max(have, key=get)
    lo = min(have, key=get)
    return f"Highest {what}: {hi['name']} ({_f(get(hi))}); lowest: {lo['name']} ({_f(get(lo))})."


def _diag(r: dict) -> dict:
    return r["report"].get("diagnostics", {})


def measured_facts(results: list[dict]) -> list[str]:
    """Neutral sentences built from the numbers: values per variant, differences to the first
    variant, highest and lowest. No conclusion is drawn."""
    first = results[0]["name"]
    facts = []

    def add(label: str, get, what: str | None = None) -> None:
        if all(get(r) is None for r in results):
            return
        facts.append(f"{label}: {_series(results, get)}.")
        delta = _deltas(results, get)
        if delta:
            facts.append(f"{label}, difference to {first!r}: {delta}.")
        if what:
            ext = _extremes(results, get, what)
            if ext:
                facts.append(ext)

    add("BLEU, all sentences", lambda r: r["report"]["bleu"], "BLEU")
    buckets = _diag(results[0]).get("bleu_by_length", [])
    for k, b in enumerate(buckets):
        if b["sentences"]:
            add(f"BLEU {b['bucket']} source words (n={b['sentences']})",
                lambda r, k=k: _diag(r)["bleu_by_length"][k]["bleu"])
    ref_rep = _diag(results[0]).get("repetition", {}).get("reference", {})
    for n in ref_rep:
        facts.append(f"Duplicate {n}-gram share (%), reference: {_f(ref_rep[n])}.")
        add(f"Duplicate {n}-gram share (%) of the outputs",
            lambda r, n=n: _diag(r)["repetition"]["output"][n])
    rw = _diag(results[0]).get("rare_words")
    if rw:
        for cls, label in (("oov", "out-of-vocabulary"), ("rare", "rare"),
                           ("split", "subword-split")):
            if rw[cls]["in_ref"]:
                add(f"Reproduced {label} source words (%, of {rw[cls]['in_ref']} found in the "
                    "reference)", lambda r, c=cls: _diag(r)["rare_words"][c]["share"])
    add("`<unk>` in the output (% of tokens)", lambda r: _diag(r).get("unk_rate"))
    add("Attention entropy (nats)",
        lambda r: (_diag(r).get("attention") or {}).get("entropy"))
    add("AER", lambda r: (_diag(r).get("attention") or {}).get("aer"))
    steps = {r["train"]["step"] for r in results}
    if len(steps) > 1:
        facts.append("Steps trained within the budget: "
                     + ", ".join(f"{r['name']} {r['train']['step']}" for r in results) + ".")
    return facts


BOOTSTRAP_SAMPLES = 1000


def bootstrap_against_first(results: list[dict], outputs: dict[str, list[str]], src: list[str],
                            ref: list[str]) -> dict[str, dict]:
    """Paired bootstrap (:func:`attendo.metrics.paired_bootstrap`) of each later variant's BLEU
    against the first variant's, on all test sentences and within each source-length bucket:
    {variant: {"all": {...}, "buckets": [{"bucket", "sentences", "delta", "low", "high", "p"}]}}.
    ``outputs`` (:func:`_test_outputs`) maps variants to their test outputs; variants without
    are left out."""
    from .metrics import bleu_stats, paired_bootstrap

    stats = {name: bleu_stats(hyps, ref) for name, hyps in outputs.items()}
    first = results[0]["name"]
    if first not in stats:
        return {}
    groups = dg.length_groups(src)
    out = {}
    for r in results[1:]:
        st = stats.get(r["name"])
        if st is None:
            continue
        out[r["name"]] = {
            "all": paired_bootstrap(stats[first], st, BOOTSTRAP_SAMPLES),
            "buckets": [{"bucket": dg.bucket_label(b), "sentences": len(idx),
                         **(paired_bootstrap(stats[first][idx], st[idx], BOOTSTRAP_SAMPLES)
                            if idx else {})} for b, idx in zip(dg.BUCKETS, groups)],
        }
    return out


def _test_outputs(study: Study, results: list[dict], n: int) -> dict[str, list[str]]:
    """The saved test outputs of each variant that has all ``n`` of them on disk."""
    out = {}
    for r in results:
        path = study.work_dir(r["name"]) / HYP_FILE
        hyps = path.read_text(encoding="utf-8").split("\n")[:-1] if path.exists() else []
        if n and len(hyps) == n:
            out[r["name"]] = hyps
    return out


def words_by_first_classes(study: Study, results: list[dict], outputs: dict[str, list[str]],
                           src: list[str], ref: list[str]) -> dict[str, dict] | None:
    """When variants read the source differently (their ``data`` sections differ: word
    vocabulary against BPE, another size), the per-variant word classes are not the same
    words. This classifies the test's source words once, by the *first* variant's tokenizer
    and vocabulary (:func:`attendo.diagnostics.vocab_word_classifier`), and counts for every
    variant how many of each class its output reproduces: {variant: {cls: {...}}}. None when
    all variants share the first one's data settings or its model directory is incomplete."""
    from .data.prepare import load_codecs

    first = results[0]["name"]
    cfg0 = study.configs[first]
    if all(study.configs[r["name"]].data == cfg0.data for r in results):
        return None
    try:
        codec, _ = load_codecs(study.model_dir(first), cfg0.data.lowercase)
    except (OSError, ValueError) as e:
        log.warning("word classes of %r not available: %s", first, e)
        return None
    subword = codec.tokenizer.kind in ("bpe", "unigram")
    max_count = study.settings.test.rare_max_count
    classify = dg.vocab_word_classifier(codec.pieces, codec.vocab, max_count, subword)
    cache = {w: classify(w) for w in {w for s in src for w in s.split()}}  # each word once
    out = {name: dg.rare_word_reproduction(src, ref, hyps, cache.__getitem__,
                                           lowercase=codec.lowercase)
           for name, hyps in outputs.items()}
    return out or None


def _same_words_section(results: list[dict], same: dict[str, dict] | None) -> list[str]:
    if not same:
        return []
    first = results[0]["name"]
    d0 = next(iter(same.values()))
    cols = [c for c in dg.WORD_CLASSES if d0[c]["in_ref"]]
    if not cols:
        return []
    return ["### The same words under every variant", "",
            f"The variants read the source differently, so the table above counts different "
            f"words for each. Here every source word is classed once, as '{first}' reads it "
            "(its tokenizer and vocabulary), and each variant's output is checked for the "
            "same words; n = those words found in the reference. Reproduced % is the share "
            "of them in the output too. The output can also carry over such words that the "
            "reference does not have (a word copied where it should have been translated): "
            "carried over = those of the class the output has, whether or not the reference "
            "has them, and in ref % = the share of them that the reference has too.", "",
            *_table(["variant", *(h for c in cols for h in (
                f"{c} as '{first}' reads it (n={d0[c]['in_ref']:,}): reproduced %",
                "carried over", "in ref %"))],
                    [[name, *(x for c in cols for x in (
                        _f(d[c]["share"]), str(d[c].get("in_output", "-")),
                        _f(d[c].get("precision"))))] for name, d in same.items()]),
            ""]


def _boot_cell(b: dict) -> str:
    if "delta" not in b:
        return "-"
    mark = "*" if b["p"] < 0.05 else ""
    return f"{b['delta']:+.2f}{mark} [{b['low']:+.2f}, {b['high']:+.2f}]"


def _bootstrap_section(results: list[dict], boot: dict[str, dict]) -> list[str]:
    if not boot:
        return []
    first = results[0]["name"]
    buckets = next(iter(boot.values()))["buckets"]
    return ["## How sure: paired bootstrap against '" + first + "'", "",
            f"BLEU of each variant minus BLEU of '{first}' on the same test sentences, on all "
            "of them and within each source-length bucket, with the 2.5th-97.5th percentiles "
            f"of the difference over {BOOTSTRAP_SAMPLES:,} resamples of the sentences (paired "
            "bootstrap, Koehn 2004; sacreBLEU's statistics). * = in fewer than 5% of the "
            "resamples the difference has the other sign. The resampling measures the test "
            "set's noise only: training another seed can move a variant by more.", "",
            *_table(["variant", f"all (n={sum(b['sentences'] for b in buckets)})",
                     *(f"{b['bucket']} (n={b['sentences']})" for b in buckets)],
                    [[name, _boot_cell(b["all"]), *(_boot_cell(x) for x in b["buckets"])]
                     for name, b in boot.items()]),
            ""]


def write_report(study: Study, results: list[dict], src: list[str] | None = None,
                 ref: list[str] | None = None) -> Path:
    """report.md, results.json, the plots and the configs, in OUT/report/. With the test set's
    ``src`` and ``ref`` the report adds a paired bootstrap against the first variant."""
    rd = study.report_dir
    s = study.settings
    outputs = _test_outputs(study, results, len(ref)) if src and ref else {}
    boot = bootstrap_against_first(results, outputs, src, ref) if outputs else {}
    same = words_by_first_classes(study, results, outputs, src, ref) if outputs else None
    for r in results:
        atomic_write_text(rd / "configs" / f"{r['name']}.yaml", study.configs[r["name"]].to_yaml())
    atomic_write_text(rd / "configs" / "study.yaml", yaml.safe_dump(study.raw, sort_keys=False))
    slim = [{k: v for k, v in r.items() if k not in ("key", "heatmap")} for r in results]
    for r in slim:
        if r["name"] in boot:
            r["bootstrap_vs_first"] = boot[r["name"]]
        if same and r["name"] in same:
            r["rare_words_as_first_reads"] = same[r["name"]]
    atomic_write_text(rd / "results.json", json.dumps(slim, indent=1) + "\n")
    plots = _plots(study, results, same)
    rep0 = results[0]["report"]
    t = s.test
    test_desc = f"`{t.src}` → `{t.ref}`" if t.src else "the base config's test set"
    lines = [
        f"# {s.name or 'Study: ' + study.path.stem}",
        "",
        f"Made by `attendo study {study.path}`. {len(results)} variants of one base config, "
        f"each trained with seed {s.seed} for {s.budget.describe()}, evaluated on "
        f"{test_desc} ({rep0['sentences']} sentences, beam {rep0['beam']}) with the weights "
        "in `model.safetensors` (the best on the validation set by "
        "`train.early_stopping_metric`, or the last saved when there is no validation set). "
        "One run per variant: run-to-run noise is not measured here. The configs used are in "
        "`configs/`; all numbers are in `results.json`.",
        "",
        "## Variants",
        "",
        *_table(["variant", "overrides", "parameters", "steps", "train minutes", "stopped"],
                [[r["name"], (" ".join(f"`{o}`" for o in r["overrides"]) or "(base)")
                  + (f" (trained in `{r['train']['trained']}`, reused)"
                     if r["train"].get("trained") else ""),
                  f"{r['train']['parameters']:,}", str(r["train"]["step"]),
                  _f(r["train"]["train_minutes"]), r["train"]["reason"] or ""] for r in results]),
        "",
        "## Scores",
        "",
        *_table(["variant", "BLEU", "chrF", "ppl"],
                [[r["name"], _f(r["report"]["bleu"]), _f(r["report"]["chrf"]),
                  _f(r["report"]["ppl"])] for r in results]),
        "",
        f"sacreBLEU: `{rep0['bleu_signature']}`; chrF: `{rep0['chrf_signature']}`; perplexity "
        "teacher-forced on the references.",
        "",
    ]
    lines += _diagnostic_sections(results, plots, _bootstrap_section(results, boot),
                                  _same_words_section(results, same))
    lines += ["## Measured differences", "",
              "Generated from the numbers above; no conclusion is drawn here.", ""]
    lines += [f"- {x}" for x in measured_facts(results)]
    lines += ["", "## Interpretation", "",
              "_To be written by a person who has read the numbers above._", ""]
    path = rd / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _diagnostic_sections(results: list[dict], plots: dict[str, str],
                         bootstrap: list[str], same_words: list[str]) -> list[str]:
    d0 = _diag(results[0])
    if not d0:
        return bootstrap + same_words
    buckets = d0["bleu_by_length"]
    out = ["## BLEU by source length", "",
           "Corpus BLEU of the test sentences in each bucket of source length in words "
           "(Bahdanau et al. 2015, fig. 2); n = sentences in the bucket.", "",
           *_table(["variant"] + [f"{b['bucket']} (n={b['sentences']})" for b in buckets],
                   [[r["name"]] + [_f(b["bleu"]) for b in _diag(r)["bleu_by_length"]]
                    for r in results]),
           "", f"![BLEU by source length]({plots['length']})", "", *bootstrap]
    ns = list(d0["repetition"]["reference"])
    out += ["## Repetition", "",
            "Share of duplicate n-grams within each output (%, n-grams that repeat an earlier "
            "n-gram of the same sentence, pooled over the test set; See et al. 2017, fig. 4), "
            "beside the same share in the references. Tokens: sacreBLEU 13a.", "",
            *_table(["", *(f"n={n}" for n in ns)],
                    [["reference", *(_f(d0["repetition"]["reference"][n]) for n in ns)]]
                    + [[r["name"], *(_f(_diag(r)["repetition"]["output"][n]) for n in ns)]
                       for r in results]),
            "", f"![Repetition]({plots['repetition']})", ""]
    rw = d0["rare_words"]
    out += ["## Rare and unknown words", "",
            "Source words (whitespace-separated) that appear in the reference too, by class: "
            "OOV, the source vocabulary cannot encode them; rare, it saw them at most "
            f"{rw['max_count']} times in training (for subword vocabularies the smallest "
            "count among the word's pieces, an upper bound on the word's own count); split, "
            "a subword tokenizer splits them into two or more pieces (too infrequent for a "
            "piece of their own). Reproduced = they appear in the output too "
            "(leading/trailing punctuation ignored). `<unk>` in output = share of output "
            "tokens that are `<unk>`.", "",
            *_table(["variant", "OOV in ref", "reproduced %", "rare in ref", "reproduced %",
                     "split in ref", "reproduced %", "`<unk>` in output %"],
                    [[r["name"], *(x for c in ("oov", "rare", "split") for x in (
                        str(_diag(r)["rare_words"][c]["in_ref"]),
                        _f(_diag(r)["rare_words"][c]["share"]))),
                      _f(_diag(r)["unk_rate"], "{:.3f}")] for r in results]),
            "", f"![Rare and unknown words]({plots['rare']})", "", *same_words]
    out += ["## Attention", "",
            "Mean entropy of the attention rows over the test outputs (nats, and as a share "
            "of the entropy of a uniform row). AER (Och & Ney 2003) against the gold "
            "alignments when the study has `test.align_gold`, from teacher-forced attention on "
            "the references. p_gen: mean generation probability of copy models.", "",
            *_table(["variant", "entropy", "of uniform", "AER", "mean p_gen"],
                    [[r["name"], _f((_diag(r)["attention"] or {}).get("entropy"), "{:.3f}"),
                      _f((_diag(r)["attention"] or {}).get("entropy_norm"), "{:.3f}"),
                      _f((_diag(r)["attention"] or {}).get("aer"), "{:.4f}"),
                      _f(_diag(r).get("p_gen"), "{:.3f}")] for r in results]),
            ""]
    heat = results[0]["heatmap"]
    out += [f"Attention on the same test sentence under each variant: {_code(heat['src'])}", ""]
    for r in results:
        pic = plots["heatmaps"].get(r["name"])
        out.append(f"- {r['name']}: {_code(r['heatmap']['hyp'])}"
                   + ("" if pic else " (no attention to draw)"))
    out.append("")
    out += [f"![attention, {name}]({pic})" for name, pic in plots["heatmaps"].items()]
    out.append("")
    return out


# -- plots ----------------------------------------------------------------------------------
def _plots(study: Study, results: list[dict], same: dict[str, dict] | None = None
           ) -> dict[str, Any]:
    from . import viz  # noqa: F401  (selects the Agg backend before pyplot is imported)

    rd = study.report_dir
    names = [r["name"] for r in results]
    out: dict[str, Any] = {"heatmaps": {}}
    if not _diag(results[0]):
        return out
    out["length"] = _plot_lines(
        rd / "bleu_by_length.png", names,
        [f"{b['bucket']}\n(n={b['sentences']})" for b in _diag(results[0])["bleu_by_length"]],
        [[b["bleu"] for b in _diag(r)["bleu_by_length"]] for r in results],
        "BLEU by source length (words)", "BLEU")
    ref = _diag(results[0])["repetition"]["reference"]
    out["repetition"] = _plot_lines(
        rd / "repetition.png", names, [f"n={n}" for n in ref],
        [list(_diag(r)["repetition"]["output"].values()) for r in results],
        "Duplicate n-grams within each output", "% of n-grams",
        reference=list(ref.values()))
    out["rare"] = _plot_rare(rd / "rare_words.png", results, same)
    for r in results:
        pic = _plot_heatmap(rd / f"attention-{r['name']}.png", r, study)
        if pic:
            out["heatmaps"][r["name"]] = pic
    return out


def _plot_lines(path: Path, names: list[str], xlabels: list[str], ys: list[list],
                title: str, ylabel: str, reference: list | None = None) -> str:
    import matplotlib.pyplot as plt

    from .utils import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(xlabels) + 3), 4.2), dpi=100)
    x = np.arange(len(xlabels))
    colors = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for k, (name, y) in enumerate(zip(names, ys)):
        yy = np.array([np.nan if v is None else v for v in y], dtype=float)
        ax.plot(x, yy, marker="o", label=name, color=colors(k % colors.N))
    if reference is not None:
        rr = np.array([np.nan if v is None else v for v in reference], dtype=float)
        ax.plot(x, rr, color="black", linestyle="--", linewidth=2, marker="s", label="reference")
    ax.set_xticks(x, labels=xlabels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    atomic_write_bytes(path, _png(fig))
    return path.name


def _plot_rare(path: Path, results: list[dict], same: dict[str, dict] | None = None) -> str:
    """Reproduction by class; with ``same`` (:func:`words_by_first_classes`), the same words
    for every variant, classed as the first variant reads them."""
    import matplotlib.pyplot as plt

    from .utils import atomic_write_bytes

    names = [r["name"] for r in results]
    if same and all(n in same for n in names):
        rw, whose = [same[n] for n in names], f" (as '{names[0]}' reads them)"
    else:
        rw, whose = [_diag(r)["rare_words"] for r in results], ""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8.0, 0.9 * len(names) + 5), 4.2), dpi=100)
    x = np.arange(len(names))
    classes = [(c, label) for c, label in (("oov", "OOV"), ("rare", "rare"), ("split", "split"))
               if rw[0][c]["in_ref"]]  # a class with no word in the references has no bar
    width = 0.8 / max(len(classes), 1)
    for k, (cls, label) in enumerate(classes):
        vals = [np.nan if w[cls]["share"] is None else w[cls]["share"] for w in rw]
        a1.bar(x + (k - (len(classes) - 1) / 2) * width, vals, width=width,
               label=f"{label}{whose} (n={rw[0][cls]['in_ref']} in the references)")
    a1.set_xticks(x, labels=names, rotation=45, ha="right")
    a1.set_ylim(0, 100)
    a1.set_ylabel("% reproduced in the output")
    a1.set_title("Rare/unknown source words found in the reference")
    if classes:
        a1.legend(fontsize=8)
    else:
        a1.text(0.5, 0.5, "no such word in the references", ha="center", transform=a1.transAxes)
    unk = [np.nan if _diag(r)["unk_rate"] is None else _diag(r)["unk_rate"] for r in results]
    a2.bar(x, unk, color="gray")
    a2.set_ylim(0, max([1.0] + [u * 1.1 for u in unk if not np.isnan(u)]))
    a2.set_xticks(x, labels=names, rotation=45, ha="right")
    a2.set_ylabel("% of output tokens")
    a2.set_title("<unk> in the output")
    fig.tight_layout()
    atomic_write_bytes(path, _png(fig))
    return path.name


def _plot_heatmap(path: Path, r: dict, study: Study) -> str | None:
    from .viz import plot_attention

    h = r["heatmap"]
    if h["attention"] is None or not h["tgt_tokens"]:
        return None
    kw: dict[str, Any] = {}
    if "p_gen" in h:
        kw["strips"] = {"p_gen": np.array(h["p_gen"])}
    if "coverage" in h:
        kw["coverage"] = np.array(h["coverage"])
    title = f"{r['name']}: {h['hyp']}"
    plot_attention(np.array(h["attention"]), h["src_tokens"], h["tgt_tokens"], path,
                   title=title if len(title) < 90 else title[:87] + "...", merge=True, **kw)
    return path.name


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


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


__all__ = ["Study", "StudyError", "load_study", "run_study", "write_report", "measured_facts",
           "describe"]
