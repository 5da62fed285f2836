"""Pictures and the explorer: PNG sizes for RNN and Transformer models, subword merging,
p_gen/coverage strips, and a self-contained HTML file holding the data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from conftest import train_tiny

from attendo.cli import main
from attendo.explorer import explorer_page, sentence_record
from attendo.translator import Translation
from attendo.viz import (
    draw_translation,
    grid_figsize,
    heatmap_figsize,
    merge_matrix,
    merge_subwords,
    plot_attention,
    plot_attention_grid,
)

TRANSFORMER = {"encoder": "transformer", "decoder": "transformer", "d_model": 16, "heads": 2,
               "ff_dim": 32, "enc_layers": 2, "dec_layers": 3, "attn_dropout": 0.0}


@pytest.fixture(scope="module")
def rnn_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("viz") / "rnn")


@pytest.fixture(scope="module")
def transformer_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("viz") / "tf", **TRANSFORMER)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h, w = matplotlib.image.imread(path).shape[:2]
    return w, h


def pixels(figsize: tuple[float, float], dpi: int) -> tuple[int, int]:
    return round(figsize[0] * dpi), round(figsize[1] * dpi)


# --------------------------------------------------------------------------- merging


def test_merge_subwords_joins_pieces_and_keeps_words_and_specials():
    words, groups = merge_subwords(["\u2581new", "s", "\u2581to", "day", ".", "</s>"])
    assert words == ["news", "today.", "</s>"]
    assert groups == [[0, 1], [2, 3, 4], [5]]
    # a word-level tokenizer's tokens have no marks: they are words already
    assert merge_subwords(["a", "b", "c", "</s>"]) == (["a", "b", "c", "</s>"],
                                                       [[0], [1], [2], [3]])
    # the char tokenizer's space piece starts a word
    words, _ = merge_subwords(["a", "b", "\u2581", "c", "</s>"])
    assert words == ["ab", "c", "</s>"]


def test_merged_attention_rows_still_sum_to_one():
    rng = np.random.default_rng(0)
    src = ["\u2581ein", "\u2581Fahr", "rad", "."]
    tgt = ["\u2581a", "\u2581bi", "ke", ".", "</s>"]
    attn = rng.dirichlet(np.ones(len(src)), size=len(tgt))
    (src_words, src_groups), (tgt_words, tgt_groups) = merge_subwords(src), merge_subwords(tgt)
    merged = merge_matrix(attn, tgt_groups, src_groups)  # as plot_attention and the explorer do
    assert src_words == ["ein", "Fahrrad."] and tgt_words == ["a", "bike.", "</s>"]
    assert merged.shape == (3, 2)
    np.testing.assert_allclose(merged.sum(1), 1.0)


# --------------------------------------------------------------------------- PNG sizes


def test_plot_attention_png_is_figsize_times_dpi(tmp_path):
    rng = np.random.default_rng(1)
    src, tgt = ["a", "b", "c"], ["x", "y", "z", "w", "</s>"]
    attn = rng.dirichlet(np.ones(3), size=5)
    plain = plot_attention(attn, src, tgt, tmp_path / "plain.png", dpi=40)
    assert png_size(plain) == pixels(heatmap_figsize(3, 5), 40)
    # a p_gen strip and a coverage strip make the figure wider and taller
    cov = np.cumsum(np.vstack([np.zeros(3), attn[:-1]]), 0)
    both = plot_attention(attn, src, tgt, tmp_path / "both.png", dpi=40,
                          strips={"p_gen": rng.random(5)}, coverage=cov)
    assert png_size(both) == pixels(heatmap_figsize(3, 5, 1, True), 40)
    assert png_size(both)[0] > png_size(plain)[0] and png_size(both)[1] > png_size(plain)[1]
    with pytest.raises(ValueError, match="does not match"):
        plot_attention(attn[:, :2], src, tgt, tmp_path / "bad.png")


def test_plot_attention_grid_png_is_figsize_times_dpi(tmp_path):
    w = np.random.default_rng(2).dirichlet(np.ones(4), size=(2, 3, 6))  # (L, H, T, S)
    path = plot_attention_grid(w, list("uvwxyz"), list("abcd"), tmp_path / "g.png", dpi=30)
    assert png_size(path) == pixels(grid_figsize(6, 4, 2, 3), 30)


def test_attend_rnn_png_size(rnn_dir, tmp_path, capsys):
    out = tmp_path / "pics"
    assert main(["attend", "--model", str(rnn_dir), "a b c d", "--out", str(out),
                 "--dpi", "50"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["attention-000.png"]
    import attendo

    (t,) = attendo.load(rnn_dir).translate(["a b c d"], return_attention=True)
    S, T = len(t.src_tokens), len(t.tgt_tokens)
    assert png_size(out / "attention-000.png") == pixels(heatmap_figsize(S, T), 50)
    # --layer/--head need per-head attention, which an RNN does not have
    assert main(["attend", "--model", str(rnn_dir), "a b", "--out", str(out), "--head", "0"]) == 2
    assert "heads" in capsys.readouterr().err


def test_attend_transformer_every_layer_and_head(transformer_dir, tmp_path, capsys):
    import attendo

    out = tmp_path / "pics"
    assert main(["attend", "--model", str(transformer_dir), "a b c", "--out", str(out),
                 "--dpi", "30"]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["attention-000-cross.png", "attention-000-self.png", "attention-000.png"]
    printed = capsys.readouterr().out
    assert all(str(out / n) in printed for n in names)
    (t,) = attendo.load(transformer_dir).translate(["a b c"], return_attention=True)
    S, T = len(t.src_tokens), len(t.tgt_tokens)
    L, H = TRANSFORMER["dec_layers"], TRANSFORMER["heads"]
    assert t.info["attn_heads"].shape == (T, L, H, S)
    assert png_size(out / "attention-000.png") == pixels(heatmap_figsize(S, T), 30)
    assert png_size(out / "attention-000-cross.png") == pixels(grid_figsize(T, S, L, H), 30)
    assert png_size(out / "attention-000-self.png") == pixels(
        grid_figsize(S, S, TRANSFORMER["enc_layers"], H), 30)
    # one chosen layer and head: a single heatmap; a layer alone: that layer's heads
    one = tmp_path / "one"
    assert main(["attend", "--model", str(transformer_dir), "a b c", "--out", str(one),
                 "--layer", "-1", "--head", "1", "--dpi", "30"]) == 0
    assert png_size(one / "attention-000-cross-L2H1.png") == pixels(heatmap_figsize(S, T), 30)
    assert (one / "attention-000-self-L1H1.png").is_file()  # -1: the encoder's last layer
    row = tmp_path / "row"
    assert main(["attend", "--model", str(transformer_dir), "a b c", "--out", str(row),
                 "--layer", "0", "--dpi", "30"]) == 0
    assert png_size(row / "attention-000-cross-L0.png") == pixels(grid_figsize(T, S, 1, H), 30)
    capsys.readouterr()
    assert main(["attend", "--model", str(transformer_dir), "a b", "--out", str(row),
                 "--layer", "7"]) == 2
    assert "--layer 7" in capsys.readouterr().err


def test_encoder_self_attention_rows_sum_to_one(transformer_dir, rnn_dir):
    import attendo

    t = attendo.load(transformer_dir)
    a, empty = t.encoder_self_attention([["a", "b", "c"], []])
    assert a.shape == (TRANSFORMER["enc_layers"], TRANSFORMER["heads"], 3, 3)
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    assert empty is None
    assert attendo.load(rnn_dir).encoder_self_attention([["a"]]) == [None]


# --------------------------------------------------------------------------- p_gen, coverage


def fake_translation() -> Translation:
    """A translation as a copy + coverage model returns it (coverage padded to a batch's S)."""
    rng = np.random.default_rng(3)
    src, tgt = ["\u2581ein", "\u2581Fahr", "rad"], ["\u2581a", "\u2581bi", "ke", "</s>"]
    attn = rng.dirichlet(np.ones(3), size=4)
    cov = np.cumsum(np.vstack([np.zeros(3), attn[:-1]]), 0)
    cov = np.hstack([cov, np.zeros((4, 2))])  # (T, S + padding)
    t = Translation("a bike", src, tgt, -0.5, -2.0, attn,
                    {"p_gen": rng.random(4), "coverage": cov})
    t.nbest = [t, Translation("a bicycle", src, tgt, -0.9, -3.6, attn, {})]
    return t


def test_p_gen_and_coverage_strips(tmp_path):
    t = fake_translation()
    (path,) = draw_translation(t, tmp_path, "x", dpi=40)
    assert png_size(path) == pixels(heatmap_figsize(3, 4, 1, True), 40)
    (merged,) = draw_translation(t, tmp_path, "m", merge=True, dpi=40)
    assert png_size(merged) == pixels(heatmap_figsize(2, 3, 1, True), 40)


def test_sentence_record_carries_strips_matrices_and_nbest():
    t = fake_translation()
    rec = sentence_record("ein Fahrrad", t)
    best = rec["hyps"][0]
    assert [h["text"] for h in rec["hyps"]] == ["a bike", "a bicycle"]
    assert len(best["strips"]["p_gen"]) == 4
    assert np.array(best["matrices"]["coverage"]).shape == (4, 3)  # padding cut off
    assert np.array(best["attention"]).shape == (4, 3)
    merged = sentence_record("ein Fahrrad", t, merge=True)
    assert merged["src_tokens"] == ["ein", "Fahrrad"]
    assert np.array(merged["hyps"][0]["attention"]).shape == (3, 2)
    assert len(merged["hyps"][0]["strips"]["p_gen"]) == 3


# --------------------------------------------------------------------------- the HTML file

EXTERNAL = [
    re.compile(r"https?://", re.I),
    re.compile(r"//cdn", re.I),
    re.compile(r"""\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I),
    re.compile(r"@import|url\(", re.I),
    re.compile(r"<link\b", re.I),
]


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="attendo-data">(.*?)</script>', html, re.S)
    assert m, "no inline data"
    return json.loads(m.group(1))


def assert_self_contained(html: str) -> None:
    for pattern in EXTERNAL:
        assert not pattern.search(html), f"external reference: {pattern.pattern}"
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)  # every script inline


def test_explorer_html_holds_the_data_and_no_external_urls(transformer_dir, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    sents = tmp_path / "s.txt"
    sents.write_text("a b c\nd e\n\nc a\n", encoding="utf-8")
    html_path = tmp_path / "ex.html"
    assert main(["attend", "--model", str(transformer_dir), "-i", str(sents), "--html",
                 str(html_path), "--beam", "3"]) == 0
    assert not (tmp_path / "attention").exists()  # --html alone: no PNGs
    html = html_path.read_text(encoding="utf-8")
    assert_self_contained(html)
    data = page_data(html)
    assert data["mode"] == "file" and data["model"]["decoder"] == "transformer"
    recs = data["sentences"]
    assert [r["source"] for r in recs] == ["a b c", "d e", "", "c a"]
    first = recs[0]
    T, S = len(first["hyps"][0]["tgt_tokens"]), len(first["src_tokens"])
    assert len(first["hyps"]) == 3  # n-best defaults to min(beam, 5)
    assert np.array(first["hyps"][0]["attention"]).shape == (T, S)
    assert np.array(first["hyps"][0]["heads"]).shape == (3, 2, T, S)  # (L, H, T, S)
    assert np.array(first["self_attention"]).shape == (2, 2, S, S)
    assert recs[2]["src_tokens"] == [] and "attention" not in recs[2]["hyps"][0]
    assert "explorer of 4 sentence(s)" in capsys.readouterr().out


def test_explorer_page_cannot_be_broken_out_of():
    """A sentence with markup stays data: the inline JSON never closes its script element."""
    t = fake_translation()
    evil = "</script><script>alert(1)</script><!-- & -->"
    html = explorer_page({"sentences": [sentence_record(evil, t)]})
    assert "<script>alert" not in html and "<!-- &" not in html
    assert page_data(html)["sentences"][0]["source"] == evil
    assert_self_contained(html)
    live = explorer_page(live=True)
    assert page_data(live)["mode"] == "live" and 'fetch("translate"' in live
    assert_self_contained(live)
