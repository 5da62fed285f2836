"""The command line end to end on tiny generated data (in-process, plus one subprocess)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import toy_raw

from attendo.cli import main
from attendo.data.download import MULTI30K_FILES
from attendo.data.toy import toy_task

REPO = Path(__file__).resolve().parents[1]


def cli_config(path: Path, out_dir: Path, **sections) -> Path:
    """A tiny copy-task YAML config: a few dozen steps train in about a second."""
    raw = toy_raw(out_dir)
    raw["data"].update(
        toy="copy", toy_train_size=500, toy_valid_size=32, toy_test_size=32, toy_max_len=5
    )
    raw["model"].update(emb_dim=16, enc_hidden=32, dec_hidden=32)
    raw["train"].update(max_steps=40, valid_every=20, log_every=10)
    for section, values in sections.items():
        raw[section].update(values)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    out = root / "model"
    assert (
        main(["train", str(cli_config(root / "toy.yaml", root / "ignored")), "--out", str(out)])
        == 0
    )
    return out


def set_stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


LONG = " ".join("abcde"[i % 5] for i in range(3000))  # 3000 tokens: truncated to 400


def test_help_in_a_subprocess():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "attendo", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    for command in ("train", "translate", "evaluate", "attend", "serve", "study", "average", "data", "demo"):
        assert command in r.stdout


def test_train_writes_a_model_directory(model_dir):
    for name in ("config.yaml", "model.safetensors", "last.safetensors", "metrics.jsonl"):
        assert (model_dir / name).is_file()
    records = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["type"] for r in records} == {"train", "valid"}
    assert max(r["step"] for r in records) == 40


def test_translate_file_to_file(model_dir, tmp_path, caplog):
    src = tmp_path / "in.txt"
    src.write_text(f"a b c\n\nd e\n{LONG}\n   \nc c a b\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    assert main(["translate", "--model", str(model_dir), "-i", str(src), "-o", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 6  # one line per input line
    assert lines[1] == "" and lines[4] == ""  # empty (or blank) in, empty out
    assert "truncated" in caplog.text and "max_input_tokens" in caplog.text


def test_translate_stdin_to_stdout(model_dir, monkeypatch, capsys):
    set_stdin(monkeypatch, f"a b c\n\r\n\n{LONG}\nd e".encode())  # no final newline, a CRLF
    assert main(["translate", "--model", str(model_dir), "--beam", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 5
    assert lines[1] == lines[2] == ""
    assert all(len(x.split()) <= 250 for x in lines)  # decode.max_len caps the output
    # greedy from the CLI agrees with the Python API
    import attendo

    (t,) = attendo.load(model_dir).translate(["a b c"], beam=1)
    assert lines[0] == t.text


def forced_log_prob(translator, precision: str, src_text: str, tgt_tokens: list[str]) -> float:
    """Sum of the log-probabilities the model, run at ``precision`` as decoding runs it, gives
    the output pieces ``tgt_tokens`` (``Translation.tgt_tokens``, "</s>" last when the output
    ended) of ``src_text``: forced decoding, teacher-forced on that output."""
    from attendo.data.vocab import Vocab

    assert not translator.model.copies  # ids below are the target vocabulary's, no extension
    ended = bool(tgt_tokens) and tgt_tokens[-1] == "</s>"
    ids = translator.tgt.vocab.encode(tgt_tokens[:-1] if ended else tgt_tokens)
    ids += [Vocab.EOS] if ended else []
    src = torch.tensor([translator.src.vocab.encode(translator.src.pieces(src_text))])
    tgt_in = torch.tensor([[Vocab.BOS] + ids[:-1]])
    model = translator.search_model(precision)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        lp, _ = model.log_probs(src, torch.tensor([src.shape[1]]), tgt_in)  # (1, T, V)
    return float(lp[0, torch.arange(len(ids)), torch.tensor(ids)].sum())


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_translate_low_precision_decoding(model_dir, monkeypatch, capsys, precision):
    """decode.precision=bf16 (autocast) and int8 (quantized linear layers) give valid outputs,
    and the low-precision model scores every fp32 output within 2% of its fp32 log-probability
    (forced decoding), whether or not its own search picks the same output; both reachable as
    translate overrides."""
    from attendo.translator import Translator

    src = ["a b c", "d e a", "c c a b", "e"]
    full = Translator.from_dir(model_dir)
    fp32 = full.translate(src, beam=3, return_attention=True)
    reduced = Translator.from_dir(model_dir, overrides=[f"decode.precision={precision}"])
    low = reduced.translate(src, beam=3, return_attention=True)
    for s, a, b in zip(src, fp32, low):
        assert a.tgt_tokens and b.tgt_tokens
        assert b.attention.dtype.kind == "f" and np.isfinite(b.score)
        assert np.allclose(b.attention.sum(-1), 1.0, atol=0.02)
        # forced decoding reproduces the search's own log-probabilities (so it scores the same
        # thing), then the low-precision model scores the fp32 output and vice versa
        assert forced_log_prob(full, "fp32", s, a.tgt_tokens) == pytest.approx(a.log_prob, abs=1e-4)
        tol = 0.02 * max(1.0, abs(a.log_prob))  # measured: under 0.3% (bf16 and int8)
        assert abs(forced_log_prob(reduced, precision, s, a.tgt_tokens) - a.log_prob) < tol
        assert abs(forced_log_prob(full, "fp32", s, b.tgt_tokens) - b.log_prob) < tol
    set_stdin(monkeypatch, b"a b c\n")
    assert main(["translate", "--model", str(model_dir), f"decode.precision={precision}"]) == 0
    assert capsys.readouterr().out.strip()


def test_translate_stdin_invalid_utf8_names_the_line(model_dir, monkeypatch, capsys):
    set_stdin(monkeypatch, b"a b\nc \xff d\n")
    assert main(["translate", "--model", str(model_dir)]) == 2
    assert "<stdin>:2: invalid UTF-8" in capsys.readouterr().err


def test_translate_n_best(model_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a b c\nd e a\ne\n", encoding="utf-8")
    assert (
        main(
            ["translate", "--model", str(model_dir), "-i", str(src), "--n-best", "2", "--beam", "3"]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    by_sentence: dict[int, list[float]] = {}
    for line in lines:
        i, text, score = line.split(" ||| ")
        assert text == text.strip()
        by_sentence.setdefault(int(i), []).append(float(score))
    assert sorted(by_sentence) == [0, 1, 2]
    for scores in by_sentence.values():
        assert len(scores) == 2 and scores[0] >= scores[1]


def test_evaluate_json(model_dir, tmp_path, capsys):
    src_lines, ref_lines = toy_task("copy", 20, seed=123, max_len=5)
    src, ref = tmp_path / "test.src", tmp_path / "test.ref"
    src.write_text("\n".join(src_lines) + "\n", encoding="utf-8")
    ref.write_text("\n".join(ref_lines) + "\n", encoding="utf-8")
    hyps = tmp_path / "hyps.txt"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model_dir),
                "--src",
                str(src),
                "--ref",
                str(ref),
                "--json",
                "--beam",
                "2",
                "-o",
                str(hyps),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["sentences"] == 20 and report["beam"] == 2
    assert 0 <= report["bleu"] <= 100 and 0 <= report["chrf"] <= 100
    assert report["ppl"] >= 1.0
    assert report["bleu_signature"].startswith("nrefs:1") and "tok:13a" in report["bleu_signature"]
    assert "chrF" in report["chrf_signature"] or "nc:" in report["chrf_signature"]
    assert len(hyps.read_text(encoding="utf-8").splitlines()) == 20
    # the plain report too
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref)]) == 0
    assert "BLEU" in capsys.readouterr().out


def test_metric_signatures():
    """sacreBLEU only knows a signature once the metric has scored something (nrefs); the
    signature must come from the metric object that produced the score."""
    from attendo import metrics

    _, bleu_sig = metrics.bleu_with_signature(["a b c d"], ["a b c d"])
    _, chrf_sig = metrics.chrf_with_signature(["a b c d"], ["a b c d"])
    assert "tok:13a" in bleu_sig and "nrefs:1" in bleu_sig
    assert "nc:6" in chrf_sig


def test_attend_writes_pngs(model_dir, tmp_path, capsys):
    out = tmp_path / "pics"
    assert main(["attend", "--model", str(model_dir), "a b c d", "e a", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["attention-000.png", "attention-001.png"]
    assert str(pngs[0]) in stdout
    import matplotlib.image

    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(p)
        assert img.shape[0] > 0 and img.shape[1] > 0
    # sentences from a file; an empty line gets no picture but does not stop the others
    lines = tmp_path / "s.txt"
    lines.write_text("a b\n\nc d e\n", encoding="utf-8")
    out2 = tmp_path / "pics2"
    assert main(["attend", "--model", str(model_dir), "-i", str(lines), "--out", str(out2)]) == 0
    assert sorted(p.name for p in out2.glob("*.png")) == ["attention-000.png", "attention-002.png"]
    assert "empty input" in capsys.readouterr().err


def test_attend_on_a_model_without_attention_says_so(tmp_path, capsys):
    """Without attention there is nothing to draw; 'empty input, no picture' is misleading."""
    cfg = cli_config(
        tmp_path / "none.yaml",
        tmp_path / "none",
        model={"attention": "none"},
        train={"max_steps": 4, "valid_every": 4},
    )
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()
    rc = main(["attend", "--model", str(tmp_path / "none"), "a b c", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert "empty input" not in err
    assert "attention" in err
    assert rc != 0 or not list((tmp_path / "p").glob("*.png"))


def test_data_multi30k_from_local_copy(shared_multi30k, tmp_path, capsys):
    out = tmp_path / "m30k"
    assert main(["data", "multi30k", "--from", str(shared_multi30k), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 6
    for split in ("train", "val", "test_2016_flickr"):
        for lang in ("de", "en"):
            name = f"{split}.{lang}"
            data = (out / name).read_bytes()
            assert data.count(b"\n") == MULTI30K_FILES[name], name
    # a second run keeps the verified files
    assert main(["data", "multi30k", "--from", str(shared_multi30k), "--out", str(out)]) == 0


def test_data_multi30k_from_a_missing_folder(tmp_path, capsys):
    rc = main(
        ["data", "multi30k", "--from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    assert "nowhere" in capsys.readouterr().err


# --------------------------------------------------------------------------- errors


def test_missing_config_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "no such config file" in err


def test_misspelt_key_exits_2_naming_file_and_key(tmp_path, capsys):
    path = cli_config(tmp_path / "bad.yaml", tmp_path / "run", model={"atention": "dot"})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "model.atention" in err and "did you mean 'attention'" in err
    assert not (tmp_path / "run").exists()  # nothing is created for a bad config


def test_mismatched_training_files_exit_2(tmp_path, capsys):
    src, tgt = tmp_path / "train.src", tmp_path / "train.tgt"
    src.write_text("a b\nc d\ne f\n")
    tgt.write_text("b a\nd c\n")
    path = cli_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        data={"toy": "", "train_src": str(src), "train_tgt": str(tgt)},
    )
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.src" in err and "3 lines" in err and "train.tgt" in err and "2 lines" in err


def test_decode_errors_exit_2(model_dir, tmp_path, capsys):
    assert main(["translate", "--model", str(tmp_path / "no-model"), "-i", "x"]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert main(["translate", "--model", str(model_dir), "-i", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    src, ref = tmp_path / "s", tmp_path / "r"
    src.write_text("a\nb\n")
    ref.write_text("a\n")
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref)]) == 2
    assert "has 2 lines" in capsys.readouterr().err


def test_overwrite_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = cli_config(
        tmp_path / "c.yaml",
        run,
        train={"max_steps": 20, "valid_every": 5, "log_every": 5, "keep_last": 2},
    )
    assert main(["train", str(cfg)]) == 0
    before = (run / "last.safetensors").read_bytes()

    assert main(["train", str(cfg)]) == 2  # refuses to overwrite
    msg = capsys.readouterr().err
    assert str(run) in msg and "--resume" in msg and "--overwrite" in msg
    assert (run / "last.safetensors").read_bytes() == before

    # --resume on a finished run has nothing left to do
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "last.safetensors").read_bytes() == before


# holds the lock of a run directory, as a training writing into it does, until killed
HOLD_LOCK = ("import sys, time\nfrom attendo.utils import DirLock\n"
             "lock = DirLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(120)")


@pytest.mark.skipif(os.name != "posix", reason="the lock is fcntl.flock")
def test_a_second_training_in_a_busy_directory_is_refused(tmp_path, capsys):
    """While another process trains in DIR, ``--resume DIR`` and ``--overwrite`` into DIR
    exit 2 naming DIR and the holder's pid, and touch nothing; a SIGKILLed holder leaves no
    stale lock, and the resume then goes ahead."""
    run = tmp_path / "run"
    cfg = cli_config(tmp_path / "c.yaml", run, train={"max_steps": 10, "valid_every": 5})
    assert main(["train", str(cfg)]) == 0  # the CLI and the trainer both take the lock
    files = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        for argv in (["train", "--resume", str(run), "train.max_steps=20"],
                     ["train", str(cfg), "--overwrite"]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert str(run) in err and f"pid {holder.pid}" in err and "another training" in err
            assert (run / "checkpoints").is_dir()
            for name, data in files.items():
                if name != ".attendo.lock":
                    assert (run / name).read_bytes() == data, name
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert main(["train", "--resume", str(run), "train.max_steps=20"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 20


def test_resume_with_override_continues(tmp_path):
    """``attendo train --resume DIR train.max_steps=30`` must extend the run. argparse gives
    the override to the optional ``config`` positional, so cmd_train silently drops it."""
    run = tmp_path / "run"
    cfg = cli_config(tmp_path / "c.yaml", run, train={"max_steps": 10, "valid_every": 5})
    assert main(["train", str(cfg)]) == 0
    assert main(["train", "--resume", str(run), "train.max_steps=20"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 20
    # the override is now the run's config: a later resume goes on with it, not with 10
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["max_steps"] == 20
    assert main(["train", "--resume", str(run), "train.valid_every=4"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["max_steps"] == 20 and saved["train"]["valid_every"] == 4
    # an override the checkpoint does not fit is refused and leaves config.yaml alone
    before = (run / "config.yaml").read_bytes()
    assert main(["train", "--resume", str(run), "model.emb_dim=8"]) != 0
    assert (run / "config.yaml").read_bytes() == before


def test_overrides_after_options(tmp_path):
    """``attendo train c.yaml --out DIR train.max_steps=5``: argparse stops filling the
    overrides positional at the first option, so later overrides are 'unrecognized arguments'
    (exit 2) unless the parser uses parse_intermixed_args (or collects them itself)."""
    cfg = cli_config(tmp_path / "c.yaml", tmp_path / "ignored")
    assert (
        main(
            [
                "train",
                str(cfg),
                "--out",
                str(tmp_path / "run"),
                "train.max_steps=5",
                "train.valid_every=5",
            ]
        )
        == 0
    )
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 5


def test_overwrite_starts_a_clean_run(tmp_path):
    """After --overwrite the directory must describe the new run only: old step checkpoints
    with higher step numbers would otherwise survive keep_last pruning (which deletes the new
    run's checkpoints instead), and metrics.jsonl would mix two runs."""
    run = tmp_path / "run"
    cfg = cli_config(
        tmp_path / "c.yaml",
        run,
        train={"max_steps": 20, "valid_every": 5, "log_every": 5, "keep_last": 2},
    )
    assert main(["train", str(cfg)]) == 0
    assert main(["train", str(cfg), "train.max_steps=10", "--overwrite"]) == 0
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-10.safetensors", "step-5.safetensors"]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 10


def test_average_checkpoints(model_dir, tmp_path, capsys):
    """`attendo average` writes the element-wise mean of the newest step checkpoints, and the
    result loads and translates."""
    from attendo.checkpoint import read_safetensors, step_checkpoints

    ckpts = step_checkpoints(model_dir)
    assert len(ckpts) >= 2
    out = tmp_path / "avg.safetensors"
    assert main(["average", "--model", str(model_dir), "--last", "2", "-o", str(out)]) == 0
    avg, meta = read_safetensors(out)
    a, _ = read_safetensors(ckpts[-1])
    b, _ = read_safetensors(ckpts[-2])
    assert meta["averaged"] == [ckpts[-2].name, ckpts[-1].name]
    for k in a:
        torch.testing.assert_close(avg[k], (a[k] + b[k]) / 2)
    src = tmp_path / "in.txt"
    src.write_text("a b c\n")
    assert main(["translate", "--model", str(model_dir), "--checkpoint", str(out), "-i", str(src)]) == 0
    assert main(["average", "--model", str(model_dir), "--last", "0"]) == 2


def test_version_prints_the_package_version(capsys):
    from importlib.metadata import version

    import attendo

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"attendo {attendo.__version__}"
    assert attendo.__version__ == version("attendo")  # the one in pyproject.toml
