"""Shared fixtures: one CPU thread, tiny toy configs and models, the local Multi30k copy."""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
from pathlib import Path

import pytest
import torch

from attendo.config import Config, ModelConfig, config_from_dict
from attendo.model import build_model

# Tests must not fight other jobs on the machine for cores; tiny models gain nothing from more.
torch.set_num_threads(1)

SHARED_MULTI30K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"

ATTENTIONS = ("none", "dot", "general", "additive", "scaled_dot", "location")

TOY_RAW = {
    "data": {
        "toy": "reverse",
        "tokenizer": "word",
        "toy_train_size": 2000,
        "toy_valid_size": 64,
        "toy_test_size": 64,
        "toy_max_len": 6,
        "vocab_size": 100,
    },
    "model": {"emb_dim": 32, "enc_hidden": 64, "dec_hidden": 64, "dropout": 0.0},
    "train": {
        "progress": False,
        "device": "cpu",  # on purpose: device-specific tests take the `device` fixture
        "threads": 0,
        "batch_size": 32,
        "lr": 0.003,
        "max_steps": 20,
        "log_every": 10,
        "valid_every": 10,
        "valid_max_sents": 32,
    },
    "decode": {"beam_size": 2, "batch_size": 64},
}


def toy_raw(out_dir: str | Path) -> dict:
    """A fresh raw (dict) toy config writing into ``out_dir``."""
    raw = copy.deepcopy(TOY_RAW)
    raw["train"]["out_dir"] = str(out_dir)
    return raw


def train_tiny(out: Path, tokenizer: str = "word", **model) -> Path:
    """A copy-task model trained for a few dozen steps (about a second), saved in ``out``
    (``tokenizer="char"``: every character, spaces and stray marks too, is a piece)."""
    from attendo.train import Trainer

    raw = toy_raw(out)
    raw["data"].update(toy="copy", toy_train_size=400, toy_valid_size=16, toy_test_size=16,
                       toy_max_len=5, tokenizer=tokenizer)
    raw["model"].update(emb_dim=16, enc_hidden=32, dec_hidden=32, **model)
    raw["train"].update(max_steps=30, valid_every=30, log_every=30)
    Trainer(config_from_dict(raw)).run()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny copy-task model (train_tiny), trained once per test module."""
    return train_tiny(tmp_path_factory.mktemp("trained") / "model")


@pytest.fixture
def model(trained, tmp_path) -> Path:
    """A fresh copy of ``trained``'s model directory, to edit or break one file of."""
    d = tmp_path / "model"
    shutil.copytree(trained, d)
    return d


@pytest.fixture
def text(tmp_path) -> Path:
    """A two-line input file for the CLI."""
    p = tmp_path / "in.txt"
    p.write_text("a b c\nd e\n", encoding="utf-8")
    return p


