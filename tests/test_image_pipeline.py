"""Image input end to end through the same commands as text: generated digit strings (and a
captioning folder in the generic format) -> train -> translate --image -> evaluate -> attend,
with the model directory, resume and bad images handled as for text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import image_config
from PIL import Image as PILImage

from attendo.cli import main
from attendo.data.corpus import CorpusError
from attendo.translator import Translator

pytest.importorskip("sklearn")


def test_model_directory_holds_no_source_tokenizer(image_model):
    names = {p.name for p in image_model.iterdir()}
    assert {"config.yaml", "model.safetensors", "tgt.vocab.json"} <= names
    assert not any(n.startswith("src.") for n in names)


def test_translate_images_from_arguments_and_a_list(image_model, digits, tmp_path, capsys):
    test = [digits / line.split("\t")[0] for line in (digits / "test.tsv").read_text().splitlines()]
    assert main(["translate", "--model", str(image_model), "--image", *map(str, test[:3])]) == 0
    by_args = capsys.readouterr().out.splitlines()
    assert len(by_args) == 3
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in test[:3]))
    assert main(["translate", "--model", str(image_model), "--input", str(listing)]) == 0
    assert capsys.readouterr().out.splitlines() == by_args


def test_python_api_gives_attention_over_regions(image_model, digits):
    tr = Translator.from_dir(image_model)
    path = str(digits / "images/test/000000.png")
    out = tr.translate([path], beam=1, return_attention=True)[0]
    pixels = tr.src.encode(path).pixels  # (1, 16, W)
    rows, cols = tr.model.encoder.grid_shape(16, pixels.shape[-1])
    assert out.src_tokens == []
    assert out.attention.shape == (len(out.tgt_tokens), rows * cols)
    np.testing.assert_allclose(out.attention.sum(1), 1.0, atol=1e-5)
    # beam 1 is greedy, and padding the image wider in a batch changes nothing
    wide = str(digits / "images/test/000001.png")
    both = tr.translate([path, wide], beam=1, return_attention=True)[0]
    assert both.text == out.text
    np.testing.assert_allclose(both.attention, out.attention, atol=1e-5)


def test_evaluate_on_the_image_list(image_model, digits, tmp_path, capsys):
    assert main(["evaluate", "--model", str(image_model), "--src", str(digits / "test.tsv"),
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["sentences"] == 8 and 0 <= r["exact_match"] <= 1 and r["cer"] >= 0
    assert "rare_words" not in r["diagnostics"]
    assert r["diagnostics"]["attention"]["entropy"] is not None
    loc = r["diagnostics"]["attention"]["localization"]  # test.boxes.jsonl is beside test.tsv
    assert loc["symbols"] + loc["skipped"] > 0
    assert loc["symbols"] == sum(p["symbols"] for p in loc["by_position"])
    assert 0 <= loc["peak_in_box"] <= 1 and 0 <= loc["mass_in_box"] <= 1
    groups = r["by_length"]  # by the reference's length: they add up to the whole
    refs = [line.split("\t")[1] for line in (digits / "test.tsv").read_text().splitlines()]
    assert [g["length"] for g in groups] == sorted({len(t) for t in refs})
    assert sum(g["images"] for g in groups) == 8
    assert sum(g["cer"] * g["length"] * g["images"] for g in groups) == pytest.approx(
        r["cer"] * sum(map(len, refs)), abs=0.05 * len(groups) * 8 * 8)
    assert all(0 <= g["peak_in_box"] <= 1 for g in groups)
    assert main(["evaluate", "--model", str(image_model), "--src", str(digits / "test.tsv"),
                 "--ref", str(digits / "test.tsv")]) == 2
    assert "without --ref" in capsys.readouterr().err


def test_attend_draws_one_panel_per_output_symbol(image_model, digits, tmp_path, capsys):
    img = str(digits / "images/test/000002.png")
    assert main(["attend", "--model", str(image_model), "--out", str(tmp_path), img]) == 0
    png, text = capsys.readouterr().out.rstrip("\n").split("\t")
    assert Path(png).is_file() and Path(png).stat().st_size > 1000


def test_resume_continues_an_image_run(digits, tmp_path):
    cfg = image_config(tmp_path / "c.yaml", digits, tmp_path / "m")
    assert main(["train", str(cfg), "train.max_steps=6"]) == 0
    assert main(["train", "--resume", str(tmp_path / "m"), "train.max_steps=12"]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "m/metrics.jsonl").open()]
    assert max(steps) == 12


def test_show_attend_and_tell_options_train_and_log_the_penalty(digits, tmp_path):
    """The gate beta on the context and the doubly stochastic penalty (coverage's loss in Show,
    Attend and Tell's form) are config keys of the same model path."""
    cfg = image_config(tmp_path / "c.yaml", digits, tmp_path / "m", context_gate=True)
    assert main(["train", str(cfg), "train.max_steps=6", "train.coverage_loss=1.0",
                 "train.coverage_loss_form=doubly_stochastic"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "m/metrics.jsonl").open()]
    cov = [r["cov_loss"] for r in recs if r["type"] == "train"]
    assert cov and all(c > 0 for c in cov)
    t = Translator.from_dir(tmp_path / "m")
    assert t.model.decoder.gate is not None
    images = sorted(digits.rglob("*.png"))[:2]
    assert len(images) == 2
    out = t.translate([str(p) for p in images], return_attention=True)
    assert all(o.attention is not None for o in out)


def test_bad_images_are_named(image_model, tmp_path):
    tr = Translator.from_dir(image_model)
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(CorpusError, match="fake.png"):
        tr.translate([str(fake)])
    with pytest.raises(CorpusError, match="missing.png"):
        tr.translate([str(tmp_path / "missing.png")])


def test_captioning_on_the_generic_folder_format(tmp_path, capsys):
    """A user's own folder: RGB pictures and a TSV of captions (here: coloured squares and
    their colour names); train, translate with beam, evaluate BLEU, attend."""
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    folder = tmp_path / "caps"
    (folder / "img").mkdir(parents=True)
    for split, n in (("train", 48), ("dev", 6), ("test", 6)):
        lines = []
        for i in range(n):
            name = list(colours)[int(rng.integers(3))]
            a = np.full((24, 24 + 8 * int(rng.integers(3)), 3), 255, np.uint8)
            a[4:20, 4:20] = colours[name]
            PILImage.fromarray(a).save(folder / f"img/{split}{i}.jpg")
            lines.append(f"img/{split}{i}.jpg\ta {name} square\n")
        (folder / f"{split}.tsv").write_text("".join(lines))
    cfg = image_config(tmp_path / "c.yaml", folder, tmp_path / "m")
    raw = yaml.safe_load(cfg.read_text())
    raw["data"].update(image_channels=3, tokenizer="word", image_height=16)
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg)]) == 0
    assert main(["translate", "--model", str(tmp_path / "m"), "--beam", "3",
                 "--image", str(folder / "img/test0.jpg")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--src", str(folder / "test.tsv"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bleu"] >= 0
    assert main(["attend", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "a"),
                 str(folder / "img/test0.jpg")]) == 0


