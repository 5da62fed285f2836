"""Shared fixtures: one CPU thread, tiny toy configs and models, the local Multi30k copy."""

from __future__ import annotations

import contextlib
import copy
import logging
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


def train_tiny(out: Path, **model) -> Path:
    """A copy-task model trained for a few dozen steps (about a second), saved in ``out``."""
    from attendo.train import Trainer

    raw = toy_raw(out)
    raw["data"].update(toy="copy", toy_train_size=400, toy_valid_size=16, toy_test_size=16,
                       toy_max_len=5)
    raw["model"].update(emb_dim=16, enc_hidden=32, dec_hidden=32, **model)
    raw["train"].update(max_steps=30, valid_every=30, log_every=30)
    Trainer(config_from_dict(raw)).run()
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app):
    """Run an ASGI app under uvicorn in a daemon thread on a free port; yields the port."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    )
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