def image_config(path: Path, data: Path, out: Path, **model) -> Path:
    """A tiny image-model config (digit strings, 12 updates) written to ``path``."""
    import yaml

    raw = {
        "data": {"src_type": "image", "train_src": str(data / "train.tsv"),
                 "valid_src": str(data / "dev.tsv"), "test_src": str(data / "test.tsv"),
                 "image_height": 16, "tokenizer": "char"},
        "model": {"encoder": "image", "enc_layers": 3, "image_pool": 2, "enc_hidden": 32,
                  "emb_dim": 16, "dec_hidden": 32, "dropout": 0.1, **model},
        "train": {"out_dir": str(out), "progress": False, "device": "cpu", "batch_size": 16,
                  "max_steps": 12, "valid_every": 6, "log_every": 6, "valid_max_sents": 8},
        "decode": {"beam_size": 3},
    }
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A small digit-string image set (``attendo data digits``: 64 / 8 / 8 images)."""
    pytest.importorskip("sklearn")
    from attendo.cli import main

    out = tmp_path_factory.mktemp("img") / "digits"
    assert main(["data", "digits", "--out", str(out), "--sizes", "64", "8", "8"]) == 0
    return out


@pytest.fixture(scope="module")
def image_model(digits, tmp_path_factory) -> Path:
    """An image model trained 12 updates on ``digits``, once per test module."""
    from attendo.cli import main

    root = tmp_path_factory.mktemp("imgmodel")
    cfg = image_config(root / "digits.yaml", digits, root / "model")
    assert main(["train", str(cfg)]) == 0
    return root / "model"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app):
    """Run an app of attendo.server.create_app under uvicorn, configured as ``attendo serve``
    configures it (its connection guards included), in a daemon thread on a free port;
    yields the port."""
    import threading
    import time

    import uvicorn

    from attendo.server import server_config

    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def toy_config(tmp_path):
    """Builder: ``toy_config("model.attention=dot", ..., out_dir=...) -> Config``."""

    def make(*overrides: str, out_dir: str | Path | None = None) -> Config:
        return config_from_dict(toy_raw(out_dir or tmp_path / "run"), list(overrides))

    return make


def make_model(vocab: int = 13, tgt_vocab: int | None = None, **model_kw):
    """A tiny randomly initialised Seq2Seq (eval mode) from ModelConfig keyword arguments."""
    kw = {"emb_dim": 8, "enc_hidden": 8, "dec_hidden": 12, "dropout": 0.0}
    kw.update(model_kw)
    cfg = ModelConfig(**kw)
    cfg.validate()
    return build_model(cfg, vocab, tgt_vocab or vocab).eval()


@pytest.fixture
def tiny_model():
    return make_model


def random_batch(lens: list[int], vocab: int, generator: torch.Generator | None = None):
    """Padded source ids (B, S) with ids in [4, vocab) (no specials) and their lengths."""
    S = max(lens)
    src = torch.zeros(len(lens), S, dtype=torch.long)
    for i, n in enumerate(lens):
        src[i, :n] = torch.randint(4, vocab, (n,), generator=generator)
    return src, torch.tensor(lens)


@pytest.fixture
def shared_multi30k() -> Path:
    if (
        not (SHARED_MULTI30K / "train.de.gz").exists()
        and not (SHARED_MULTI30K / "train.de").exists()
    ):
        pytest.skip(f"no local Multi30k copy at {SHARED_MULTI30K}")
    return SHARED_MULTI30K


@pytest.fixture(autouse=True)
def attendo_handlers():
    """The 'attendo' logger's handlers before a test; any a failed Trainer leaves are closed."""
    logger = logging.getLogger("attendo")
    before = list(logger.handlers)
    yield before
    for h in list(logger.handlers):
        if h not in before:
            logger.removeHandler(h)
            h.close()


# --------------------------------------------------------------------------- devices

CUDA = torch.cuda.is_available()


@pytest.fixture(
    params=[
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device")),
    ]
)
def device(request):
    """The device a test runs on: the CPU always, CUDA too when there is one.

    CUDA is ``cuda:0``, the device a single-process Trainer with ``train.device=cuda`` uses,
    so ``p.device == device`` compares equal (``torch.device("cuda") != torch.device("cuda:0")``).
    On CUDA, TF32 is switched off for the test (and restored after it): tests compare two
    fp32 computation paths (step vs teacher forcing, SDPA vs explicit weights, beam 1 vs
    greedy), and TF32 matrix products carry only 10 mantissa bits (~1e-3 relative error),
    which would hide real differences under a loose tolerance. ``allow_tf32`` for matmul is
    False by default, cuDNN's (convolutions, RNNs) True. What is left on CUDA is the order of
    fp32 reductions, which the kernels pick per shape: see :func:`path_atol`.
    """
    if request.param == "cpu":
        yield torch.device("cpu")
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield torch.device("cuda", 0)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def path_atol(device: torch.device | str, cpu_atol: float) -> float:
    """Absolute tolerance for comparing two fp32 computation paths of the same function.

    On the CPU the given one. On CUDA (TF32 off, see the ``device`` fixture) at least 1e-4:
    cuBLAS and the SDPA kernels choose their tiling, split-K and reduction order by shape (a
    batch of B rows vs one row, T positions at once vs one step), so the two paths round
    differently at the 1e-6 relative level, and through a few layers and a log-softmax that
    can reach 1e-5. A wrong mask, cache or reorder moves outputs by 1e-2 or more, so 1e-4
    still catches every real difference.
    """
    return cpu_atol if torch.device(device).type == "cpu" else max(cpu_atol, 1e-4)


@contextlib.contextmanager
def deterministic(device: torch.device, monkeypatch):
    """Run-to-run exact results on ``device``. The CPU kernels attendo uses are
    deterministic already. On CUDA some are not (atomicAdd in index_put/scatter/embedding
    backward; cuBLAS with a shared workspace), so this sets
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (restored afterwards) and
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8``. PyTorch reads that variable when it first sizes a
    cuBLAS workspace, so if an earlier test already used cuBLAS in this process the old size
    stays; results are still deterministic on a single stream, which is what training uses.
    warn_only: an op without a deterministic CUDA kernel warns instead of failing, and an
    exactness test that then fails names the missing determinism, not a crash."""
    if torch.device(device).type != "cuda":
        yield
        return
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn_only)
