"""`attendo study`: strict study files, a two-variant study end to end on a toy task, resuming."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import yaml
from conftest import toy_raw

from attendo.cli import main
from attendo.config import ConfigError
from attendo.study import StudyError, load_study, run_study
from attendo.study.report import measured_facts


def study_raw(out: Path) -> dict:
    base = toy_raw(out / "ignored")
    base["data"].update(toy="copy", toy_train_size=400, toy_valid_size=16, toy_test_size=24,
                        toy_max_len=5)
    base["model"].update(emb_dim=16, enc_hidden=32, dec_hidden=32)
    base["train"].update(valid_every=10, log_every=5)
    del base["train"]["out_dir"], base["train"]["max_steps"]  # the study sets these
    return {
        "name": "toy study",
        "base": base,
        "overrides": ["decode.beam_size=2"],
        "seed": 3,
        "budget": {"steps": 10},
        "out_dir": str(out / "study"),
        "test": {"max_sents": 12, "heatmap_sentence": 1},
        "variants": [
            {"name": "none", "overrides": ["model.attention=none"]},
            {"name": "dot", "overrides": ["model.attention=dot"]},
        ],
    }


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def mtimes(paths: list[Path]) -> list[int]:
    return [p.stat().st_mtime_ns for p in paths]


def test_study_end_to_end_then_no_retraining_then_resume(tmp_path, caplog, capsys):
    path = write(tmp_path / "study.yaml", study_raw(tmp_path))
    caplog.set_level(logging.INFO, logger="attendo")
    assert main(["study", str(path)]) == 0
    out = tmp_path / "study"
    rep = out / "report"
    text = (rep / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# toy study")
    for name in ("bleu_by_length.png", "repetition.png", "rare_words.png", "attention-dot.png",
                 "results.json", "configs/none.yaml", "configs/dot.yaml", "configs/study.yaml"):
        assert (rep / name).is_file(), name
    assert (rep / "bleu_by_length.png").read_bytes()[:4] == b"\x89PNG"
    assert not (rep / "attention-none.png").exists()  # nothing to draw without attention
    # the configs used are the complete ones, with the study's seed and budget
    dot = yaml.safe_load((rep / "configs" / "dot.yaml").read_text())
    assert dot["model"]["attention"] == "dot" and dot["train"]["seed"] == 3
    assert dot["train"]["max_steps"] == 10 and dot["decode"]["beam_size"] == 2
    # every metric is in the tables, each variant has a row, facts are stated, not judged
    for heading in ("## Scores", "## BLEU by source length", "## Repetition",
                    "## Rare and unknown words", "## Attention", "## Measured differences",
                    "## Interpretation", "| none |", "| dot |", "| reference |", "41+ (n=0)"):
        assert heading in text, heading
    assert "BLEU, all sentences: none " in text and "difference to 'none': dot " in text
    # how sure: a paired bootstrap of 'dot' against 'none', overall and per length bucket
    assert "## How sure: paired bootstrap against 'none'" in text
    boot = {r["name"]: r.get("bootstrap_vs_first") for r in
            json.loads((rep / "results.json").read_text(encoding="utf-8"))}
    assert boot["none"] is None and set(boot["dot"]) == {"all", "buckets"}
    assert boot["dot"]["all"]["low"] <= boot["dot"]["all"]["delta"] <= boot["dot"]["all"]["high"]
    assert [b["sentences"] for b in boot["dot"]["buckets"]] == [12, 0, 0, 0, 0]
    assert "delta" not in boot["dot"]["buckets"][-1]  # an empty bucket has no interval
    # both variants read the source alike, so there is no "same words" table
    assert "The same words under every variant" not in text
    assert "variant 1/2 'none': training" in caplog.text
    assert "variant 2/2 'dot': training" in caplog.text
    models = [out / "models" / n / f for n in ("none", "dot")
              for f in ("model.safetensors", "study_eval.json")]
    before = mtimes(models)
    # a second run trains and evaluates nothing, and rewrites the report
    caplog.clear()
    assert main(["study", str(path)]) == 0
    assert mtimes(models) == before
    assert "variant 1/2 'none': finished earlier (step 10), not retrained" in caplog.text
    assert "variant 2/2 'dot': evaluated earlier" in caplog.text
    # an interrupted variant (no done marker, a last.safetensors) resumes instead of restarting
    (out / "models" / "dot" / "study_done.json").unlink()
    caplog.clear()
    assert main(["study", str(path)]) == 0
    assert "variant 2/2 'dot': resuming" in caplog.text
    assert "resumed from" in caplog.text and "at step 10" in caplog.text
    assert (out / "models" / "dot" / "study_done.json").is_file()
    # --check lists the variants and their state without training
    capsys.readouterr()
    assert main(["study", str(path), "--check"]) == 0
    listing = capsys.readouterr().out
    assert "1/2 none" in listing and "finished" in listing
    # a changed variant is not silently mixed with the old model
    raw = study_raw(tmp_path)
    raw["variants"][1]["overrides"] = ["model.attention=general"]
    assert main(["study", str(write(tmp_path / "changed.yaml", raw))]) == 2
    assert "'dot'" in capsys.readouterr().err


def test_an_image_study_reports_reading_by_length_and_draws_the_image(digits, tmp_path):
    """An image base config: the test set is its list of images (test.ref empty), the report
    gives CER, exact match and attention peaks in the boxes by length, and Show, Attend and
    Tell's picture for each variant with attention."""
    from conftest import image_config

    base = yaml.safe_load(image_config(tmp_path / "base.yaml", digits, tmp_path / "x").read_text())
    del base["train"]["out_dir"], base["train"]["max_steps"]
    raw = {"name": "digits", "base": base, "budget": {"steps": 4}, "out_dir": str(tmp_path / "s"),
           "variants": [{"name": "none", "overrides": ["model.attention=none",
                                                       "model.image_rnn=columns"]},
                        {"name": "additive", "overrides": ["model.attention=additive"]}]}
    assert main(["study", str(write(tmp_path / "study.yaml", raw))]) == 0
    rep = tmp_path / "s" / "report"
    text = (rep / "report.md").read_text(encoding="utf-8")
    for heading in ("## Reading by length", "## Where attention looked", "| none |",
                    "| additive |", "(no attention to draw)", "cer_by_length.png"):
        assert heading in text, heading
    assert (rep / "attention-additive.png").read_bytes()[:4] == b"\x89PNG"
    assert not (rep / "attention-none.png").exists()
    results = {r["name"]: r for r in json.loads((rep / "results.json").read_text())}
    lengths = sorted({len(line.split("\t")[1]) for line in
                      (digits / "test.tsv").read_text().splitlines()})
    for r in results.values():
        assert [g["length"] for g in r["report"]["by_length"]] == lengths
    assert "peak_in_box" in results["additive"]["report"]["by_length"][0]
    assert "peak_in_box" not in results["none"]["report"]["by_length"][0]
    raw["test"] = {"src": str(digits / "test.tsv"), "ref": str(digits / "test.tsv")}
    with pytest.raises(ConfigError, match="leave test.ref empty"):
        load_study(write(tmp_path / "study2.yaml", raw))


