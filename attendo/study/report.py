"""A study's report: tables of measured numbers, a paired bootstrap, plots and heatmaps."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from .. import diagnostics as dg
from ..utils import atomic_write_text
from .plots import diag, plot_report
from .spec import HYP_FILE, Study

log = logging.getLogger("attendo")


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _code(text: str) -> str:
    """Text shown verbatim in Markdown (an output may hold <unk>, *, | ...)."""
    return "`" + text.replace("`", "'") + "`" if text else "(empty)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def measured_facts(results: list[dict]) -> list[str]:
    """Neutral sentences built from the numbers: values per variant, differences to the first
    variant, highest and lowest. No conclusion is drawn."""
    first = results[0]["name"]
    facts = []

    def add(label: str, get, what: str | None = None) -> None:
        have = [r for r in results if get(r) is not None]
        if not have:
            return
        facts.append(f"{label}: " + ", ".join(f"{r['name']} {_f(get(r))}" for r in results) + ".")
        base = get(results[0])
        if base is not None and len(have) > 1:  # have[0] is the first variant
            deltas = ", ".join(f"{r['name']} {get(r) - base:+.2f}" for r in have[1:])
            facts.append(f"{label}, difference to {first!r}: {deltas}.")
        if what and len(have) > 1:
            hi, lo = max(have, key=get), min(have, key=get)
            facts.append(f"Highest {what}: {hi['name']} ({_f(get(hi))}); lowest: {lo['name']} "
                         f"({_f(get(lo))}).")

    add("BLEU, all sentences", lambda r: r["report"]["bleu"], "BLEU")
    d0 = diag(results[0])
    for k, b in enumerate(d0.get("bleu_by_length", [])):
        if b["sentences"]:
            add(f"BLEU {b['bucket']} source words (n={b['sentences']})",
                lambda r, k=k: diag(r)["bleu_by_length"][k]["bleu"])
    ref_rep = d0.get("repetition", {}).get("reference", {})
    for n in ref_rep:
        facts.append(f"Duplicate {n}-gram share (%), reference: {_f(ref_rep[n])}.")
        add(f"Duplicate {n}-gram share (%) of the outputs",
            lambda r, n=n: diag(r)["repetition"]["output"][n])
    rw = d0.get("rare_words")
    if rw:
        for cls, label in (("oov", "out-of-vocabulary"), ("rare", "rare"),
                           ("split", "subword-split")):
            if rw[cls]["in_ref"]:
                add(f"Reproduced {label} source words (%, of {rw[cls]['in_ref']} found in the "
                    "reference)", lambda r, c=cls: diag(r)["rare_words"][c]["share"])
    add("`<unk>` in the output (% of tokens)", lambda r: diag(r).get("unk_rate"))
    add("Attention entropy (nats)", lambda r: (diag(r).get("attention") or {}).get("entropy"))
    add("AER", lambda r: (diag(r).get("attention") or {}).get("aer"))
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
    from ..metrics import bleu_stats, paired_bootstrap

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
    from ..data.prepare import load_codecs

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
    rd, s = study.report_dir, study.settings
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
    plots = plot_report(study, results, same)
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
    if "by_length" in rep0:  # an image study: reading by length, and the pictures
        lines += _image_sections(study, results)
    else:
        lines += _diagnostic_sections(results, plots, _bootstrap_section(results, boot),
                                      _same_words_section(results, same))
    lines += ["## Measured differences", "",
              "Generated from the numbers above; no conclusion is drawn here.", ""]
    lines += [f"- {x}" for x in measured_facts(results)]
    lines += ["", "## Interpretation", "",
              "_To be written by a person who has read the numbers above._", ""]
    atomic_write_text(rd / "report.md", "\n".join(lines))
    return rd / "report.md"


def _image_sections(study: Study, results: list[dict]) -> list[str]:
    """An image study: CER, exact match and attention peaks in the symbol's box by the
    reference's length, a plot of CER by length, and each variant's attention picture."""
    from .plots import plot_by_length

    lengths = [g["length"] for g in results[0]["report"]["by_length"]]

    def cells(r: dict, key: str, scale: float = 1.0) -> list[str]:
        rows = {g["length"]: g for g in r["report"]["by_length"]}
        return [_f(None if rows.get(n, {}).get(key) is None else scale * rows[n][key])
                for n in lengths]

    counts = ", ".join(f"{g['length']}: {g['images']}" for g in results[0]["report"]["by_length"])
    out = ["## Reading by length", "",
           "Character error rate (%, edit distance over reference characters; for digit strings "
           f"the digit error rate) by the reference's length in characters (images per length: "
           f"{counts}).", "",
           *_table(["variant", "CER all", *(f"{n}" for n in lengths)],
                   [[r["name"], _f(r["report"]["cer"]), *cells(r, "cer")] for r in results]),
           "", f"![CER by length]({plot_by_length(study, results, lengths)})", "",
           "Exact match (% of images read without an error) by length:", "",
           *_table(["variant", *(f"{n}" for n in lengths)],
                   [[r["name"], *cells(r, "exact_match", 100)] for r in results]),
           "", "## Where attention looked", "",
           "Share of output symbols (%) whose attention peak, teacher-forced on the reference, "
           "lies inside the symbol's box, by length; `-`: no attention.", "",
           *_table(["variant", "all", *(f"{n}" for n in lengths)],
                   [[r["name"], _f(None if not diag(r).get("attention") else 100 * diag(r)[
                       "attention"]["localization"]["peak_in_box"]), *cells(r, "peak_in_box", 100)]
                    for r in results]), ""]
    heat = results[0]["heatmap"]
    out += [f"Attention on the same test image under each variant: `{heat['src']}`", ""]
    for r in results:
        h = r["heatmap"]
        out.append(f"- {r['name']}: {_code(h['hyp'])}" + ("" if h["picture"] else
                                                         " (no attention to draw)"))
    out += ["", *(f"![attention, {r['name']}]({r['heatmap']['picture']})" for r in results
                  if r["heatmap"]["picture"]), ""]
    return out


def _diagnostic_sections(results: list[dict], plots: dict[str, str],
                         bootstrap: list[str], same_words: list[str]) -> list[str]:
    d0 = diag(results[0])
    if not d0:
        return bootstrap + same_words
    buckets = d0["bleu_by_length"]
    out = ["## BLEU by source length", "",
           "Corpus BLEU of the test sentences in each bucket of source length in words "
           "(Bahdanau et al. 2015, fig. 2); n = sentences in the bucket.", "",
           *_table(["variant"] + [f"{b['bucket']} (n={b['sentences']})" for b in buckets],
                   [[r["name"]] + [_f(b["bleu"]) for b in diag(r)["bleu_by_length"]]
                    for r in results]),
           "", f"![BLEU by source length]({plots['length']})", "", *bootstrap]
    ns = list(d0["repetition"]["reference"])
    out += ["## Repetition", "",
            "Share of duplicate n-grams within each output (%, n-grams that repeat an earlier "
            "n-gram of the same sentence, pooled over the test set; See et al. 2017, fig. 4), "
            "beside the same share in the references. Tokens: sacreBLEU 13a.", "",
            *_table(["", *(f"n={n}" for n in ns)],
                    [["reference", *(_f(d0["repetition"]["reference"][n]) for n in ns)]]
                    + [[r["name"], *(_f(diag(r)["repetition"]["output"][n]) for n in ns)]
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
                        str(diag(r)["rare_words"][c]["in_ref"]),
                        _f(diag(r)["rare_words"][c]["share"]))),
                      _f(diag(r)["unk_rate"], "{:.3f}")] for r in results]),
            "", f"![Rare and unknown words]({plots['rare']})", "", *same_words]
    out += ["## Attention", "",
            "Mean entropy of the attention rows over the test outputs (nats, and as a share "
            "of the entropy of a uniform row). AER (Och & Ney 2003) against the gold "
            "alignments when the study has `test.align_gold`, from teacher-forced attention on "
            "the references. p_gen: mean generation probability of copy models.", "",
            *_table(["variant", "entropy", "of uniform", "AER", "mean p_gen"],
                    [[r["name"], _f((diag(r)["attention"] or {}).get("entropy"), "{:.3f}"),
                      _f((diag(r)["attention"] or {}).get("entropy_norm"), "{:.3f}"),
                      _f((diag(r)["attention"] or {}).get("aer"), "{:.4f}"),
                      _f(diag(r).get("p_gen"), "{:.3f}")] for r in results]),
            ""]
    heat = results[0]["heatmap"]
    out += [f"Attention on the same test sentence under each variant: {_code(heat['src'])}", ""]
    for r in results:
        pic = plots["heatmaps"].get(r["name"])
        out.append(f"- {r['name']}: {_code(r['heatmap']['hyp'])}"
                   + ("" if pic else " (no attention to draw)"))
    out += ["", *(f"![attention, {name}]({pic})" for name, pic in plots["heatmaps"].items()), ""]
    return out
