"""Broken model files: every one is ONE error line naming the file, exit code 2, no traceback.

Each test copies a tiny trained model directory, breaks one file (weights, training state,
step checkpoint, config size, tokenizer, vocabulary) and runs the command line in-process
(``attendo.cli.main``) for translate / evaluate / --checkpoint / average / train --resume; one
test runs ``python -m attendo`` as a subprocess end to end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import attendo
from attendo.checkpoint import ModelFileError, read_safetensors, save_weights
from attendo.cli import main
from attendo.config import load_config
from attendo.data.vocab import Vocab
from attendo.model import build_model

REPO = Path(__file__).resolve().parents[1]


def fails(capsys, *argv: object) -> str:
    """Run the CLI in-process; it must exit 2 with one 'attendo CMD: error:' line and no
    traceback. Returns that line."""
    argv = [str(a) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"attendo {argv[0]}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def translate_fails(capsys, model: Path, text: Path, *extra: object) -> str:
    return fails(capsys, "translate", "--model", model, "-i", text, *extra)


def weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (in memory: the file may be overwritten next) and raw metadata of ``path``."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return st_load(path.read_bytes()), meta


def rewrite(path: Path, change=None, metadata: dict[str, str] | None = None) -> None:
    """Write ``path`` again with ``change(tensors)`` applied and/or other metadata."""
    tensors, meta = weights(path)
    if change is not None:
        change(tensors)
    path.write_bytes(st_save(tensors, metadata=meta if metadata is None else metadata))


@contextlib.contextmanager
def address_space_cap(extra: int = 4 << 30):
    """Limit this process to ``extra`` more bytes of address space, so that a regression that
    allocates an absurd model fails at once instead of eating the shared machine's memory."""
    try:
        import resource

        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (ImportError, OSError):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = pages * os.sysconf("SC_PAGE_SIZE") + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --------------------------------------------------------------------------- weights files


def _pickle(p: Path) -> None:
    torch.save(weights(p)[0], p)


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _first_100(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:100])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _bad_metadata(p: Path) -> None:
    rewrite(p, metadata={"attendo": "{not json"})