def test_study_counts_the_same_words_when_variants_read_the_source_differently(tmp_path):
    raw = study_raw(tmp_path)
    raw["budget"] = {"steps": 2}
    raw["variants"] = [
        {"name": "small", "overrides": ["data.vocab_size=6"]},  # most toy words are <unk>
        {"name": "full", "overrides": []},
    ]
    assert main(["study", str(write(tmp_path / "study.yaml", raw))]) == 0
    rep = tmp_path / "study" / "report"
    text = (rep / "report.md").read_text(encoding="utf-8")
    assert "### The same words under every variant" in text
    assert "as 'small' reads it" in text and "| in ref % |" in text
    rows = {r["name"]: r for r in json.loads((rep / "results.json").read_text(encoding="utf-8"))}
    same = {n: r["rare_words_as_first_reads"] for n, r in rows.items()}
    # the first variant's own count is this one: the same words, classed the same way
    own = rows["small"]["report"]["diagnostics"]["rare_words"]
    for cls in ("oov", "rare", "split", "any"):
        assert same["small"][cls] == own[cls], cls  # the precision side included
        assert "precision" in own[cls] and "in_output" in own[cls]
    # the full vocabulary reads every toy word, so its own table has no OOV word, while the
    # same-words table counts the words 'small' cannot read, in 'full''s output too
    assert rows["full"]["report"]["diagnostics"]["rare_words"]["oov"]["in_ref"] == 0
    assert same["full"]["oov"]["in_ref"] == same["small"]["oov"]["in_ref"] > 0


