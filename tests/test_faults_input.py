"""Fault suite for input: malformed corpora (read directly and through the CLI), a fuzz test of
corpus reading, and command-line edge cases (paths that are directories, impossible numbers).

Every failure must be one line ``attendo CMD: error: ...`` with exit code 2 that names the file
(and the line, where there is one); where acceptance is right (CRLF, no final newline, a BOM),
the content read must be exactly the clean text.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import toy_raw, train_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attendo
from attendo.cli import main
from attendo.config import ConfigError, DecodeConfig, ModelConfig, TrainConfig, config_from_dict
from attendo.data.corpus import (
    CorpusError,
    TextError,
    clean_text,
    clean_texts,
    read_lines,
    read_parallel,
)
from attendo.search import beam_search

REPO = Path(__file__).resolve().parents[1]
BOM = b"\xef\xbb\xbf"


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def only_error_line(err: str, command: str) -> str:
    """The one 'attendo CMD: error: ...' line of stderr (logging may print INFO lines first)."""
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith(f"attendo {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- malformed corpora

GOOD_SRC = "a b c\nd e\nb c a\n"
GOOD_TGT = "c b a\ne d\na c b\n"

# name -> (source bytes, target bytes or None for a TSV source, expectation). An expectation is
# ("error", which file ("src" or "tgt"), line or None, text the message must hold) or
# ("ok", source lines, target lines).
_TRUNC_GZ = gzip.compress(("a b c\n" * 2000).encode())
CORPORA = {
    "line_count_mismatch": (
        b"a b\nc d\ne f\n", b"b a\nd c\n", ("error", "src", None, "has 3 lines but"),
    ),
    "invalid_utf8": (b"a b\nc \xff d\n", b"b a\nd c\n", ("error", "src", 2, "invalid UTF-8")),
    "invalid_utf8_target": (b"a b\nc d\n", b"b a\n\xc3\n", ("error", "tgt", 2, "invalid UTF-8")),
    "bom": (
        BOM + b"ein Hund\nzwei\n", BOM + b"a dog\ntwo\n",
        ("ok", ["ein Hund", "zwei"], ["a dog", "two"]),
    ),
    "bom_on_a_later_line": (  # files concatenated with cat keep their BOMs
        b"eins\n" + BOM + b"zwei\n", b"one\ntwo\n", ("ok", ["eins", "zwei"], ["one", "two"]),
    ),
    "crlf": (b"a b\r\nc d\r\n", b"b a\r\nd c\r\n", ("ok", ["a b", "c d"], ["b a", "d c"])),
    "no_final_newline": (b"a b\nc d", b"b a\nd c", ("ok", ["a b", "c d"], ["b a", "d c"])),
    "nul_byte": (
        "a b\nHund\x00läuft\n".encode(), b"x\ny\n", ("error", "src", 2, "control character U+0000"),
    ),
    "escape_in_target": (b"a\nb\n", b"x\n\x1b[31my\n", ("error", "tgt", 2, "U+001B")),
    "lone_carriage_return": (b"a\rb\nc\n", b"x\ny\n", ("error", "src", 1, "U+000D")),
    "next_line_c1": ("a\nb\u0085c\n".encode(), b"x\ny\n", ("error", "src", 2, "U+0085")),
    "bidi_override": (
        "a\nab\u202ecd\n".encode(), b"x\ny\n",
        ("error", "src", 2, "control character U+202E (right-to-left override) at character 3"),
    ),
    "empty_file": (b"", b"", ("error", "src", None, "empty file")),
    "bom_only_file": (BOM, BOM, ("error", "src", None, "empty file")),
    "empty_line": (b"a\n\nc\n", b"x\ny\nz\n", ("error", "src", 2, "empty source line")),
    "huge_line": (
        b"a b\n" + b"x " * 4000 + b"\n", b"b a\ny\n", ("error", "src", 2, "more than the limit"),
    ),
    "truncated_gzip": (
        _TRUNC_GZ[: len(_TRUNC_GZ) // 2], gzip.compress(("c b a\n" * 2000).encode()),
        ("error", "src", "any", "corrupt or truncated gzip"),
    ),
    "tsv_wrong_field_count": (
        b"a b\tb a\nc d e\nf\tg\th\n", None, ("error", "src", 2, "tab-separated columns"),
    ),
    "tsv_bom_crlf": (BOM + b"a b\tb a\r\nc\td\r\n", None, ("ok", ["a b", "c"], ["b a", "d"])),
    "tsv_nul": (b"a\tb\nc\x00\td\n", None, ("error", "src", 2, "U+0000")),
}


def _files(tmp_path: Path, name: str) -> tuple[Path, Path | None, tuple]:
    src_bytes, tgt_bytes, expect = CORPORA[name]
    gz = name == "truncated_gzip"
    src = write(tmp_path / (f"{name}.src" + (".gz" if gz else "")), src_bytes)
    tgt = None
    if tgt_bytes is not None:
        tgt = write(tmp_path / (f"{name}.tgt" + (".gz" if gz else "")), tgt_bytes)
    return src, tgt, expect


def _location(expect: tuple, src: Path, tgt: Path | None) -> str:
    """The 'path:line:' (or 'path:') prefix the message must start with."""
    _, which, line, _ = expect
    path = src if which == "src" else tgt
    if line is None:
        return f"{path}: "
    if line == "any":
        return f"{path}:"
    return f"{path}:{line}: "


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_malformed_corpus_read_parallel(tmp_path, name):
    src, tgt, expect = _files(tmp_path, name)
    if expect[0] == "ok":
        s, t, report = read_parallel(src, tgt)
        assert (s, t) == (expect[1], expect[2])
        assert report.n_pairs == len(s) and report.n_skipped == 0
        return
    with pytest.raises(CorpusError) as info:
        read_parallel(src, tgt)
    msg = str(info.value)
    assert msg.startswith(_location(expect, src, tgt)), msg
    assert expect[3] in msg
    if name == "line_count_mismatch":  # both files and both counts
        assert f"{tgt} has 2 lines" in msg


def _train_config(tmp_path: Path, src: Path, tgt: Path | None, **data) -> Path:
    """A tiny word-level config training on src/tgt for one step."""
    raw = toy_raw(tmp_path / "run")
    raw["data"].update(toy="", train_src=str(src), train_tgt=str(tgt or ""), vocab_size=50, **data)
    raw["model"].update(emb_dim=8, enc_hidden=8, dec_hidden=8)
    raw["train"].update(max_steps=1, valid_every=1, log_every=1, valid_bleu=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(n for n, c in CORPORA.items() if c[2][0] == "error"))
def test_malformed_corpus_cli_train(tmp_path, capsys, name):
    src, tgt, expect = _files(tmp_path, name)
    assert main(["train", str(_train_config(tmp_path, src, tgt))]) == 2
    line = only_error_line(capsys.readouterr().err, "train")
    assert f"attendo train: error: {_location(expect, src, tgt)}" in line
    assert expect[3] in line


def test_empty_valid_file_names_it(tmp_path, capsys):
    src = write(tmp_path / "train.src", GOOD_SRC)
    tgt = write(tmp_path / "train.tgt", GOOD_TGT)
    vs, vt = write(tmp_path / "valid.src", b""), write(tmp_path / "valid.tgt", b"")
    cfg = _train_config(tmp_path, src, tgt, valid_src=str(vs), valid_tgt=str(vt))
    assert main(["train", str(cfg)]) == 2
    line = only_error_line(capsys.readouterr().err, "train")
    assert f"{vs}: empty file, expected one sentence per line" in line


def test_control_characters_are_skipped_with_skip_bad_lines(tmp_path):
    src = write(tmp_path / "s", "a b\nHund\x00läuft\nc\x0cd\ne f\n")
    tgt = write(tmp_path / "t", "b a\ndog runs\nd c\nf e\n")
    s, t, report = read_parallel(src, tgt, skip_bad=True)
    assert (s, t) == (["a b", "e f"], ["b a", "f e"])
    assert report.n_skipped == 2
    assert report.problems[0].startswith(f"{src}:2: control character U+0000")
    assert report.problems[1].startswith(f"{src}:3: control character U+000C")


def test_all_lines_skipped_names_the_file(tmp_path, capsys):
    src = write(tmp_path / "s", "\x00\n\n")
    tgt = write(tmp_path / "t", "x\ny\n")
    cfg = _train_config(tmp_path, src, tgt, skip_bad_lines=True)
    assert main(["train", str(cfg)]) == 2
    line = only_error_line(capsys.readouterr().err, "train")
    assert f"{src}: " in line and "all 2 lines" in line


def test_tab_inside_a_plain_line_is_whitespace(tmp_path):
    """Tab is the one control character accepted (a TSV's separator; whitespace elsewhere)."""
    s, t, _ = read_parallel(write(tmp_path / "s", "a\tb\n"), write(tmp_path / "t", "\tc\t\n"))
    assert (s, t) == (["a\tb"], ["c"])


def test_bom_does_not_reach_the_vocabulary(tmp_path):
    from attendo.config import DataConfig
    from attendo.data.prepare import build_codecs, load_corpora

    src = write(tmp_path / "s", BOM + b"ein Hund\nein Mann\n")
    tgt = write(tmp_path / "t", BOM + b"a dog\na man\n")
    cfg = DataConfig(train_src=str(src), train_tgt=str(tgt), tokenizer="word", vocab_size=50)
    train, _, _ = load_corpora(cfg)
    codec, _ = build_codecs(cfg, train)
    assert "ein" in codec.vocab.itos and not any("\ufeff" in p for p in codec.vocab.itos)


# --------------------------------------------------------------------------- decoding input


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("faults") / "model")


