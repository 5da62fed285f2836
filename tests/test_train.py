"""Training: checkpoints, exact resume, schedules, early stopping, metrics, data errors."""

from __future__ import annotations

import gzip
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import make_model, random_batch

import attendo
from attendo.checkpoint import (
    load_training_state,
    load_weights,
    read_safetensors,
    save_training_state,
    save_weights,
)
from attendo.config import ConfigError, TrainConfig
from attendo.data.corpus import CorpusError
from attendo.data.vocab import Vocab
from attendo.train import Trainer, resume
from attendo.train.schedule import lr_factor

V = 13


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src, lens = random_batch([5, 3, 4], V, g)
    tgt = torch.randint(4, V, (3, 4), generator=g)
    tgt_in = torch.cat([torch.full((3, 1), Vocab.BOS), tgt], 1)
    tgt_out = torch.cat([tgt, torch.full((3, 1), Vocab.EOS)], 1)
    return src, lens, tgt_in, tgt_out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _model_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_safetensors(path)
    return {
        k.removeprefix("model."): v
        for k, v in tensors.items()
        if not k.startswith(("optim.", "rng."))
    }


def assert_same_weights(a: Path, b: Path):
    ta, tb = _model_tensors(a), _model_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], msg=k)


# --------------------------------------------------------------------------- checkpoints


def test_weights_round_trip_is_safetensors(tmp_path):
    model = make_model(V, tie_output=True, emb_dim=12, attention="additive")
    path = tmp_path / "w.safetensors"
    save_weights(path, model, {"step": 7})
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])  # a safetensors header, not a pickle or zip archive
    assert data[:2] not in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05")
    assert set(header) - {"__metadata__"} == set(model.state_dict())

    torch.manual_seed(123)
    other = make_model(V, tie_output=True, emb_dim=12, attention="additive")
    src, lens, tgt_in, _ = _batch()
    with torch.no_grad():
        before = other.log_probs(src, lens, tgt_in)[0]
        assert not torch.allclose(before, model.log_probs(src, lens, tgt_in)[0])
    assert load_weights(path, other) == {"step": 7}
    assert other.decoder.out.weight is other.decoder.embed.weight  # still tied
    with torch.no_grad():
        torch.testing.assert_close(
            other.log_probs(src, lens, tgt_in)[0],
            model.log_probs(src, lens, tgt_in)[0],
            rtol=0,
            atol=0,
        )


def test_load_weights_into_a_different_model_names_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, make_model(V, attention="additive"))
    with pytest.raises(ValueError, match=r"w\.safetensors: weights do not match"):
        load_weights(path, make_model(V, attention="general"))


def test_training_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = make_model(V, dropout=0.3).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for seed in range(3):
        loss, _, _ = model.loss(*_batch(seed), Vocab.PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path / "last.safetensors"
    save_training_state(path, model, opt, {"step": 3, "history": [{"ppl": 2.5}]})
    rng_after_save = torch.get_rng_state()

    torch.manual_seed(99)
    model2 = make_model(V, dropout=0.3).train()
    opt2 = torch.optim.Adam(model2.parameters(), lr=5.0)
    torch.rand(10)  # move the RNG away from the saved state
    assert load_training_state(path, model2, opt2) == {"step": 3, "history": [{"ppl": 2.5}]}
    assert torch.equal(torch.get_rng_state(), rng_after_save)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-2)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for pid in s1:
        for key in s1[pid]:
            torch.testing.assert_close(torch.as_tensor(s2[pid][key]), torch.as_tensor(s1[pid][key]))
    # one more identical step (dropout draws from the restored RNG) gives identical weights
    for m, o in ((model, opt), (model2, opt2)):
        torch.set_rng_state(rng_after_save)
        loss, _, _ = m.loss(*_batch(7), Vocab.PAD)
        o.zero_grad()
        loss.backward()
        o.step()
    for (n, p), (_, p2) in zip(model.named_parameters(), model2.named_parameters()):
        torch.testing.assert_close(p2, p, msg=n)


# --------------------------------------------------------------------------- trainer

RESUME = [
    "model.dropout=0.3",
    "data.toy_train_size=120",
    "train.batch_size=16",
    "train.valid_every=4",
    "train.log_every=2",
    "train.keep_last=0",
]


