"""Running a study: train each variant (reusing finished work), evaluate it on the test set."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import diagnostics as dg
from ..config import Config, load_config
from ..utils import atomic_write_text
from .report import write_report
from .spec import DONE_FILE, EVAL_FILE, HYP_FILE, Study, StudyError, load_test_set, test_path

log = logging.getLogger("attendo")


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
    diff = _config_diff(load_config(model_dir / "config.yaml").to_dict(), cfg.to_dict())
    if reused:  # another study's variant lives in its own folder; everything else must match
        diff = [d for d in diff if not d.startswith("train.out_dir:")]
    if diff:
        todo = ("give the variant the overrides it was trained with, or drop 'trained'"
                if reused else "delete that folder to train the variant again")
        raise StudyError(f"variant {name!r}: {model_dir} was trained with a different config "
                         f"({'; '.join(diff[:5])}); {todo}")


def train_variant(study: Study, i: int) -> dict[str, Any]:
    """Train variant i unless it has finished; returns its study_done.json record."""
    from ..checkpoint import LAST_FILE
    from ..train import Trainer

    v = study.variants[i]
    cfg, d = study.configs[v.name], study.model_dir(v.name)
    head = f"variant {i + 1}/{len(study.variants)} {v.name!r}"
    if v.trained and not (d / DONE_FILE).exists():  # d is the other study's folder
        raise StudyError(f"variant {v.name!r}: trained: {d} holds no finished study variant "
                         f"(no {DONE_FILE}); finish that study first, or drop 'trained'")
    if (d / DONE_FILE).exists():
        _check_same_config(d, cfg, v.name, reused=bool(v.trained))
        done = json.loads((d / DONE_FILE).read_text(encoding="utf-8"))
        if v.trained:
            log.info("%s: trained in %s (step %d), reused", head, d, done["step"])
            return {**done, "trained": str(d)}
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
    done = {"step": result["step"], "reason": result["reason"],
            "train_minutes": round(trainer.elapsed() / 60, 2),
            "parameters": sum(p.numel() for p in trainer.model.parameters())}
    atomic_write_text(d / DONE_FILE, json.dumps(done, indent=2) + "\n")
    return done


def evaluate_variant(study: Study, i: int, src: list[str], ref: list[str],
                     gold: list[dg.GoldAlignment] | None) -> dict[str, Any]:
    """Evaluate variant i on the test set, or reuse its earlier evaluation of the same set."""
    from ..evaluate import add_image_scores, evaluate_texts, read_boxes
    from ..train import pick_device
    from ..translator import Translator

    v, t = study.variants[i], study.settings.test
    w = study.work_dir(v.name)
    key = {"test": dataclasses.asdict(t), "n": len(src), "src_head": src[:3], "ref_head": ref[:3]}
    path = w / EVAL_FILE
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            log.info("variant %d/%d %r: evaluated earlier", i + 1, len(study.variants), v.name)
            return saved
    log.info("variant %d/%d %r: evaluating on %d test sentences", i + 1, len(study.variants),
             v.name, len(src))
    translator = Translator.from_dir(study.model_dir(v.name),
                                     device=str(pick_device(study.configs[v.name].train.device)))
    report, outs = evaluate_texts(
        translator, src, ref, beam=t.beam or None, gold=gold, gold_path=t.align_gold or None,
        align_method=t.align_method, align_threshold=t.align_threshold,
        rare_max_count=t.rare_max_count)
    w.mkdir(parents=True, exist_ok=True)
    atomic_write_text(w / HYP_FILE, "".join(o.text + "\n" for o in outs))
    if translator.cfg.data.src_type == "image":  # CER by length, and where attention looked
        add_image_scores(report, translator, src, ref, [o.text for o in outs],
                         read_boxes(test_path(study), len(src)))
        return _save_eval(path, {"key": key, "report": report, "heatmap": _image_picture(
            study, v.name, translator, src[t.heatmap_sentence])})
    o = outs[t.heatmap_sentence]
    heat = {"src": src[t.heatmap_sentence], "hyp": o.text, "src_tokens": o.src_tokens,
            "tgt_tokens": o.tgt_tokens,
            "attention": None if o.attention is None else np.round(o.attention, 4).tolist()}
    for name in ("p_gen", "coverage"):
        if name in o.info:
            heat[name] = np.round(o.info[name], 4).tolist()
    return _save_eval(path, {"key": key, "report": report, "heatmap": heat})


def _save_eval(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record


def _image_picture(study: Study, name: str, translator, image: str) -> dict[str, Any]:
    """Show, Attend and Tell's figure of one test image under variant ``name``, in the report
    folder; the record the report shows it by."""
    from ..attend import draw_image_attention

    if not translator.model.has_attention:
        return {"src": image, "hyp": translator.translate([image])[0].text, "picture": None}
    study.report_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=study.report_dir) as tmp:
        ((_, pic, text),) = draw_image_attention(translator, [image], Path(tmp))
        os.replace(pic, study.report_dir / f"attention-{name}.png")
    return {"src": image, "hyp": text, "picture": f"attention-{name}.png"}


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
        r = ev["report"]
        log.info("variant %d/%d %r: %s", i + 1, n, v.name,
                 f"CER {r['cer']:.2f}%" if "cer" in r else f"BLEU {r['bleu']:.2f}")
    image = study.configs[study.variants[0].name].data.src_type == "image"
    path = write_report(study, results, None if image else src, None if image else ref)
    log.info("study report: %s", path)
    return path