def _translate(model: Path, tmp_path: Path, data: bytes, capsys) -> list[str]:
    inp = write(tmp_path / "in.txt", data)
    assert main(["translate", "--model", str(model), "--beam", "1", "-i", str(inp)]) == 0
    return capsys.readouterr().out.split("\n")


def test_translate_file_bom_crlf_no_final_newline(tiny_model, tmp_path, capsys):
    clean = _translate(tiny_model, tmp_path, b"a b c\nd e\n", capsys)
    assert _translate(tiny_model, tmp_path, BOM + b"a b c\r\nd e", capsys) == clean
    assert read_lines(write(tmp_path / "x", BOM + b"a b c\r\nd e")) == ["a b c", "d e"]


def test_translate_stdin_bom_on_each_line(tiny_model, monkeypatch, capsys):
    def run(data: bytes) -> str:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
        assert main(["translate", "--model", str(tiny_model), "--beam", "1"]) == 0
        return capsys.readouterr().out

    assert run(BOM + b"a b c\n" + BOM + b"d e\n") == run(b"a b c\nd e\n")
    from attendo.cli import read_input

    data = BOM + b"a b c\r\n" + BOM + b"d e"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    assert read_input(None) == ["a b c", "d e"]


@pytest.mark.parametrize("where", ["file", "stdin"])
def test_translate_control_character_names_input_and_line(
    tiny_model, tmp_path, monkeypatch, capsys, where
):
    data = "a b\nHund\x00läuft\n".encode()
    if where == "file":
        args = ["-i", str(write(tmp_path / "in.txt", data))]
        name = str(tmp_path / "in.txt")
    else:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
        args, name = [], "<stdin>"
    assert main(["translate", "--model", str(tiny_model), *args]) == 2
    line = only_error_line(capsys.readouterr().err, "translate")
    assert f"{name}:2: control character U+0000" in line