def test_resume_gives_the_same_weights_as_one_run(toy_config, tmp_path):
    """12 steps in one go == 8 steps, then resume to 12. An epoch is 8 batches, so the
    checkpoint falls on the epoch boundary and the resumed run continues into epoch 1."""
    one = tmp_path / "one"
    Trainer(toy_config(*RESUME, "train.max_steps=12", out_dir=one)).run()
    two = tmp_path / "two"
    Trainer(toy_config(*RESUME, "train.max_steps=8", out_dir=two)).run()
    assert json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 8
    resume(two, ["train.max_steps=12"])
    for step in (8, 12):
        assert_same_weights(
            one / f"checkpoints/step-{step}.safetensors",
            two / f"checkpoints/step-{step}.safetensors",
        )
    assert_same_weights(one / "last.safetensors", two / "last.safetensors")
    valid_one = [r for r in _records(one) if r["type"] == "valid"]
    valid_two = [r for r in _records(two) if r["type"] == "valid"]
    assert [r["step"] for r in valid_one] == [r["step"] for r in valid_two] == [4, 8, 12]
    assert [r["ppl"] for r in valid_one] == pytest.approx([r["ppl"] for r in valid_two])
    # the trainer state carries on: epoch, offset and token counts agree
    _, meta_one = read_safetensors(one / "last.safetensors")
    _, meta_two = read_safetensors(two / "last.safetensors")
    for key in ("step", "epoch", "offset", "tokens"):
        assert meta_one["trainer"][key] == meta_two["trainer"][key]
    assert meta_one["trainer"]["epoch"] >= 1


