"""Devices: where models, batches and random states live, on the CPU and (when there is one) on
CUDA. The ``device`` fixture (conftest) runs each test on both; CUDA is skipped without one.

- a Translator never moves the model it is given (a Trainer may be training it);
- a Trainer's model keeps training on its device with a Translator built on it;
- bf16 training (and fp16 on CUDA) runs in that precision and learns;
- resuming mid-epoch with dropout gives bit-identical weights, on the device;
- a checkpoint stores the random state of every device used;
- ``train.device=auto`` with fewer GPUs than processes falls back to cpu (gloo).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import deterministic, make_model

from attendo import distributed
from attendo.checkpoint import LAST_FILE, read_safetensors
from attendo.config import Config, DataConfig
from attendo.data.prepare import Codec
from attendo.data.tokenizers import WordTokenizer
from attendo.data.vocab import Vocab
from attendo.train import Trainer, resume
from attendo.translator import Translator

VOCAB = 15


def _codec() -> Codec:
    return Codec(WordTokenizer(), Vocab(list(Vocab.SPECIALS) + [f"w{i}" for i in range(VOCAB - 4)]))


def _elsewhere(device: torch.device) -> torch.device:
    """A device the model is not on (it need not exist: a Translator only compares)."""
    return torch.device("cpu") if device.type == "cuda" else torch.device("cuda", 0)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in _records(run) if r["type"] == "train"]


def _params_on(model: torch.nn.Module, device: torch.device) -> None:
    wrong = [f"{n}: {p.device}" for n, p in model.named_parameters() if p.device != device]
    assert not wrong, f"parameters not on {device}: {wrong[:3]}"


# --------------------------------------------------------------------------- translator


def test_translator_never_moves_the_model(device):
    model = make_model(VOCAB).to(device)
    params = list(model.parameters())
    ptrs = [p.data_ptr() for p in params]
    codec = _codec()
    cfg = Config(data=DataConfig(toy="copy", tokenizer="word"))
    tr = Translator(model, codec, codec, cfg)
    assert tr.model is model and tr.device == device
    out = tr.translate(["w1 w2 w3", "w4", ""], beam=2, return_attention=True)
    assert out[0].tgt_tokens and out[1].tgt_tokens and out[2].text == ""
    assert out[0].attention.shape == (len(out[0].tgt_tokens), 3)
    # the same parameter objects, with the same storage, where they were
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert [p.data_ptr() for p in model.parameters()] == ptrs
    _params_on(model, device)
    # naming the device the model is on is fine, with or without an index
    assert Translator(model, codec, codec, cfg, device=device).model is model
    assert Translator(model, codec, codec, cfg, device=device.type).model is model
    other = _elsewhere(device)
    with pytest.raises(ValueError, match="does not move the model") as e:
        Translator(model, codec, codec, cfg, device=other)
    assert str(device) in str(e.value) and str(other) in str(e.value)
    _params_on(model, device)
    assert [p.data_ptr() for p in model.parameters()] == ptrs


def test_translator_built_before_training_leaves_the_model_on_its_device(toy_config, device):
    """The old bug: a Translator made from a Trainer's model (to measure the untrained model)
    moved it to the CPU, and training then fed it CUDA batches."""
    trainer = Trainer(toy_config(
        f"train.device={device.type}", "train.max_steps=3", "train.valid_every=3",
        "data.toy_train_size=200", "train.valid_max_sents=8",
    ))
    assert trainer.device == device
    tr = Translator(trainer.model, trainer.src, trainer.tgt, trainer.cfg)
    assert tr.translate(trainer.valid.src[:4], beam=1)[0].tgt_tokens  # untrained, but it runs
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run()
    _params_on(trainer.model, device)
    assert any(not torch.equal(p.detach(), before[n])
               for n, p in trainer.model.named_parameters())  # it trained
    assert trainer.optimizer.state  # it stepped: Adam holds moments
    for state in trainer.optimizer.state.values():  # Adam moments live with their weights
        for value in state.values():
            if torch.is_tensor(value) and value.dim():
                assert value.device == device
    assert tr.model is trainer.model and tr.translate(trainer.valid.src[:2], beam=2)


# --------------------------------------------------------------------------- precision


def _train_and_watch_dtype(toy_config, *overrides: str) -> tuple[Trainer, set[torch.dtype]]:
    """Train a few dozen steps of the toy task; the dtypes the output layer computed in
    while training (validation and search run without autocast)."""
    trainer = Trainer(toy_config(
        *overrides, "train.max_steps=40", "train.log_every=5", "train.valid_every=40",
        "train.valid_bleu=false", "data.toy_train_size=400",
    ))
    seen: set[torch.dtype] = set()

    def hook(module, inputs, output):
        if module.training:
            seen.add(output.dtype)

    handle = trainer.model.decoder.out.register_forward_hook(hook)
    try:
        trainer.run()
    finally:
        handle.remove()
    return trainer, seen


def _assert_learned(trainer: Trainer) -> None:
    losses = _train_losses(Path(trainer.cfg.train.out_dir))
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses), losses
    # steps 1-5 average ~2.58 nats, steps 36-40 ~2.16 (fp32 and bf16 alike)
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_bf16_training_learns_on_the_device(toy_config, device):
    trainer, seen = _train_and_watch_dtype(
        toy_config, f"train.device={device.type}", "train.precision=bf16"
    )
    assert trainer.amp_dtype is torch.bfloat16 and trainer.scaler is None
    assert seen == {torch.bfloat16}  # autocast was on for every training forward
    _params_on(trainer.model, device)  # weights (and the optimizer) stay fp32 on the device
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    _assert_learned(trainer)


def test_fp16_training_learns_on_cuda(toy_config, device):
    if device.type != "cuda":
        pytest.skip("fp16 training needs CUDA (see test_fp16_on_cpu_is_a_clear_error)")
    trainer, seen = _train_and_watch_dtype(toy_config, "train.device=cuda", "train.precision=fp16")
    assert trainer.amp_dtype is torch.float16 and trainer.scaler is not None  # loss scaling
    assert seen == {torch.float16}
    _params_on(trainer.model, device)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    _assert_learned(trainer)


def test_fp16_on_cpu_is_a_clear_error(toy_config):
    with pytest.raises(ValueError, match=r"train\.precision: fp16 needs a CUDA device"):
        Trainer(toy_config("train.device=cpu", "train.precision=fp16"))


# --------------------------------------------------------------------------- exact resume

RESUME = [
    "model.dropout=0.3",
    "data.toy_train_size=120",  # 8 batches of 16: the checkpoint at step 3 is mid-epoch
    "train.batch_size=16",
    "train.valid_every=3",
    "train.log_every=1",
    "train.keep_last=0",
    "train.valid_bleu=false",
]


def test_resume_mid_epoch_with_dropout_is_exact_on_the_device(toy_config, tmp_path, device,
                                                               monkeypatch):
    """6 steps in one go vs 3 + resume to 6: bit-identical weights and optimizer moments, and
    the same loss at every step. Dropout (0.3) draws from the device's generator (CUDA's for
    a CUDA model), so this needs that generator saved and restored.

    On CUDA, exactness also needs deterministic kernels (conftest.deterministic: atomics in
    index_put/embedding backward, cuBLAS workspaces); without them two identical runs can
    differ in the last bit and this test would fail for that reason, not for resume."""
    args = [f"train.device={device.type}", *RESUME]
    one, two = tmp_path / "one", tmp_path / "two"
    with deterministic(device, monkeypatch):
        Trainer(toy_config(*args, "train.max_steps=6", out_dir=one)).run()
        first = Trainer(toy_config(*args, "train.max_steps=3", out_dir=two))
        assert first.device == device
        first.run()
        resume(two, ["train.max_steps=6"])
    a, meta_a = read_safetensors(one / LAST_FILE)
    b, meta_b = read_safetensors(two / LAST_FILE)
    assert meta_a["trainer"]["step"] == meta_b["trainer"]["step"] == 6
    names = sorted(k for k in a if k.startswith(("model.", "optim.")))
    assert names == sorted(k for k in b if k.startswith(("model.", "optim.")))
    assert any(k.startswith("optim.") for k in names)
    for k in names:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in _records(two) if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert _train_losses(one) == _train_losses(two)


def test_checkpoint_stores_the_rng_of_every_device_used(toy_config, device):
    """last.safetensors holds the CPU generator (rng.torch) and, after training on CUDA, the
    CUDA device's (rng.cuda.N): the states as they were when it was written (nothing draws
    after the final checkpoint)."""
    trainer = Trainer(toy_config(
        f"train.device={device.type}", "model.dropout=0.3", "train.max_steps=2",
        "train.valid_every=2", "train.valid_bleu=false", "data.toy_train_size=100",
    ))
    trainer.run()
    tensors, _ = read_safetensors(Path(trainer.cfg.train.out_dir) / LAST_FILE)
    assert torch.equal(tensors["rng.torch"], torch.get_rng_state())
    if device.type == "cuda":
        key = f"rng.cuda.{trainer.device.index}"
        assert key in tensors, sorted(k for k in tensors if k.startswith("rng."))
        # dropout drew from this generator: the saved state is the current one, not the seed's
        assert torch.equal(tensors[key], torch.cuda.get_rng_state(trainer.device))


# --------------------------------------------------------------------------- device_for


def test_device_for_needs_a_gpu_per_local_process(monkeypatch):
    """train.device for a torchrun launch: auto is cuda only with a GPU for every process on
    this machine (LOCAL_WORLD_SIZE), else cpu and gloo; an explicit cuda without enough GPUs
    is an error naming train.device."""
    gpus = {"n": 1}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus["n"] > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus["n"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.device_for("auto") == "cpu"  # 2 processes, 1 GPU
    assert distributed.device_for("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"train\.device is cuda .* 1 CUDA device\(s\) for 2"):
        distributed.device_for("cuda")
    gpus["n"] = 2
    assert distributed.device_for("auto") == distributed.device_for("cuda") == "cuda"
    # two machines with one process and one GPU each: what counts is this machine's processes
    gpus["n"] = 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert distributed.device_for("auto") == "cuda"
    # without LOCAL_WORLD_SIZE (not torchrun) the world size is the local one
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert distributed.device_for("auto") == "cpu"
    # one process: auto is cuda exactly when there is a GPU
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.device_for("auto") == "cuda"
    gpus["n"] = 0
    assert distributed.device_for("auto") == "cpu"
    with pytest.raises(ValueError, match=r"train\.device"):
        distributed.device_for("cuda")