def test_evaluate_empty_line_message_fits_evaluate(tiny_model, tmp_path, capsys):
    src = write(tmp_path / "s", "a b\n\nc d\n")
    ref = write(tmp_path / "r", "a b\nx\nc d\n")
    assert main(["evaluate", "--model", str(tiny_model), "--src", str(src), "--ref", str(ref)]) == 2
    line = only_error_line(capsys.readouterr().err, "evaluate")
    assert f"{src}:2: empty source line" in line
    assert "skip_bad_lines" not in line and "--src" in line and "--ref" in line


def test_evaluate_empty_files(tiny_model, tmp_path, capsys):
    src, ref = write(tmp_path / "s", b""), write(tmp_path / "r", b"")
    assert main(["evaluate", "--model", str(tiny_model), "--src", str(src), "--ref", str(ref)]) == 2
    line = only_error_line(capsys.readouterr().err, "evaluate")
    assert f"{src}: empty file" in line


def test_evaluate_texts_refuses_nothing(tiny_model):
    from attendo.evaluate import evaluate_texts
    from attendo.translator import Translator

    with pytest.raises(ValueError, match="no sentences"):
        evaluate_texts(Translator.from_dir(tiny_model), [], [])


# --------------------------------------------------------------------------- one rule for text

# each class of character the rule refuses: C0 (not tab), DEL, C1, bidi embeddings, overrides
# and isolates
CONTROL_CHARS = {
    "NUL": "\x00", "BEL": "\x07", "ESC": "\x1b", "DEL": "\x7f", "NEL (C1)": "\x85",
    "CSI (C1)": "\x9b", "LRE": "\u202a", "RLO": "\u202e", "LRI": "\u2066", "PDI": "\u2069",
}