def test_localization_counts_peaks_and_mass_inside_boxes():
    from attendo.diagnostics import attention_localization

    centres = np.array([[1.0, 1.0], [3.0, 1.0], [5.0, 1.0]])  # three regions in a row
    boxes = np.array([[0, 0, 2, 2], [2, 0, 6, 2]])  # symbol 1 over region 0, 2 over 1 and 2
    attn = np.array([[0.7, 0.2, 0.1],  # peak in its box, mass 0.7
                     [0.6, 0.3, 0.1]])  # peak outside, mass 0.4
    r = attention_localization([(attn, centres, boxes)])
    assert r["symbols"] == 2 and r["peak_in_box"] == 0.5 and r["mass_in_box"] == 0.55
    assert [p["position"] for p in r["by_position"]] == ["1", "2"]


def test_character_error_rate():
    from attendo.metrics import char_error_rate

    assert char_error_rate(["3141", "27"], ["3141", "27"]) == 0.0
    # a substitution and a missing character over 4 + 2 reference characters; an extra one
    assert char_error_rate(["3941", "2"], ["3141", "27"]) == 100 * 2 / 6
    assert char_error_rate(["31415"], ["3141"]) == 25.0


def test_python_api_takes_pil_images_and_arrays(image_model, digits):
    """A path, the PIL image and its array give the same output; a wrong object is named."""
    from attendo.errors import UsageError

    t = Translator.from_dir(image_model)
    path = sorted(digits.rglob("*.png"))[0]
    with PILImage.open(path) as im:
        pil = im.copy()
    arr = np.asarray(pil.convert("L"))
    out = t.translate([str(path), pil, arr, np.stack([arr] * 3, -1)], beam=2,
                      return_attention=True)
    assert len({o.text for o in out}) == 1
    np.testing.assert_allclose(out[0].attention, out[1].attention)
    with pytest.raises(UsageError, match=r"texts\[1\]: expected a uint8 array"):
        t.translate([str(path), arr.astype(float)])
    with pytest.raises(UsageError, match=r"texts\[0\]: expected an image file's path"):
        t.translate([3])
