"""Word alignments drawn over attention: word links -> heatmap cells (pieces, merged words),
the markers drawn, ``attendo attend --tgt/--align-gold/--show-alignment`` (PNGs, the
explorer, clear errors), and ``"alignment"`` in the server's /translate."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import train_tiny

import attendo
from attendo.cli import main
from attendo.explorer import explorer_page, sentence_record
from attendo.translator import Translation
from attendo.viz import (
    LinkSet,
    alignment_cells,
    alignment_groups,
    draw_alignment,
    gold_link_sets,
    heatmap_figsize,
    link_cells,
    plot_attention,
)

M = "\u2581"
# source "das Haus chen" in pieces: ▁das | ▁Haus chen ; output: ▁the | ▁lit tle | ▁house </s>
SRC = [M + "das", M + "Haus", "chen"]
TGT = [M + "the", M + "lit", "tle", M + "house", "</s>"]
BPE = ("bpe", "bpe")


# --------------------------------------------------------------------------- mapping


def test_word_links_mark_every_piece_cell_of_their_words():
    sg, tg = alignment_groups(SRC, TGT, BPE)
    assert sg == [[0], [1, 2]] and tg == [[0], [1, 2], [3]]  # </s> belongs to no word
    # the-das: one cell; little-Haus(chen): 2 output pieces x 2 source pieces; house-Hauschen: 2
    assert link_cells({(0, 0), (1, 1), (1, 2)}, sg, tg) == {
        (0, 0), (1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)}
    # a word-level heatmap: the link (i, j) is the cell (row j, column i)
    words = alignment_cells([LinkSet("sure", {(1, 0), (0, 2)})], ["a", "b"], ["x", "y", "z"])
    assert words[0][1] == {(0, 1), (2, 0)}
    with pytest.raises(ValueError, match="link 2-0 is outside"):
        link_cells({(2, 0)}, sg, tg)
    with pytest.raises(ValueError, match="link kind"):
        LinkSet("maybe", set())


def test_char_spaces_are_no_word_and_merged_heatmaps_get_word_cells():
    # char tokenizer: "▁" separates words and belongs to none, so its column stays unmarked
    src, tgt = ["a", "b", M, "c"], ["x", M, "y", "z", "</s>"]
    ((_, cells),) = alignment_cells([LinkSet("model", {(1, 1)})], src, tgt, ("char", "char"))
    assert cells == {(2, 3), (3, 3)}
    # --merge-subwords: piece cells fold into cells of merged words (</s> stays a word)
    overlay = alignment_cells(gold_link_sets({(1, 1)}, {(1, 1), (0, 2)}), SRC, TGT, BPE,
                              merge=True)
    assert [(ls.kind, cells) for ls, cells in overlay] == [("sure", {(1, 1)}),
                                                           ("possible", {(2, 0)})]


def test_one_marker_per_cell_in_the_style_of_its_kind():
    overlay = alignment_cells(
        gold_link_sets({(0, 0), (1, 1)}, {(0, 0), (1, 1), (1, 2)}) + [LinkSet("model", {(0, 0)})],
        SRC, TGT, BPE)
    fig, ax = plt.subplots()
    ax.imshow(np.zeros((len(TGT), len(SRC))))
    artists = draw_alignment(ax, overlay)
    plt.close(fig)
    # sure: 1 + 2 x 2 cells; possible (1, 2) only, sure links are not drawn twice: 1 x 2; model 1
    assert len(artists) == 5 + 2 + 1
    squares = [a for a in artists if hasattr(a, "get_xy")]
    sure = sorted((round(a.get_y() + 0.5), round(a.get_x() + 0.5)) for a in squares
                  if a.get_linestyle() == "-")
    assert sure == [(0, 0), (1, 1), (1, 2), (2, 1), (2, 2)]
    possible = [a for a in squares if a.get_linestyle() != "-"]
    assert sorted((round(a.get_y() + a.get_height() / 2), round(a.get_x() + a.get_width() / 2))
                  for a in possible) == [(3, 1), (3, 2)]
    (dot,) = [a for a in artists if not hasattr(a, "get_xy")]
    assert (list(dot.get_xdata()), list(dot.get_ydata())) == ([0], [0])


def test_overlay_keeps_the_png_size(tmp_path):
    attn = np.random.default_rng(0).dirichlet(np.ones(3), size=5)
    al = gold_link_sets({(0, 0)}, {(1, 2)}) + [LinkSet("model", {(1, 1)})]
    path = plot_attention(attn, SRC, TGT, tmp_path / "a.png", dpi=40, alignment=al, kinds=BPE)
    h, w = matplotlib.image.imread(path).shape[:2]
    assert (w, h) == tuple(round(x * 40) for x in heatmap_figsize(3, 5))
    with pytest.raises(ValueError, match="outside"):
        plot_attention(attn, SRC, TGT, tmp_path / "b.png", alignment=[LinkSet("sure", {(5, 0)})],
                       kinds=BPE)


# --------------------------------------------------------------------------- the explorer


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="attendo-data">(.*?)</script>', html, re.S)
    assert m, "no inline data"
    return json.loads(m.group(1))


def test_explorer_record_holds_links_and_their_cells():
    attn = np.random.default_rng(1).dirichlet(np.ones(3), size=5)
    t = Translation("the little house", SRC, TGT, -1.0, -2.0, attn)
    al = gold_link_sets({(0, 0)}, {(0, 0), (1, 2)}) + [LinkSet("model", {(1, 1)}, "attention argmax")]
    rec = sentence_record("das Hauschen", t, alignment=al, kinds=BPE)
    assert rec["hyps"][0]["links"] == [
        {"kind": "sure", "label": "gold sure", "links": [[0, 0]], "cells": [[0, 0]]},
        {"kind": "possible", "label": "gold possible", "links": [[1, 2]],
         "cells": [[3, 1], [3, 2]]},
        {"kind": "model", "label": "attention argmax", "links": [[1, 1]],
         "cells": [[1, 1], [1, 2], [2, 1], [2, 2]]},
    ]
    merged = sentence_record("das Hauschen", t, merge=True, alignment=al, kinds=BPE)
    assert [x["cells"] for x in merged["hyps"][0]["links"]] == [[[0, 0]], [[2, 1]], [[1, 1]]]
    html = explorer_page({"sentences": [rec]})
    assert page_data(html)["sentences"][0]["hyps"][0]["links"] == rec["hyps"][0]["links"]
    assert 'id="show-links"' in html and "link-sure" in html  # the toggle and the styles
    # no attention in the record: nothing to draw the links on
    bare = Translation("the little house", SRC, TGT, -1.0, -2.0, None)
    assert "links" not in sentence_record("x", bare, alignment=al, kinds=BPE)["hyps"][0]


# --------------------------------------------------------------------------- attendo attend


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("overlay") / "model")


@pytest.fixture
def files(tmp_path):
    """Three sentences of the copy task, their targets and gold links (Pharaoh)."""
    src = tmp_path / "s.txt"
    src.write_text("a b c\nd e\nc a b d\n", encoding="utf-8")
    tgt = tmp_path / "t.txt"
    tgt.write_text("a b c\nd e\nc a b d\n", encoding="utf-8")
    gold = tmp_path / "g.txt"
    gold.write_text("0-0 1-1 2?2\n0-0 1-1\n0-0 1-1 2-2 3?3\n", encoding="utf-8")
    return src, tgt, gold


def test_attend_draws_gold_and_model_links_on_given_targets(model_dir, files, tmp_path, capsys):
    src, tgt, gold = files
    out, html = tmp_path / "pics", tmp_path / "ex.html"
    code = main(["attend", "--model", str(model_dir), "-i", str(src), "--tgt", str(tgt),
                 "--align-gold", str(gold), "--show-alignment", "argmax", "--out", str(out),
                 "--html", str(html), "--dpi", "30"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == [f"attention-00{i}.png" for i in range(3)]
    recs = page_data(html.read_text(encoding="utf-8"))["sentences"]
    assert [r["text"] for r in recs] == ["a b c", "d e", "c a b d"]  # the given targets
    first = recs[0]["hyps"][0]
    assert first["tgt_tokens"] == ["a", "b", "c", "</s>"]  # teacher-forced: target + </s>
    links = {x["kind"]: x for x in first["links"]}
    assert links["sure"]["cells"] == [[0, 0], [1, 1]]  # a word tokenizer: cell (j, i)
    assert links["possible"]["cells"] == [[2, 2]]
    model = links["model"]
    assert model["label"] == "attention argmax"
    assert len(model["links"]) == 3 and all(0 <= i < 3 and 0 <= j < 3 for i, j in model["links"])
    assert [x["kind"] for x in recs[1]["hyps"][0]["links"]][:1] == ["sure"]


def test_attend_show_alignment_on_the_models_own_translation(model_dir, tmp_path, capsys):
    html = tmp_path / "ex.html"
    assert main(["attend", "--model", str(model_dir), "a b c d", "--html", str(html),
                 "--show-alignment", "threshold", "--align-threshold", "0.2", "--beam", "2"]) == 0
    (rec,) = page_data(html.read_text(encoding="utf-8"))["sentences"]
    n_out = len(rec["text"].split())
    # each output piece's weights sum to 1 over 4 source pieces: one gets >= 0.25 > 0.2
    assert n_out and rec["hyps"][0]["links"]
    for x in rec["hyps"][0]["links"]:
        assert x["kind"] == "model" and x["label"] == "attention threshold"
        assert all(0 <= i < 4 and 0 <= j < n_out for i, j in x["links"])


def _attend_err(capsys, *args) -> tuple[int, str]:
    code = main(["attend", *map(str, args)])
    return code, capsys.readouterr().err


def test_attend_gold_errors_name_the_file_and_line(model_dir, files, tmp_path, capsys):
    src, tgt, gold = files
    base = ["--model", model_dir, "-i", src, "--out", tmp_path / "p"]
    short = tmp_path / "short.txt"
    short.write_text("0-0\n0-0\n", encoding="utf-8")
    code, err = _attend_err(capsys, *base, "--tgt", tgt, "--align-gold", short)
    assert code == 2 and f"{short}: 2 lines" in err and "3 input sentences" in err
    far = tmp_path / "far.txt"
    far.write_text("0-0\n0-0 1-2\n0-0\n", encoding="utf-8")  # "d e": target word 2 is past it
    code, err = _attend_err(capsys, *base, "--tgt", tgt, "--align-gold", far)
    assert code == 2 and f"{far}:2: link 1-2 is outside sentence 2" in err and "target 2" in err
    talp = tmp_path / "far.talp"
    talp.write_text("1-1\n1-1\n1-1 5p1\n", encoding="utf-8")  # 1-based: source word 5 of 4
    code, err = _attend_err(capsys, *base, "--tgt", tgt, "--align-gold", talp,
                            "--gold-format", "talp")
    assert code == 2 and f"{talp}:3: link 5p1 is outside sentence 3" in err and "1-based" in err
    bad = tmp_path / "bad.txt"
    bad.write_text("0-0\nx\n0-0\n", encoding="utf-8")
    code, err = _attend_err(capsys, *base, "--tgt", tgt, "--align-gold", bad)
    assert code == 2 and f"{bad}:2: bad link 'x'" in err
    # gold links name words of the reference: without --tgt there is none
    code, err = _attend_err(capsys, *base, "--align-gold", gold)
    assert code == 2 and "--tgt" in err
    code, err = _attend_err(capsys, *base, "--tgt", short)
    assert code == 2 and f"{short}: 2 lines" in err
    code, err = _attend_err(capsys, *base, "--tgt", tgt, "--beam", "2")
    assert code == 2 and "teacher-forced" in err
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- the server


@pytest.fixture
def client(model_dir):
    pytest.importorskip("fastapi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from attendo.server import create_app

    with TestClient(create_app(attendo.load(model_dir), max_wait_ms=2.0)) as c:
        yield c


def test_server_returns_alignment_only_when_asked(client):
    texts = ["a b c", "", "d e a b"]
    r = client.post("/translate", json={"text": texts, "beam": 2})
    assert r.status_code == 200 and all("alignment" not in x for x in r.json()["translations"])
    for method in ("argmax", "threshold", "shift"):
        r = client.post("/translate", json={"text": texts, "beam": 2, "alignment": True,
                                            "align_method": method})
        assert r.status_code == 200, r.text
        recs = r.json()["translations"]
        assert recs[1]["alignment"] == []  # empty in, no links
        for src, rec in zip(texts, recs):
            ns, nt = len(src.split()), len(rec["text"].split())
            assert all(0 <= i < ns and 0 <= j < nt for i, j in rec["alignment"])
            assert "attention" not in rec["hyps"][0]  # attention not asked for: not sent
        if method == "argmax":  # one link per output word with argmax
            assert all(len(x["alignment"]) == len(x["text"].split()) for x in recs)
    # with attention too, the best hypothesis carries the links for the page to draw
    r = client.post("/translate", json={"text": "a b c", "alignment": True,
                                        "return_attention": True})
    (rec,) = r.json()["translations"]
    assert rec["text"] and rec["alignment"]
    (links,) = rec["hyps"][0]["links"]
    assert links["kind"] == "model" and links["links"] == rec["alignment"]


@pytest.mark.parametrize("body, message", [
    ({"alignment": True, "align_method": "max"}, '"align_method" must be one of'),
    ({"alignment": True, "align_method": 1}, '"align_method" must be one of'),
    ({"alignment": "yes"}, '"alignment" must be true or false'),
    ({"align_method": "shift"}, '"alignment": true'),
])
def test_server_rejects_bad_alignment_options(client, body, message):
    r = client.post("/translate", json={"text": "a b", **body})
    assert r.status_code == 422 and message in r.json()["error"]