@pytest.fixture(scope="module")
def char_model(tmp_path_factory) -> Path:
    """A model whose every input character is a piece: a BOM or a space would reach it."""
    return train_tiny(tmp_path_factory.mktemp("faults") / "char", tokenizer="char")


@pytest.fixture(scope="module")
def char_translator(char_model):
    return attendo.load(char_model)


@pytest.mark.parametrize("name", sorted(CONTROL_CHARS))
def test_clean_text_names_the_character_and_its_position(name):
    c = CONTROL_CHARS[name]
    with pytest.raises(TextError) as info:
        clean_text(f"ab{c}d")
    e = info.value
    assert isinstance(e, ValueError) and e.index == 2 and e.char == c
    assert str(e).startswith(f"control character U+{ord(c):04X}") and "at character 3" in str(e)


def test_clean_text_keeps_text_and_drops_what_is_around_it():
    assert clean_text("\ufeffa b") == "a b"  # a BOM at the start
    assert clean_text(" \ta\u00a0b\ufeff ") == "a\u00a0b"
    assert clean_text("a\ufeffb") == "a\ufeffb"  # inside: a zero-width no-break space
    assert clean_text("a\tb") == "a\tb"  # tab is the one control character allowed
    assert clean_text(" \t \u3000 \ufeff") == ""  # whitespace only
    with pytest.raises(TextError, match="U\\+000A \\(line feed\\) at character 2"):
        clean_text("a\nb")  # one sentence per text
    with pytest.raises(TextError, match="character 2 is U\\+D800, a lone surrogate"):
        clean_text("a\ud800")
    with pytest.raises(TypeError, match="wrap it in a list"):
        clean_texts("a b")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\]: expected text as a str, got int"):
        clean_texts(["a", 3])  # type: ignore[list-item]


@pytest.mark.parametrize("name", sorted(CONTROL_CHARS))
def test_translate_api_refuses_control_characters(char_translator, name):
    c = CONTROL_CHARS[name]
    with pytest.raises(TextError) as info:
        char_translator.translate(["a b", f"a{c}b"], beam=1)
    assert str(info.value).startswith(f"texts[1]: control character U+{ord(c):04X}")
    assert "at character 2" in str(info.value) and info.value.index == 1


def test_translate_api_drops_a_bom(char_translator):
    plain, marked = char_translator.translate(["a b c", "\ufeffa b c"], beam=1)
    assert marked.src_tokens == plain.src_tokens and marked.text == plain.text