def test_resume_mid_epoch_with_dropout_is_exact(toy_config, tmp_path):
    """A checkpoint in the middle of an epoch (step 3 of 8), dropout on: the resumed run
    draws the same dropout masks as the unbroken one. (The batch loader used to take a seed
    from the global generator whenever it started, so a resumed run's dropout was shifted.)"""
    args = [*RESUME, "train.valid_every=3", "train.log_every=1"]
    one = tmp_path / "one"
    Trainer(toy_config(*args, "train.max_steps=6", out_dir=one)).run()
    two = tmp_path / "two"
    Trainer(toy_config(*args, "train.max_steps=3", out_dir=two)).run()
    resume(two, ["train.max_steps=6"])
    ta, tb = _model_tensors(one / "last.safetensors"), _model_tensors(two / "last.safetensors")
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k  # bit-identical, not merely close
    # each step logged once, the resumed steps with the unbroken run's losses
    steps = [r["step"] for r in _records(two) if r["type"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in _records(one) if r["type"] == "train"] == [
        r["loss"] for r in _records(two) if r["type"] == "train"]


def test_resume_drops_metrics_logged_after_the_checkpoint(
    toy_config, tmp_path, monkeypatch, attendo_handlers
):
    """A run killed at step 7 had logged steps 5-7 after its checkpoint at step 4; they are
    trained and logged again after resume, so each step must appear once (and a torn last
    line is dropped)."""
    run = tmp_path / "run"
    real_step = Trainer.train_step

    def dying_step(self, batch):
        if self.state.step == 7:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(toy_config(*RESUME, "train.log_every=1", out_dir=run)).run()
    monkeypatch.undo()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "st')  # the kill tore the last line
    resume(run, ["train.max_steps=12"])
    recs = _records(run)
    steps = [r["step"] for r in recs if r["type"] == "train"]
    assert steps == list(range(1, 13))
    assert [r["step"] for r in recs if r["type"] == "valid"] == [4, 8, 12]


def _weight_files(run: Path) -> dict[Path, bytes]:
    files = [run / "model.safetensors", run / "last.safetensors",
             *run.glob("checkpoints/*.safetensors")]
    return {p: p.read_bytes() for p in files if p.exists()}


def test_non_finite_loss_stops_training_and_saves_no_nan_model(toy_config, tmp_path):
    """A learning rate that blows the weights up, in a run resumed from a good checkpoint:
    training stops with an error naming train.lr; every weight file then on disk is finite,
    the best model stays byte for byte, and no later validation is 'best'."""
    from attendo.train import TrainingDiverged

    run = tmp_path / "run"
    Trainer(toy_config("train.max_steps=4", "train.valid_every=4", out_dir=run)).run()
    best = run / "model.safetensors"
    best_bytes = best.read_bytes()
    with pytest.raises(TrainingDiverged, match=r"training diverged: .*train\.lr"):
        resume(run, ["train.lr=1e38", "train.max_steps=40", "train.valid_every=1"])
    after = _weight_files(run)
    assert after[best] == best_bytes and len(after) > 2  # best, last and step checkpoints
    for path in after:
        for name, t in _model_tensors(path).items():
            assert torch.isfinite(t).all(), f"{path.name}: {name}"
    valid = [r for r in _records(run) if r["type"] == "valid"]
    assert valid[0]["step"] == 4 and valid[0]["best"] and math.isfinite(valid[0]["ppl"])
    assert not any(r["best"] for r in valid[1:])  # anything validated after: never best


def test_interrupted_run_resumes_from_its_last_checkpoint(
    toy_config, tmp_path, monkeypatch, attendo_handlers
):
    one = tmp_path / "one"
    Trainer(toy_config(*RESUME, "train.max_steps=12", out_dir=one)).run()

    two = tmp_path / "two"
    real_step = Trainer.train_step

    def dying_step(self, batch):
        if self.state.step == 10:  # killed during step 11; last checkpoint is step 8
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(toy_config(*RESUME, "train.max_steps=12", out_dir=two)).run()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert not (two / "checkpoints/step-12.safetensors").exists()
    resume(two)
    assert_same_weights(one / "last.safetensors", two / "last.safetensors")
    assert_same_weights(one / "model.safetensors", two / "model.safetensors")


def test_resume_before_the_first_checkpoint_starts_again(toy_config, tmp_path, monkeypatch, attendo_handlers):
    def dying_step(self, batch):
        raise KeyboardInterrupt  # killed before the first checkpoint

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(toy_config(out_dir=run)).run()
    assert (run / "config.yaml").exists() and not (run / "last.safetensors").exists()
    monkeypatch.undo()
    # nothing to continue: --resume starts again from step 0 and ends like an unbroken run
    resume(run)
    one = tmp_path / "one"
    Trainer(toy_config(out_dir=one)).run()
    assert_same_weights(one / "last.safetensors", run / "last.safetensors")
    with pytest.raises(ConfigError, match=r"config\.yaml: no such config file"):
        resume(tmp_path / "elsewhere")


def test_run_directory_metrics_and_pruning(toy_config, tmp_path):
    run = tmp_path / "run"
    result = Trainer(
        toy_config(
            "train.max_steps=20",
            "train.valid_every=5",
            "train.log_every=5",
            "train.keep_last=2",
            out_dir=run,
        )
    ).run()
    assert result["step"] == 20 and "max_steps" in result["reason"]
    for name in (
        "config.yaml",
        "src.vocab.json",
        "tgt.vocab.json",
        "src.tokenizer.json",
        "tgt.tokenizer.json",
        "model.safetensors",
        "last.safetensors",
        "train.log",
    ):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-15.safetensors",
        "step-20.safetensors",
    ]
    recs = _records(run)
    train = [r for r in recs if r["type"] == "train"]
    valid = [r for r in recs if r["type"] == "valid"]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert [r["step"] for r in valid] == [5, 10, 15, 20]
    for r in train:
        assert r["loss"] > 0 and r["ppl"] == pytest.approx(math.exp(r["loss"]), rel=1e-6)
        assert r["lr"] == pytest.approx(0.003) and r["tok_per_s"] > 0
    for r in valid:
        assert {"loss", "ppl", "bleu", "example", "best"} <= r.keys()
        assert 0 <= r["bleu"] <= 100
    assert len(result["history"]) == 4
    # model.safetensors holds the best validation's weights, and attendo.load uses it
    best = min(valid, key=lambda r: r["ppl"])
    assert [r["step"] for r in valid if r["best"]][-1] == best["step"]
    if best["step"] >= 15:
        assert_same_weights(
            run / "model.safetensors", run / f"checkpoints/step-{best['step']}.safetensors"
        )
    translator = attendo.load(run)
    (out,) = translator.translate(["a b c"], beam=2, return_attention=True)
    assert out.attention.shape == (len(out.tgt_tokens), 3)