def test_a_variant_trained_in_another_study_is_reused_not_retrained(tmp_path, caplog):
    first = study_raw(tmp_path / "a")
    first["budget"] = {"steps": 2}
    first["variants"] = [{"name": "dot", "overrides": ["model.attention=dot"]}]
    assert main(["study", str(write(tmp_path / "a.yaml", first))]) == 0
    trained = tmp_path / "a" / "study" / "models" / "dot"
    weights = (trained / "model.safetensors").stat().st_mtime_ns
    second = study_raw(tmp_path / "b")
    second["budget"] = {"steps": 2}
    second["variants"] = [
        {"name": "none", "overrides": ["model.attention=none"]},
        {"name": "dot", "overrides": ["model.attention=dot"], "trained": str(trained)},
    ]
    caplog.set_level(logging.INFO, logger="attendo")
    assert main(["study", str(write(tmp_path / "b.yaml", second))]) == 0
    assert f"variant 2/2 'dot': trained in {trained} (step 2), reused" in caplog.text
    assert (trained / "model.safetensors").stat().st_mtime_ns == weights  # untouched
    mine = tmp_path / "b" / "study" / "models" / "dot"
    assert sorted(p.name for p in mine.iterdir()) == ["study_eval.json", "study_test.hyp"]
    rows = {r["name"]: r for r in json.loads(
        (tmp_path / "b" / "study" / "report" / "results.json").read_text(encoding="utf-8"))}
    assert rows["dot"]["train"]["trained"] == str(trained) and rows["dot"]["train"]["step"] == 2
    assert "bootstrap_vs_first" in rows["dot"]  # its outputs count like a trained variant's
    assert "reused)" in (tmp_path / "b" / "study" / "report" / "report.md").read_text("utf-8")
    # another config than the one it was trained with is an error naming the difference
    second["variants"][1]["overrides"] = ["model.attention=general"]
    with pytest.raises(StudyError, match="model.attention: 'dot' -> 'general'"):
        run_study(load_study(write(tmp_path / "c.yaml", second)))
    second["variants"][1].update(overrides=["model.attention=dot"], trained=str(tmp_path / "x"))
    with pytest.raises(StudyError, match="holds no finished study variant"):
        run_study(load_study(write(tmp_path / "d.yaml", second)))
    second["variants"][1]["trained"] = str(mine)
    with pytest.raises(ConfigError, match="this study's own folder"):
        load_study(write(tmp_path / "e.yaml", second))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(varaints=r.pop("variants")), "varaints: unknown key; did you mean 'variants'"),
        (lambda r: r["budget"].update(stepz=3), "budget.stepz: unknown key; did you mean 'steps'"),
        (lambda r: r["test"].update(heatmap=1), "test.heatmap: unknown key"),
        (lambda r: r["variants"][1].update(overide=[]), "variants[1].overide: unknown key"),
        (lambda r: r["variants"][1]["overrides"].append("model.atention=dot"),
         "variants[1] (dot): model.atention: unknown key; did you mean 'attention'"),
        (lambda r: r["variants"][0]["overrides"].append("train.seed=4"),
         "train.seed is set by the study"),
        (lambda r: r.update(overrides=["train.max_steps=5"]), "train.max_steps is set by the study"),
        (lambda r: r["variants"].append({"name": "dot"}), "'dot' is used twice"),
        (lambda r: r["variants"].append({"name": "a/b"}), "not a usable folder name"),
        (lambda r: r.update(variants=[]), "variants: expected a non-empty list"),
        (lambda r: r.update(budget={}), "budget: set steps and/or minutes"),
        (lambda r: r.pop("base"), "base: expected a train config"),
        (lambda r: r.update(base="no/such.yaml"), "base: no/such.yaml: no such config file"),
        (lambda r: r["test"].update(src="x.txt"), "test.src and test.ref: set both or neither"),
        (lambda r: r["test"].update(src="x.txt", ref="y.txt"), "test.src: x.txt: no such file"),
    ],
)
def test_study_file_is_validated_strictly(tmp_path, edit, message):
    raw = study_raw(tmp_path)
    edit(raw)
    path = write(tmp_path / "s.yaml", raw)
    with pytest.raises(ConfigError) as e:
        load_study(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_study_overrides_from_the_command_line(tmp_path):
    path = write(tmp_path / "s.yaml", study_raw(tmp_path))
    study = load_study(path, ["budget.steps=7", "budget.minutes=2", f"out_dir={tmp_path / 'x'}"])
    cfg = study.configs["dot"]
    assert cfg.train.max_steps == 7 and cfg.train.max_minutes == 2.0 and cfg.train.max_epochs == 0
    assert Path(cfg.train.out_dir) == tmp_path / "x" / "models" / "dot"
    assert cfg.train.seed == 3 and cfg.model.attention == "dot"
    assert study.configs["none"].model.attention == "none"


def test_base_can_be_a_config_file(tmp_path):
    raw = study_raw(tmp_path)
    base = tmp_path / "base.yaml"
    write(base, raw["base"])
    raw["base"] = str(base)
    study = load_study(write(tmp_path / "s.yaml", raw))
    assert study.configs["dot"].data.toy == "copy"


def test_measured_facts_are_numbers_not_conclusions():
    def result(name, bleu, long_bleu, dup4):
        buckets = [{"bucket": b, "sentences": n, "bleu": v} for b, n, v in
                   [("1-10", 5, bleu), ("11-20", 0, None), ("21-30", 0, None),
                    ("31-40", 0, None), ("41+", 2, long_bleu)]]
        rep = {"1": 10.0, "2": 2.0, "3": 1.0, "4": dup4}
        diag = {"bleu_by_length": buckets,
                "repetition": {"output": rep, "reference": {"1": 9.0, "2": 1.0, "3": 0.5, "4": 0.2}},
                "rare_words": {"oov": {"in_ref": 4, "reproduced": 1, "share": 25.0},
                               "rare": {"in_ref": 0, "reproduced": 0, "share": None},
                               "split": {"in_ref": 0, "reproduced": 0, "share": None},
                               "any": {"in_ref": 4, "reproduced": 1, "share": 25.0},
                               "max_count": 5},
                "unk_rate": 1.5, "attention": None}
        return {"name": name, "overrides": [], "train": {"step": 10},
                "report": {"bleu": bleu, "diagnostics": diag}}

    base = result("none", 20.0, 3.1, 5.0)
    other = copy.deepcopy(result("additive", 25.0, 12.4, 1.0))
    facts = measured_facts([base, other])
    text = "\n".join(facts)
    assert "BLEU 41+ source words (n=2): none 3.10, additive 12.40." in text
    assert "BLEU 41+ source words (n=2), difference to 'none': additive +9.30." in text
    assert "Duplicate 4-gram share (%), reference: 0.20." in text
    assert "Duplicate 4-gram share (%) of the outputs: none 5.00, additive 1.00." in text
    assert "Highest BLEU: additive (25.00); lowest: none (20.00)." in text
    assert "11-20" not in text  # empty buckets give no sentence
    assert "rare source words" not in text  # none of them in the references: nothing to say
    for word in ("better", "worse", "improve", "fix", "confirm"):
        assert word not in text.lower()


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the project's local data copies, beside the checkout
STUDIES = sorted((REPO / "configs" / "study").glob("*.yaml"))


@pytest.fixture(scope="module")
def study_root(tmp_path_factory) -> Path:
    """A stand-in for the repository root the shipped studies run from: configs/, ../shared
    beside it when this checkout has one, and data/multi30k/ made by the command the study
    files give (`attendo data multi30k --out data/multi30k --from ../shared/data/multi30k`);
    without ../shared, small generated files under the names that command writes."""
    from attendo.data.download import MULTI30K_SPLITS

    tmp = tmp_path_factory.mktemp("studies")
    root = tmp / "repo"
    root.mkdir()
    (root / "configs").symlink_to(REPO / "configs")
    if SHARED.is_dir():
        (tmp / "shared").symlink_to(SHARED)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        if (SHARED / "data" / "multi30k").is_dir():
            argv = ["data", "multi30k", "--out", "data/multi30k", "--from", "../shared/data/multi30k"]
            assert main(argv) == 0
        else:
            out = root / "data" / "multi30k"
            out.mkdir(parents=True)
            for split in MULTI30K_SPLITS:
                for lang, line in (("de", "zwei Hunde laufen .\n"), ("en", "two dogs run .\n")):
                    (out / f"{split}.{lang}").write_text(line, encoding="utf-8")
    return root


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_study_configs_validate(path, study_root, monkeypatch):
    """Every shipped study loads from the repository root with its data laid out as its
    comments say: keys, variants, each variant's full config and the test files' paths."""
    monkeypatch.chdir(study_root)
    rel = path.relative_to(REPO)
    test = yaml.safe_load(path.read_text(encoding="utf-8")).get("test", {})
    if not SHARED.is_dir() and any(str(v).startswith("../shared/") for v in test.values()):
        pytest.skip(f"{rel} tests on files in ../shared, and there is no {SHARED}")
    study = load_study(rel)
    assert study.variants and len(study.configs) == len(study.variants)