def test_whitespace_only_translates_to_nothing_in_api_and_cli(char_model, char_translator,
                                                             monkeypatch, capsys):
    for t in char_translator.translate([" ", "\t \u00a0", "\ufeff  "], beam=2, n_best=2):
        assert (t.text, t.src_tokens) == ("", [])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a b\n \t \n"),
                                                       encoding="utf-8"))
    assert main(["translate", "--model", str(char_model), "--beam", "1"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[1:] == ["", ""] and lines[0]  # the blank line's translation is empty


@pytest.mark.parametrize("name", sorted(CONTROL_CHARS))
def test_translate_cli_stdin_names_line_and_character(tiny_model, monkeypatch, capsys, name):
    c = CONTROL_CHARS[name]
    data = f"a b\nx{c}y\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    assert main(["translate", "--model", str(tiny_model)]) == 2
    line = only_error_line(capsys.readouterr().err, "translate")
    assert f"<stdin>:2: control character U+{ord(c):04X}" in line and "at character 2" in line


def test_attend_sentence_argument_with_a_control_character(tiny_model, tmp_path, capsys):
    rc = main(["attend", "--model", str(tiny_model), "--out", str(tmp_path / "pics"), "a b",
               "c\u202ed"])
    assert rc == 2
    line = only_error_line(capsys.readouterr().err, "attend")
    assert "sentence argument 2: control character U+202E (right-to-left override) at " \
           "character 2" in line
    assert not (tmp_path / "pics").exists()


def test_align_api_checks_both_sides(char_translator):
    from attendo.align import align_pairs, forced_attention

    with pytest.raises(TextError, match=r"^tgt\[1\]: control character U\+001B"):
        align_pairs(char_translator, ["a b", "a b"], ["b a", "b\x1ba"])
    with pytest.raises(TextError, match=r"^src\[0\]: control character U\+2066"):
        forced_attention(char_translator, ["\u2066a"], ["a"])
    # a BOM is dropped on both sides: the same pieces and weights as without
    (sp, tp, a), (sp2, tp2, a2) = forced_attention(
        char_translator, ["a b", "\ufeffa b "], ["b a", " b a\ufeff"])
    assert (sp, tp) == (sp2, tp2) and np.allclose(a, a2, atol=1e-6)  # rows of one batch


# --------------------------------------------------------------------------- paths (item 10)


def test_train_on_a_directory_config(tmp_path, capsys):
    assert main(["train", str(tmp_path)]) == 2
    line = only_error_line(capsys.readouterr().err, "train")
    assert f"{tmp_path}: is a directory" in line


def test_train_on_a_binary_config_names_it(tmp_path, capsys):
    cfg = write(tmp_path / "c.yaml", b"data:\n  toy: \xff\n")
    assert main(["train", str(cfg)]) == 2
    assert str(cfg) in only_error_line(capsys.readouterr().err, "train")


def test_train_on_a_directory_config_in_a_subprocess(tmp_path):
    """The same, end to end: one line on stderr, exit 2, no traceback."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "attendo", "train", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"attendo train: error: {tmp_path}: is a directory, expected a YAML config file"
    ]


@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_output_is_a_directory(tiny_model, tmp_path, capsys, command):
    src = write(tmp_path / "s", "a b\n")
    out = tmp_path / "out"
    out.mkdir()
    args = ["-i", str(src)] if command == "translate" else ["--src", str(src), "--ref", str(src)]
    assert main([command, "--model", str(tiny_model), *args, "-o", str(out)]) == 2
    line = only_error_line(capsys.readouterr().err, command)
    assert f"{out}: is a directory" in line


@pytest.mark.parametrize(
    "exc, shown",
    [
        (PermissionError(13, "Permission denied", "/data/x.txt"), "/data/x.txt: Permission denied"),
        (IsADirectoryError(21, "Is a directory", "/data/d"), "/data/d: Is a directory"),
        (OSError(5, "Input/output error"), "Input/output error"),
    ],
)
def test_main_reports_os_errors_in_one_line(monkeypatch, capsys, exc, shown):
    import attendo.cli as cli

    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_data", fail)
    assert main(["data", "multi30k", "--out", "x"]) == 2
    assert shown in only_error_line(capsys.readouterr().err, "data")


def test_main_reports_user_errors_in_one_line_and_lets_bugs_raise(monkeypatch, capsys):
    """A user error (AttendoError) is one line with exit code 2; a plain ValueError is a bug
    in attendo and keeps its traceback (it used to be reported as if the user had erred)."""
    import attendo.cli as cli
    from attendo.errors import AttendoError, UsageError

    def fail(exc):
        def run(args):
            raise exc
        return run

    monkeypatch.setattr(cli, "cmd_data", fail(UsageError("--x must be >= 1, got 0")))
    assert main(["data", "multi30k", "--out", "x"]) == 2
    assert only_error_line(capsys.readouterr().err, "data").endswith("--x must be >= 1, got 0")
    monkeypatch.setattr(cli, "cmd_data", fail(ValueError("internal")))
    with pytest.raises(ValueError, match="internal"):
        main(["data", "multi30k", "--out", "x"])
    assert issubclass(UsageError, ValueError) and issubclass(cli.CLIError, AttendoError)


@pytest.mark.parametrize("override, shown", [
    ("data.max_len=1", "no training pairs left after the length filters (data.max_len)"),
    ("train.precision=fp16", "train.precision: fp16 needs a CUDA device"),
    ("data.tokenizer=bpe", "bpe vocab_size=5 is too small"),
])
def test_user_errors_raised_as_value_errors_stay_one_line(tmp_path, capsys, override, shown):
    """Errors a config can cause deep in training were ValueErrors that main reported only
    because it took every ValueError for a user error; they are user errors now."""
    import torch

    if override == "train.precision=fp16" and torch.cuda.is_available():
        pytest.skip("fp16 runs where there is CUDA")
    raw = toy_raw(tmp_path / "run")
    raw["data"].update(toy="copy", toy_train_size=100, toy_valid_size=8, toy_test_size=8,
                       toy_max_len=5, vocab_size=5)
    raw["train"].update(max_steps=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(tmp_path / "c.yaml"), override]) == 2
    assert shown in only_error_line(capsys.readouterr().err, "train")
    assert main(["data", "multi30k", "--out", str(tmp_path / "m"), "--langs", "xx"]) == 2
    assert "unknown Multi30k language(s) ['xx']" in only_error_line(capsys.readouterr().err,
                                                                    "data")


def test_every_user_error_type_is_an_attendo_error():
    from attendo.checkpoint import ModelFileError
    from attendo.config import ConfigError
    from attendo.data.binarized import StalePreparation
    from attendo.data.corpus import CorpusError, TextError
    from attendo.data.download import DownloadError
    from attendo.diagnostics import AlignmentFileError
    from attendo.errors import AttendoError
    from attendo.export import ExportError
    from attendo.study import StudyError
    from attendo.train.divergence import TrainingDiverged
    from attendo.utils import DirectoryBusy

    for cls in (ModelFileError, ConfigError, StalePreparation, CorpusError, TextError,
                AlignmentFileError, TrainingDiverged, ExportError, StudyError):
        assert issubclass(cls, AttendoError) and issubclass(cls, ValueError), cls
    assert issubclass(DownloadError, AttendoError) and issubclass(DownloadError, OSError)
    assert issubclass(DirectoryBusy, AttendoError) and issubclass(DirectoryBusy, RuntimeError)


# --------------------------------------------------------------------------- numbers (item 11)


@pytest.mark.parametrize(
    "override, key",
    [
        ("decode.length_penalty=-1", "decode.length_penalty"),
        ("decode.length_penalty=.inf", "decode.length_penalty"),
        ("decode.length_penalty=nan", "decode.length_penalty"),
        ("decode.coverage_penalty=nan", "decode.coverage_penalty"),
        ("decode.max_len_ratio=.inf", "decode.max_len_ratio"),
        ("train.lr=nan", "train.lr"),
        ("train.lr=inf", "train.lr"),
        ("train.lr=-1", "train.lr"),
        ("train.betas=[.nan, 0.999]", "train.betas"),
        ("model.dropout=nan", "model.dropout"),
        ("train.label_smoothing=nan", "train.label_smoothing"),
        ("train.clip_norm=nan", "train.clip_norm"),
        ("train.clip_norm=-1", "train.clip_norm"),
        ("train.weight_decay=-0.1", "train.weight_decay"),
        ("train.min_lr=-1", "train.min_lr"),
        ("train.max_minutes=inf", "train.max_minutes"),
        ("train.coverage_loss=nan", "train.coverage_loss"),
        ("data.max_ratio=nan", "data.max_ratio"),
    ],
)
def test_impossible_numbers_name_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(toy_raw(tmp_path), [override])
    assert str(info.value).startswith(key), str(info.value)


def test_dataclass_validation_checks_finiteness_too():
    """Built without YAML (the Python API), the same checks apply."""
    with pytest.raises(ConfigError, match=r"^train\.lr: "):
        TrainConfig(lr=math.nan).validate()
    with pytest.raises(ConfigError, match=r"^decode\.length_penalty: "):
        DecodeConfig(length_penalty=-0.5).validate()
    with pytest.raises(ConfigError, match=r"^model\.dropout: "):
        ModelConfig(dropout=math.nan).validate()


def test_beam_search_rejects_a_negative_alpha():
    with pytest.raises(ValueError, match="length penalty"):
        beam_search(None, None, 1, 1, 2, 5, beam_size=2, alpha=-1.0)


@pytest.mark.parametrize(
    "flags, shown",
    [
        (["--length-penalty", "-1"], "--length-penalty"),
        (["--length-penalty", "nan"], "--length-penalty"),
        (["--batch-size", "0"], "--batch-size"),
        (["--beam", "0"], "--beam"),
        (["--n-best", "0"], "--n-best"),
        (["--beam", "2", "--n-best", "3"], "--n-best"),
        (["decode.length_penalty=-1"], "decode.length_penalty"),
    ],
)
def test_translate_flags_are_checked(tiny_model, tmp_path, capsys, flags, shown):
    src = write(tmp_path / "s", "a b\n")
    assert main(["translate", "--model", str(tiny_model), "-i", str(src), *flags]) == 2
    assert shown in only_error_line(capsys.readouterr().err, "translate")


def test_evaluate_flags_are_checked(tiny_model, tmp_path, capsys):
    src = write(tmp_path / "s", "a b\n")
    for flags, shown in ((["--batch-size", "0"], "--batch-size"),
                         (["--length-penalty", "-1"], "--length-penalty")):
        rc = main(["evaluate", "--model", str(tiny_model), "--src", str(src), "--ref", str(src),
                   *flags])
        assert rc == 2
        assert shown in only_error_line(capsys.readouterr().err, "evaluate")


# --------------------------------------------------------------------------- fuzzing


_PIECES = [
    b"\n", b"\r\n", b"\r", b"\t", b" ", BOM, b"\x00", b"\x1b", b"\x0b", b"\xff", b"\xc3",
    "\u0085".encode(), "\u2028".encode(), "\ufeff".encode(), b"a", b"b c", "\u00e9".encode(),
    "\u00a0".encode(), "\u202e".encode(), "\u2069".encode(),
]
_content = st.lists(
    st.one_of(st.sampled_from(_PIECES), st.binary(max_size=6)), max_size=24
).map(b"".join)


def _maybe_gzip(data: bytes, how: str) -> bytes:
    if how == "plain":
        return data
    packed = gzip.compress(data)
    return packed if how == "gzip" else packed[: max(2, len(packed) - 5)]


def _lines_of(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _clean(text: str, allow_tab: bool) -> bool:
    return (
        bool(text)
        and text == text.strip()
        and not text.startswith("\ufeff")
        and all(unicodedata.category(c) != "Cc" or (allow_tab and c == "\t") for c in text)
        and not any("\u202a" <= c <= "\u202e" or "\u2066" <= c <= "\u2069" for c in text)
    )


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    src_data=_content, tgt_data=_content, tsv=st.booleans(), skip_bad=st.booleans(),
    max_chars=st.sampled_from([3, 20, 5000]),
    how=st.sampled_from(["plain", "plain", "gzip", "truncated"]),
)
def test_read_parallel_fuzz(tmp_path, src_data, tgt_data, tsv, skip_bad, max_chars, how):
    src = write(tmp_path / "fuzz.src", _maybe_gzip(src_data, how))
    tgt = None if tsv else write(tmp_path / "fuzz.tgt", _maybe_gzip(tgt_data, how))
    try:
        s, t, report = read_parallel(src, tgt, skip_bad=skip_bad, max_chars=max_chars)
    except CorpusError as e:
        msg = str(e)
        assert msg.startswith(f"{src}:") or (tgt is not None and msg.startswith(f"{tgt}:")), msg
        assert e.path in (str(src), str(tgt))
        return
    assert how != "truncated"  # truncated gzip data never reads as good
    assert len(s) == len(t) == report.n_pairs
    assert report.n_pairs + report.n_skipped >= 1  # an empty file is an error
    if how == "plain":
        assert report.n_pairs + report.n_skipped == _lines_of(src_data)
    if not skip_bad:  # (with skip_bad all may be skipped: load_corpora then names the file)
        assert report.n_skipped == 0 and report.n_pairs >= 1
    for x in s + t:
        assert isinstance(x, str) and _clean(x, allow_tab=not tsv) and len(x) <= max_chars, x


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_content)
def test_read_lines_fuzz(tmp_path, data):
    path = write(tmp_path / "fuzz.txt", data)
    try:
        lines = read_lines(path)
    except CorpusError as e:
        assert str(e).startswith(f"{path}:") and e.path == str(path)
        return
    assert len(lines) == (0 if data == BOM else _lines_of(data))
    for x in lines:
        assert x == "" or _clean(x, allow_tab=True), x
