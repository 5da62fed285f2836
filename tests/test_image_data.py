"""Tests for attendo.data.images: loading and refusing images, image lists, generated datasets."""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attendo.data.corpus import CorpusError
from attendo.data.images import (
    digit_pools,
    load_image,
    make_digits,
    make_textlines,
    read_image_tsv,
)
from attendo.errors import AttendoError, UsageError

SPLITS = ("train", "dev", "test")


def _png(path: Path, w: int, h: int, mode: str = "L", color=255) -> Path:
    Image.new(mode, (w, h), color).save(path)
    return path


def _rows(folder: Path, split: str) -> list[tuple[str, str, dict]]:
    """(image path, text, boxes line) of each image of a split."""
    tsv = (folder / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    boxes = (folder / f"{split}.boxes.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(tsv) == len(boxes)
    return [(*line.split("\t"), json.loads(b)) for line, b in zip(tsv, boxes)]


def _check_boxes(folder: Path) -> None:
    for split in SPLITS:
        for image, text, line in _rows(folder, split):
            w, h = Image.open(folder / image).size
            assert len(line["boxes"]) == len(text)
            for x0, y0, x1, y1 in line["boxes"]:
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


# --- load_image -------------------------------------------------------------------------


def test_load_image_shape_dtype_and_resize(tmp_path):
    img = Image.new("RGB", (40, 20), "white")
    img.putpixel((0, 0), (0, 0, 0))
    img.save(tmp_path / "a.png")
    a = load_image(tmp_path / "a.png", height=10)
    assert a.shape == (1, 10, 20) and a.dtype == np.uint8
    assert a[0, -1, -1] == 255 and a[0, 0, 0] < 255
    assert load_image(str(tmp_path / "a.png"), height=10, channels=3).shape == (3, 10, 20)
    assert load_image(tmp_path / "a.png", height=40, max_width=50).shape == (1, 40, 50)
    assert load_image(_png(tmp_path / "thin.png", 1, 30), height=10).shape == (1, 10, 1)
    # transparency is composited on white (not black)
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png", height=8) == 255).all()
    with pytest.raises(UsageError):
        load_image(tmp_path / "a.png", height=10, channels=2)


def _huge_header_png(path: Path, w: int, h: int) -> Path:
    """A PNG whose header claims w x h pixels, with no image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_load_image_refusals(tmp_path):
    def refused(path, match, **kw):
        with pytest.raises(CorpusError, match=match) as e:
            load_image(path, height=16, **kw)
        assert str(path) in str(e.value)

    refused(tmp_path / "missing.png", "file not found")
    refused(tmp_path, "is a directory")
    (tmp_path / "x.png").write_text("not a picture\n")
    refused(tmp_path / "x.png", "not an image")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "cut.png", "truncated")
    refused(_png(tmp_path / "big.png", 100, 100), "10000 pixels, more than the limit of 5000",
            max_pixels=5000)
    # the header is judged before any decoding: by our limit, and past Pillow's own bomb limit
    refused(_huge_header_png(tmp_path / "claims.png", 7000, 7000), "more than the limit")
    refused(_huge_header_png(tmp_path / "bomb.png", 100_000, 100_000), "decompression bomb")
    # Pillow's warning (past its own limit) is a refusal too, whatever max_pixels allows
    refused(_huge_header_png(tmp_path / "warns.png", 10_000, 10_000), "decompression bomb",
            max_pixels=10**9)


# --- read_image_tsv ---------------------------------------------------------------------


def test_read_image_tsv_and_jsonl(tmp_path):
    (tmp_path / "img").mkdir()
    _png(tmp_path / "img" / "a.png", 4, 4)
    _png(tmp_path / "b.JPG", 4, 4, "RGB")
    absolute = _png(tmp_path / "c.gif", 4, 4)
    lst = tmp_path / "list.tsv"
    lst.write_text(f"img/a.png\t a cat \nb.JPG\tdog\n{absolute}\tbird\n", encoding="utf-8")
    images, texts, report = read_image_tsv(lst)
    assert images == [str(tmp_path / "img" / "a.png"), str(tmp_path / "b.JPG"), str(absolute)]
    assert texts == ["a cat", "dog", "bird"] and (report.n_pairs, report.n_skipped) == (3, 0)
    jl = tmp_path / "list.jsonl"
    jl.write_text(json.dumps({"image": "img/a.png", "text": "ein Hund"}) + "\n", encoding="utf-8")
    assert read_image_tsv(jl)[:2] == ([str(tmp_path / "img" / "a.png")], ["ein Hund"])


@pytest.mark.parametrize("line, match", [
    ("a.png", "found 1 tab-separated columns"),
    ("a.png\tx\ty", "found 3 tab-separated columns"),
    ("a.png\t  ", "empty text"),
    ("missing.png\tx", "not found"),
    ("notes.txt\tx", "does not end in an image extension"),
    ("a.png\tbad\x1bline", "control character U\\+001B"),
])
def test_read_image_tsv_errors(tmp_path, line, match):
    _png(tmp_path / "a.png", 4, 4)
    (tmp_path / "notes.txt").write_text("hi")
    lst = tmp_path / "l.tsv"
    lst.write_text(f"a.png\tgood\n{line}\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=match) as e:
        read_image_tsv(lst)
    assert str(e.value).startswith(f"{lst}:2: ")
    images, texts, report = read_image_tsv(lst, skip_bad=True)
    assert texts == ["good"] and (report.n_pairs, report.n_skipped) == (1, 1)
    assert report.problems[0].startswith(f"{lst}:2: ")


@pytest.mark.parametrize("line, match", [
    ('{"image": "a.png", "text": ', "invalid JSON"),
    ('{"image": "a.png"}', 'strings "image" and "text"'),
    ('["a.png", "x"]', 'strings "image" and "text"'),
    ('{"image": "a.png", "text": "x\\u0000y"}', "control character U\\+0000"),
])
def test_read_image_jsonl_errors(tmp_path, line, match):
    _png(tmp_path / "a.png", 4, 4)
    lst = tmp_path / "l.jsonl"
    lst.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=match) as e:
        read_image_tsv(lst)
    assert str(e.value).startswith(f"{lst}:1: ")
    with pytest.raises(CorpusError, match="no usable line: all 1 lines were skipped"):
        read_image_tsv(lst, skip_bad=True)


def test_read_image_tsv_empty_file(tmp_path):
    (tmp_path / "e.tsv").write_bytes(b"")
    with pytest.raises(CorpusError, match="empty file"):
        read_image_tsv(tmp_path / "e.tsv")
    with pytest.raises(CorpusError, match="file not found"):
        read_image_tsv(tmp_path / "none.tsv")


# --- make_digits ------------------------------------------------------------------------


def test_digit_pools_disjoint():
    pools = digit_pools(0)
    sets = {k: set(v.tolist()) for k, v in pools.items()}
    assert sum(map(len, sets.values())) == 1797 and set.union(*sets.values()) == set(range(1797))
    assert not (sets["train"] & sets["dev"] or sets["train"] & sets["test"]
                or sets["dev"] & sets["test"])
    assert len(sets["test"]) == 180 and set(digit_pools(1)["test"]) != sets["test"]


def test_make_digits(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    labels = load_digits().target
    out = tmp_path / "digits"
    manifest = make_digits(out, 20, 5, 5, seed=3, min_len=2, max_len=5)
    assert manifest["counts"] == {"train": 20, "dev": 5, "test": 5}
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert "CC BY 4.0" in manifest["source"]["data"] and manifest["arguments"]["max_len"] == 5
    pools = {k: set(v.tolist()) for k, v in digit_pools(3).items()}
    for split in SPLITS:
        rows = _rows(out, split)
        assert len(rows) == manifest["counts"][split]
        for image, text, line in rows:
            assert image.startswith(f"images/{split}/") and 2 <= len(text) <= 5
            assert set(line["glyphs"]) <= pools[split]  # no glyph from another split's pool
            assert text == "".join(str(labels[g]) for g in line["glyphs"])
            a = load_image(out / image, height=16)
            assert a.shape[1] == 16 and a.mean() > 128  # dark ink on white
    _check_boxes(out)
    assert not list(tmp_path.glob("digits.*"))  # no temporary folder left


def test_make_digits_test_lengths_beyond_the_trained_ones(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "digits"
    make_digits(out, 12, 4, 40, seed=1, min_len=3, max_len=4, test_lengths=[2, 9])
    assert {len(t) for _, t, _ in _rows(out, "train") + _rows(out, "dev")} <= {3, 4}
    assert {len(t) for _, t, _ in _rows(out, "test")} == {2, 9}  # 40 draws from two lengths
    _check_boxes(out)
    with pytest.raises(UsageError, match="test_lengths"):
        make_digits(tmp_path / "bad", 4, 2, 2, test_lengths=[0])


def test_make_digits_deterministic_and_replaces_only_its_own(tmp_path):
    pytest.importorskip("sklearn")
    make_digits(tmp_path / "a", 6, 2, 2, seed=5, max_len=4)
    make_digits(tmp_path / "b", 6, 2, 2, seed=5, max_len=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    make_digits(tmp_path / "b", 6, 2, 2, seed=6, max_len=4)  # replaces the folder it made
    assert (tmp_path / "b" / "train.tsv").read_bytes() != (tmp_path / "a" / "train.tsv").read_bytes()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a dataset folder made by attendo"):
        make_digits(tmp_path / "mine", 6, 2, 2)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(UsageError):
        make_digits(tmp_path / "c", 6, 2, 2, min_len=5, max_len=4)


def test_make_digits_without_sklearn(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    with pytest.raises(AttendoError, match=r"pip install 'attendo\[images\]'"):
        make_digits(tmp_path / "d", 2, 1, 1)
    assert not list(tmp_path.iterdir())


# --- make_textlines ---------------------------------------------------------------------


@pytest.fixture
def text_file(tmp_path) -> Path:
    words = "a man woman dog runs on the green grass with red ball near two children".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, 8)).capitalize() + "." for _ in range(30)]
    path = tmp_path / "text.en"
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def _textlines(out: Path, text_file: Path, **kw) -> dict:
    try:
        return make_textlines(out, text_file, 6, 3, 4, height=24, max_chars=30, **kw)
    except Exception as e:  # only for a machine without any font
        if "font families with a glyph" in str(e):
            pytest.skip(str(e))
        raise


def test_make_textlines_held_out_font_and_boxes(tmp_path, text_file):
    out = tmp_path / "lines"
    manifest = _textlines(out, text_file)
    src = manifest["source"]
    held = set(src["held_out_fonts"])
    assert held and not held & set(src["fonts"]["train"]) and not held & set(src["fonts"]["dev"])
    assert src["lines"] == 31 and src["sentences"]["test"] == 4
    used = {s: [line["font"] for _, _, line in _rows(out, s)] for s in SPLITS}
    assert not held & set(used["train"] + used["dev"])
    assert held & set(used["test"]) and set(used["test"]) - held  # both kinds in the test split
    texts = {s: {t for _, t, _ in _rows(out, s)} for s in SPLITS}
    assert not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]
    for s in SPLITS:
        for image, text, _ in _rows(out, s):
            assert len(text) <= 30 and Image.open(out / image).size[1] == 24
    _check_boxes(out)


def test_make_textlines_deterministic(tmp_path, text_file):
    _textlines(tmp_path / "a", text_file, seed=1)
    _textlines(tmp_path / "b", text_file, seed=1)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    with pytest.raises(UsageError, match="not a usable font"):
        _textlines(tmp_path / "c", text_file, held_out_font="No Such Font")


def test_make_textlines_few_sentences_stay_disjoint(tmp_path):
    path = tmp_path / "five.txt"
    path.write_text("one red dog\ntwo red dogs\nthree blue cats\nfour green birds\n"
                    "five  small   fish\none red dog\n", encoding="utf-8")
    out = tmp_path / "few"
    manifest = _textlines(out, path)  # 13 images from 5 distinct sentences
    assert manifest["source"]["sentences"] == {"train": 3, "dev": 1, "test": 1}
    texts = {s: [t for _, t, _ in _rows(out, s)] for s in SPLITS}
    assert len(texts["train"]) == 6 and len(set(texts["train"])) == 3
    assert not set(texts["test"]) & set(texts["train"] + texts["dev"])
    assert "five small fish" in {t for ts in texts.values() for t in ts}