BROKEN = {
    "pickle": (_pickle, "pickle"),
    "truncated": (_truncate, "truncated"),
    "100 bytes": (_first_100, "truncated"),
    "empty": (_empty, "empty"),
    "bad metadata JSON": (_bad_metadata, "metadata"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_model_safetensors(model, text, capsys, case):
    """Old code: SafetensorError (not caught: traceback) for the first four; for the bad
    metadata a JSONDecodeError whose message names no file."""
    breaker, words = BROKEN[case]
    path = model / "model.safetensors"
    breaker(path)
    line = translate_fails(capsys, model, text)
    assert f"error: {path}: " in line and words in line


@pytest.mark.parametrize("case", ["pickle", "truncated"])
def test_broken_weights_via_evaluate_and_checkpoint(model, text, capsys, case):
    breaker, words = BROKEN[case]
    ckpt = model / "checkpoints" / "step-30.safetensors"
    breaker(ckpt)
    line = translate_fails(capsys, model, text, "--checkpoint", ckpt)
    assert f"error: {ckpt}: " in line and words in line
    breaker(model / "model.safetensors")
    line = fails(capsys, "evaluate", "--model", model, "--src", text, "--ref", text)
    assert f"error: {model / 'model.safetensors'}: " in line and words in line


def test_tensor_of_the_wrong_shape(model, text, capsys):
    """Old code: load_state_dict's RuntimeError (size mismatch), a traceback."""
    path = model / "model.safetensors"
    rewrite(path, lambda t: t.update({"decoder.out.bias": torch.zeros(15)}))
    line = translate_fails(capsys, model, text)
    assert f"error: {path}: " in line and "'decoder.out.bias'" in line
    assert "[15]" in line and "[14]" in line


def test_absurd_config_size_is_checked_before_allocating(model, text, capsys):
    """model.emb_dim: 10000000 used to build (allocate ~15 GB) before anything checked; now
    its size is estimated first (more than the address-space cap leaves), and a size that
    fits is compared, as a meta-device model, with the weights' header. The address-space cap
    makes a regression fail fast instead of swapping."""
    cfg = model / "config.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw["model"]["emb_dim"] = 10_000_000
    cfg.write_text(yaml.safe_dump(raw))
    with address_space_cap():
        line = translate_fails(capsys, model, text)
    assert f"error: {cfg}: model.emb_dim=10000000: the model has " in line
    assert "ulimit -v" in line
    raw["model"]["emb_dim"] = 1000  # fits in memory, not the weights
    cfg.write_text(yaml.safe_dump(raw))
    with address_space_cap():
        line = translate_fails(capsys, model, text)
    assert f"error: {model / 'model.safetensors'}: " in line and "embed.weight" in line
    assert "1000" in line and str(cfg) in line


def test_absurd_unstored_table_is_refused(model, text, capsys):
    """A Transformer's sinusoidal table is not in the weights: model.max_positions: 10**9
    would allocate 64 GB; the error names config.yaml and the key instead."""
    cfg_path = model / "config.yaml"
    raw = yaml.safe_load(cfg_path.read_text())
    raw["model"].update(encoder="transformer", d_model=16, heads=2, ff_dim=32)
    cfg_path.write_text(yaml.safe_dump(raw))
    vocab = len(Vocab.load(model / "src.vocab.json"))
    save_weights(model / "model.safetensors",
                 build_model(load_config(cfg_path).model, vocab, vocab))
    assert main(["translate", "--model", str(model), "-i", str(text)]) == 0  # it works...
    capsys.readouterr()
    raw["model"]["max_positions"] = 10**9
    cfg_path.write_text(yaml.safe_dump(raw))
    with address_space_cap():
        line = translate_fails(capsys, model, text)  # ...until the table gets absurd
    assert f"error: {cfg_path}: model.max_positions=1000000000: " in line


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_weights_are_refused(model, text, capsys, dtype):
    """Old code: load_state_dict casts int64 into the float parameters silently, exit 0."""
    path = model / "model.safetensors"
    rewrite(path, lambda t: t.update({k: v.to(dtype) for k, v in t.items()}))
    line = translate_fails(capsys, model, text)
    assert f"error: {path}: " in line and "floating-point" in line
    assert {torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL"}[dtype] in line


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_load(model, text, capsys, dtype):
    path = model / "model.safetensors"
    rewrite(path, lambda t: t.update({k: v.to(dtype) for k, v in t.items()}))
    assert main(["translate", "--model", str(model), "-i", str(text)]) == 0
    t = attendo.load(model)
    assert all(p.dtype == torch.float32 for p in t.model.parameters())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(model, text, capsys, value):
    """Old code: NaN weights load silently (exit 0, garbage output)."""
    path = model / "model.safetensors"
    rewrite(path, lambda t: t["encoder.embed.weight"].__setitem__((5, 3), value))
    line = translate_fails(capsys, model, text)
    assert f"error: {path}: " in line and "'encoder.embed.weight'" in line
    assert "non-finite" in line
    with pytest.raises(ModelFileError, match="non-finite"):
        attendo.load(model)


# --------------------------------------------------------------------------- average


def test_average_refuses_broken_checkpoints(model, capsys):
    """Old code: a NaN checkpoint averaged silently; mismatched shapes a RuntimeError."""
    ckpts = model / "checkpoints"
    step30 = ckpts / "step-30.safetensors"
    shutil.copy(step30, ckpts / "step-40.safetensors")
    rewrite(ckpts / "step-40.safetensors",
            lambda t: t.update({"decoder.out.bias": torch.zeros(15)}))
    line = fails(capsys, "average", "--model", model, "--last", 2)
    assert f"error: {ckpts / 'step-40.safetensors'}: " in line and "'decoder.out.bias'" in line
    assert str(step30) in line
    shutil.copy(step30, ckpts / "step-40.safetensors")
    rewrite(step30, lambda t: t["decoder.out.bias"].fill_(float("nan")))
    line = fails(capsys, "average", "--model", model, "--last", 2)
    assert f"error: {step30}: " in line and "non-finite" in line
    _truncate(step30)
    line = fails(capsys, "average", "--model", model, "--last", 2)
    assert f"error: {step30}: " in line and "truncated" in line
    assert not (model / "averaged.safetensors").exists()


# --------------------------------------------------------------------------- train --resume


def _no_trainer_meta(p: Path) -> None:
    rewrite(p, metadata={"attendo": "{}"})


def _optim_shape(p: Path) -> None:
    rewrite(p, lambda t: t.update({"optim.0.exp_avg": torch.zeros(3, 3)}))


def _nan_model(p: Path) -> None:
    rewrite(p, lambda t: t["model.decoder.out.bias"].fill_(float("nan")))


RESUME = {
    "truncated": (_truncate, "truncated"),
    "pickle": (_pickle, "pickle"),
    "no trainer metadata": (_no_trainer_meta, "not a training state"),
    "optimizer tensor shape": (_optim_shape, "'optim.0.exp_avg'"),
    "NaN weights": (_nan_model, "non-finite"),
}


@pytest.mark.parametrize("case", list(RESUME))
def test_resume_from_broken_last_safetensors(model, capsys, case):
    """Old code: SafetensorError / KeyError tracebacks; a wrongly shaped optimizer moment or
    NaN weights were accepted (the run is already at max_steps, so it exits 0)."""
    breaker, words = RESUME[case]
    last = model / "last.safetensors"
    breaker(last)
    line = fails(capsys, "train", "--resume", model)
    assert f"error: {last}: " in line and words in line


def test_resume_with_an_absurd_config_size_checks_before_allocating(model, capsys):
    """train --resume built the model from config.yaml before reading last.safetensors."""
    cfg = model / "config.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw["model"]["emb_dim"] = 10_000_000
    cfg.write_text(yaml.safe_dump(raw))
    with address_space_cap():
        line = fails(capsys, "train", "--resume", model)
    assert "model.emb_dim=10000000: the model has at least " in line and "training" in line
    raw["model"]["emb_dim"] = 1000  # fits in memory, not the checkpoint
    cfg.write_text(yaml.safe_dump(raw))
    with address_space_cap():
        line = fails(capsys, "train", "--resume", model)
    assert f"error: {model / 'last.safetensors'}: " in line and "1000" in line


def test_resume_with_trainer_state_of_another_version(model, capsys):
    """Unknown keys in the saved trainer state were a TypeError traceback."""
    last = model / "last.safetensors"
    _, meta = read_safetensors(last)
    meta["trainer"]["from_the_future"] = 1
    rewrite(last, metadata={"attendo": json.dumps(meta)})
    line = fails(capsys, "train", "--resume", model)
    assert f"error: {last}: " in line and "trainer state" in line


# --------------------------------------------------------------------------- tokenizers


def test_garbage_sentencepiece_model(model, text, capsys):
    """Old code: sentencepiece's RuntimeError, a traceback."""
    (model / "src.tokenizer.json").write_text(json.dumps({"kind": "bpe", "files": ["spm.model"]}))
    spm_path = model / "src.spm.model"
    spm_path.write_bytes(b"\x00garbage, not a protobuf\xff" * 20)
    line = translate_fails(capsys, model, text)
    assert f"error: {spm_path}: " in line and "SentencePiece" in line
    spm_path.write_bytes(b"")  # loaded "successfully" as nothing by sentencepiece itself
    line = translate_fails(capsys, model, text)
    assert f"error: {spm_path}: " in line and "empty" in line


@pytest.mark.parametrize(
    "meta", [{"kind": "word", "files": 5}, {"kind": "word", "files": [3]}, {"kind": ["word"]}, [1]]
)
def test_malformed_tokenizer_json(model, text, capsys, meta):
    """Old code: "files": 5 and [3] are TypeErrors (traceback), kind ["word"] is unhashable."""
    path = model / "tgt.tokenizer.json"
    path.write_text(json.dumps(meta))
    line = translate_fails(capsys, model, text)
    assert f"error: {path}: " in line


@pytest.mark.parametrize("how", ["relative", "etc-passwd", "symlink"])
def test_tokenizer_file_outside_the_model_dir(model, tmp_path, text, capsys, how):
    """Old code read the file (a word tokenizer then ignores it) and exited 0."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    (model / "src.x").mkdir()
    name = {
        "relative": "x/../../secret.txt",
        "etc-passwd": "x/" + "../" * 40 + "etc/passwd",
        "symlink": "link",
    }[how]
    if how == "symlink":
        (model / "src.link").symlink_to(secret)
    path = model / "src.tokenizer.json"
    path.write_text(json.dumps({"kind": "word", "files": [name]}))
    line = translate_fails(capsys, model, text)
    assert f"error: {path}: " in line and "inside the model directory" in line


@contextlib.contextmanager
def fifo_watchdog(fifo: Path):
    """Yield a list that gets True if anyone opens ``fifo`` for reading; the watchdog then
    opens it for writing and closes it, so the reader gets EOF instead of hanging forever."""
    opened: list[bool] = []
    stop = threading.Event()

    def watch():
        while not stop.wait(0.02):
            try:  # O_NONBLOCK write-open succeeds only while a reader is blocked in open()
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            opened.append(True)
            os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join(5)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("where", ["tokenizer file", "vocabulary", "checkpoint"])
def test_fifo_is_never_opened(model, tmp_path, text, capsys, where):
    """Old code opened the FIFO and blocked until a writer came (forever in real life)."""
    if where == "tokenizer file":
        fifo = model / "src.fifo"
        (model / "src.tokenizer.json").write_text(json.dumps({"kind": "word", "files": ["fifo"]}))
    elif where == "vocabulary":
        fifo = model / "tgt.vocab.json"
        fifo.unlink()
    else:
        fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    extra = ["--checkpoint", fifo] if where == "checkpoint" else []
    with fifo_watchdog(fifo) as opened:
        line = translate_fails(capsys, model, text, *extra)
    assert not opened
    assert f"error: {fifo}: " in line and "not a regular file" in line


# --------------------------------------------------------------------------- vocabularies


@pytest.mark.parametrize(
    "content",
    [
        '{"tokens": ["<pad>", "<unk>", "<s>", "</s>", "a"], "counts": [1, 2]}',
        '{"tokens": ["<pad>", "<unk>", "<s>", "</s>", "a"], "counts": {"a": "many"}}',
        '{"tokens": ["<pad>", "<unk>", "<s>", "</s>", ["a"]]}',
        '{"tokens": 5}',
        '"tokens"',
        "\xff\xfe not UTF-8",
    ],
)
def test_malformed_vocabulary(model, text, capsys, content):
    """Old code: "counts": [1, 2] was a TypeError (traceback), {"a": "many"} loaded silently;
    the others were plain ValueErrors rather than ModelFileError."""
    path = model / "src.vocab.json"
    path.write_bytes(content.encode("latin-1"))
    line = translate_fails(capsys, model, text)
    assert f"error: {path}: " in line
    with pytest.raises(ModelFileError, match=str(path)):
        Vocab.load(path)


# --------------------------------------------------------------------------- end to end


def test_subprocess_pickle_weights(model, text):
    """The real command: one line on stderr, exit code 2, no traceback."""
    _pickle(model / "model.safetensors")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "-m", "attendo", "translate", "--model", str(model), "-i", str(text)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert errors == [ln for ln in errors if ln.startswith("attendo translate: error: ")]
    assert len(errors) == 1 and str(model / "model.safetensors") in errors[0]
    assert r.stdout == ""