@pytest.mark.parametrize(
    "kw,expect",
    [
        (dict(schedule="constant"), {1: 1.0, 10: 1.0, 1000: 1.0}),
        (dict(schedule="constant", warmup_steps=10), {1: 0.1, 5: 0.5, 10: 1.0, 11: 1.0, 500: 1.0}),
        (dict(schedule="plateau", warmup_steps=4), {1: 0.25, 4: 1.0, 100: 1.0}),
        (
            dict(schedule="inverse_sqrt", warmup_steps=100),
            {1: 0.01, 50: 0.5, 100: 1.0, 400: 0.5, 10000: 0.1},
        ),
        (
            dict(schedule="linear", warmup_steps=10, max_steps=110),
            {10: 1.0, 60: 0.5, 100: 0.1, 110: 0.0, 200: 0.0},
        ),
        (dict(schedule="linear", max_steps=100), {1: 0.99, 50: 0.5, 100: 0.0}),
    ],
)
def test_lr_factor_values(kw, expect):
    cfg = TrainConfig(**kw)
    for step, value in expect.items():
        assert lr_factor(cfg, step) == pytest.approx(value), step


@pytest.mark.parametrize(
    "kw",
    [
        dict(schedule="inverse_sqrt", warmup_steps=50),
        dict(schedule="linear", warmup_steps=10, max_steps=200),
        dict(schedule="linear", warmup_steps=80, max_steps=100),  # warmup longer than half
        dict(schedule="constant", warmup_steps=30),
    ],
)
def test_lr_factor_shape(kw):
    """Rises during warmup, peaks at 1 at the end of warmup, never exceeds 1, never negative."""
    cfg = TrainConfig(**kw)
    w = cfg.warmup_steps
    top = cfg.max_steps or 300
    f = [lr_factor(cfg, s) for s in range(1, top + 1)]
    assert all(0.0 <= x <= 1.0 + 1e-12 for x in f), max(f)
    assert f[w - 1] == pytest.approx(1.0)
    assert f[:w] == sorted(f[:w])
    assert f[w - 1 :] == sorted(f[w - 1 :], reverse=True)


def test_trainer_applies_the_schedule(toy_config, tmp_path):
    run = tmp_path / "run"
    Trainer(
        toy_config(
            "train.max_steps=6",
            "train.log_every=1",
            "train.valid_every=6",
            "train.warmup_steps=4",
            "train.valid_bleu=false",
            out_dir=run,
        )
    ).run()
    lrs = [r["lr"] for r in _records(run) if r["type"] == "train"]
    assert lrs == pytest.approx([0.003 * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)])


def _fake_validate(values):
    """A Trainer.validate returning the given perplexities in turn (then the last one)."""
    it = iter(values)
    last = [None]

    def validate(self):
        last[0] = next(it, last[0])
        return {"type": "valid", "step": self.state.step, "loss": math.log(last[0]), "ppl": last[0]}

    return validate


def test_early_stopping_with_patience(toy_config, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", _fake_validate([5.0, 4.0, 4.5, 4.0, 6.0, 1.0]))
    run = tmp_path / "run"
    result = Trainer(
        toy_config(
            "train.max_steps=100",
            "train.valid_every=2",
            "train.patience=3",
            "train.keep_last=0",
            out_dir=run,
        )
    ).run()
    # improvements at steps 2 and 4; 6, 8 and 10 are no better than 4.0 -> stop at 10
    assert result["step"] == 10
    assert "early stopping" in result["reason"]
    assert result["best"] == pytest.approx(4.0)
    assert [h["best"] for h in result["history"]] == [True, True, False, False, False]
    assert_same_weights(run / "model.safetensors", run / "checkpoints/step-4.safetensors")


def test_plateau_schedule_reduces_lr(toy_config, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", _fake_validate([5.0, 6.0, 6.0, 6.0, 6.0]))
    run = tmp_path / "run"
    Trainer(
        toy_config(
            "train.max_steps=10",
            "train.valid_every=2",
            "train.log_every=2",
            "train.schedule=plateau",
            "train.plateau_patience=2",
            "train.plateau_factor=0.1",
            "train.min_lr=0.001",
            out_dir=run,
        )
    ).run()
    lrs = [r["lr"] for r in _records(run) if r["type"] == "train"]
    # bad validations at steps 4 and 6 scale the lr by 0.1 from step 7 on, but not below min_lr
    assert lrs == pytest.approx([0.003, 0.003, 0.003, 0.001, 0.001])


# --------------------------------------------------------------------------- data errors


def _files(tmp_path, src_lines, tgt_lines, raw_src: bytes | None = None):
    src, tgt = tmp_path / "train.src", tmp_path / "train.tgt"
    src.write_bytes(
        raw_src if raw_src is not None else "".join(s + "\n" for s in src_lines).encode()
    )
    tgt.write_text("".join(t + "\n" for t in tgt_lines), encoding="utf-8")
    return ["data.toy=", f"data.train_src={src}", f"data.train_tgt={tgt}"]


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("empty", r"train\.src:3: empty source line"),
        ("count", r"train\.src: has 4 lines but .*train\.tgt has 5 lines"),
        ("utf8", r"train\.src:2: invalid UTF-8"),
    ],
)
def test_bad_corpus_raises_corpus_error_through_trainer(
    toy_config, tmp_path, case, pattern, attendo_handlers
):
    src = ["a b", "c d", "e f", "g h"]
    tgt = ["b a", "d c", "f e", "h g"]
    raw = None
    if case == "empty":
        src[2] = "   "
    elif case == "count":
        tgt.append("x y")
    else:
        raw = b"a b\nc \xff d\ne f\ng h\n"
    overrides = _files(tmp_path, src, tgt, raw)
    with pytest.raises(CorpusError, match=pattern):
        Trainer(toy_config(*overrides, out_dir=tmp_path / "run"))


def test_skip_bad_lines_trains_on_the_rest(toy_config, tmp_path):
    src = ["a b", "", "c d e", "f g"] * 5
    tgt = ["b a", "x", "e d c", "g f"] * 5
    overrides = _files(tmp_path, src, tgt)
    trainer = Trainer(
        toy_config(
            *overrides,
            "data.skip_bad_lines=true",
            "train.max_steps=2",
            "train.valid_every=2",
            out_dir=tmp_path / "run",
        )
    )
    assert len(trainer.stream.src_ids) == 15
    trainer.run()


def test_failed_trainer_releases_its_log_file(toy_config, tmp_path, monkeypatch, attendo_handlers):
    """A Trainer that fails (bad data in __init__, or an exception during run) must not leave
    its FileHandler on the 'attendo' logger: later runs in the same process would keep
    writing their log lines into the failed run's train.log."""
    logger = logging.getLogger("attendo")
    overrides = _files(tmp_path, ["a b", "c d"], ["b a"])
    with pytest.raises(CorpusError):
        Trainer(toy_config(*overrides, out_dir=tmp_path / "bad"))
    assert logger.handlers == attendo_handlers

    def boom(self, batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, "train_step", boom)
    trainer = Trainer(toy_config(out_dir=tmp_path / "dies"))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.run()
    assert logger.handlers == attendo_handlers


# --------------------------------------------------------------------------- real data


def _head_gz(src: Path, dst: Path, n: int) -> Path:
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


def _shared_file(shared: Path, name: str) -> Path:
    return shared / f"{name}.gz" if (shared / f"{name}.gz").exists() else shared / name


@pytest.mark.slow
def test_multi30k_loss_falls(shared_multi30k, toy_config, tmp_path):
    files = {}
    for split, n in (("train", 3000), ("val", 100)):
        for lang in ("de", "en"):
            files[f"{split}.{lang}"] = _head_gz(
                _shared_file(shared_multi30k, f"{split}.{lang}"), tmp_path / f"{split}.{lang}", n
            )
    run = tmp_path / "run"
    cfg = toy_config(
        "data.toy=",
        f"data.train_src={files['train.de']}",
        f"data.train_tgt={files['train.en']}",
        f"data.valid_src={files['val.de']}",
        f"data.valid_tgt={files['val.en']}",
        "data.tokenizer=bpe",
        "data.vocab_size=2000",
        "model.attention=additive",
        "model.attention_style=luong",
        "model.tie_output=true",
        "train.max_steps=200",
        "train.log_every=20",
        "train.valid_every=200",
        "train.valid_bleu=false",
        "train.lr=0.003",
        out_dir=run,
    )
    trainer = Trainer(cfg)
    assert len(trainer.src.vocab) > 1000
    trainer.run()
    train = [r for r in _records(run) if r["type"] == "train"]
    assert len(train) == 10
    first, last = train[0]["loss"], train[-1]["loss"]
    assert last < first - 1.0, (first, last)
    (valid,) = [r for r in _records(run) if r["type"] == "valid"]
    assert valid["ppl"] < math.exp(first)
