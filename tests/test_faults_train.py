"""Divergence under attack: a learning rate far too high stops training with one error line and
saves nothing from the diverged state; a model that diverged anyway still decodes.

- ``attendo train CFG train.lr=1e30`` (the probe of issue 29, which used to exit 0 and save as
  "best" a model with perplexity 2.7e43): exit code 2, one line naming the step and train.lr,
  no model.safetensors or last.safetensors; the same lr given to a resumed run leaves its
  last good checkpoint byte for byte, and that checkpoint resumes with a sane lr;
- ordinary runs (RNN and Transformer, validated from their first steps) stay far from every
  threshold of :mod:`attendo.train.divergence`;
- :class:`~attendo.train.divergence.DivergenceGuard` itself: noise, a warm-up and short spikes never
  stop it; a sustained loss spike, exploded gradients or weights and an impossible perplexity
  do, at the step where they happen;
- a model whose weights are huge but finite (a trained toy model scaled by 1e15 or 1e30, saved
  and loaded as usual) translates and evaluates, greedy and beam, RNN and Transformer: garbage
  text scored -inf, never an IndexError; for both searches a NaN or +inf log-probability is
  an impossible token.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_model, toy_raw, train_tiny
from torch import Tensor

import attendo
from attendo.checkpoint import MODEL_FILE, read_safetensors, save_weights
from attendo.cli import main
from attendo.config import config_from_dict
from attendo.model.interfaces import DecoderState
from attendo.search import beam_search, greedy_search
from attendo.train import Trainer
from attendo.train.divergence import (
    GRAD_NORM_LIMIT,
    MAX_BAD_UPDATES,
    PPL_FACTOR,
    SPIKE_FACTOR,
    SPIKE_NATS,
    SUSTAIN,
    WEIGHT_LIMIT,
    DivergenceGuard,
    TrainingDiverged,
)

# --------------------------------------------------------------------------- the CLI probe


def _config(tmp_path: Path, run: Path, **train) -> Path:
    raw = toy_raw(run)
    raw["train"].update(log_every=1, **train)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train_fails(capsys, *argv: str) -> str:
    """``attendo train ...`` in-process: exit code 2, one error line, no traceback."""
    code = main(["train", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("attendo train: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _weight_files(run: Path) -> dict[Path, bytes]:
    files = [run / MODEL_FILE, run / "last.safetensors", *run.glob("checkpoints/*")]
    return {p: p.read_bytes() for p in files if p.exists()}


def _train_steps(run: Path) -> list[int]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if r["type"] == "train"]


def test_lr_1e30_stops_with_one_line_and_saves_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = _config(tmp_path, run, max_steps=40, valid_every=20)
    line = _train_fails(capsys, str(cfg), "train.lr=1e30")
    m = re.search(r"training diverged: at step (\d+), .*likely cause: train\.lr=1e\+30", line)
    assert m, line
    step = int(m.group(1))
    assert step < 20, line  # caught from the loss, long before the first checkpoint
    assert _weight_files(run) == {}  # no best, no last, no step checkpoint
    assert _train_steps(run) == list(range(1, step))  # the update it names was not applied
    # nothing to resume from: --resume with a sane lr starts again and trains a sane model
    assert main(["train", "--resume", str(run), "train.lr=0.003", "train.max_steps=20"]) == 0
    tensors, _ = read_safetensors(run / MODEL_FILE)
    assert max(float(t.abs().max()) for t in tensors.values()) < WEIGHT_LIMIT


def test_divergence_keeps_the_last_good_checkpoint_which_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = _config(tmp_path, run, max_steps=4, valid_every=2)
    assert main(["train", str(cfg)]) == 0
    good = _weight_files(run)
    assert {p.name for p in good} == {MODEL_FILE, "last.safetensors", "step-2.safetensors",
                                      "step-4.safetensors"}
    line = _train_fails(capsys, "--resume", str(run), "train.lr=1e30", "train.max_steps=40")
    m = re.search(r"training diverged: at step (\d+), .*train\.lr=1e\+30", line)
    assert m and int(m.group(1)) > 4, line
    assert "checkpoints up to step 4 are kept" in line and f"--resume {run}" in line, line
    assert _weight_files(run) == good  # best and last byte for byte, no later checkpoint
    assert main(["train", "--resume", str(run), "train.lr=0.003", "train.max_steps=8"]) == 0
    assert _train_steps(run) == list(range(1, 9))  # resumed at step 4, each step logged once
    assert read_safetensors(run / "last.safetensors")[1]["trainer"]["step"] == 8


# --------------------------------------------------------------------------- ordinary runs


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_ordinary_training_stays_far_from_every_threshold(tmp_path, monkeypatch, arch):
    """The guard never stops an ordinary run, validated from step 2 on, and the margins are
    wide: every ratio to its threshold stays below a half (grad norm: a thousandth)."""
    spike, norms, ppl, weight = [], [], [], []
    update, check_validation = DivergenceGuard.update, DivergenceGuard.check_validation
    check_weights = DivergenceGuard.check_weights

    def spy_update(self, step, nll, grad_norm, kept):
        if self.level is not None:
            spike.append(nll / (SPIKE_FACTOR * self.level + SPIKE_NATS))
        norms.append(grad_norm)
        return update(self, step, nll, grad_norm, kept)

    def spy_validation(self, step, value, kept):
        ppl.append(value / (PPL_FACTOR * self.tgt_vocab_size))
        return check_validation(self, step, value, kept)

    def spy_weights(self, model, step, kept):
        weight.append(max(float(p.detach().abs().max()) for p in model.parameters())
                      / WEIGHT_LIMIT)
        return check_weights(self, model, step, kept)

    monkeypatch.setattr(DivergenceGuard, "update", spy_update)
    monkeypatch.setattr(DivergenceGuard, "check_validation", spy_validation)
    monkeypatch.setattr(DivergenceGuard, "check_weights", spy_weights)
    raw = toy_raw(tmp_path / "run")
    raw["train"].update(max_steps=60, valid_every=2, valid_max_sents=8, valid_bleu=False)
    if arch == "transformer":
        raw["model"].update(encoder="transformer", decoder="transformer", d_model=32, heads=2,
                            ff_dim=64, enc_layers=1, dec_layers=1)
    Trainer(config_from_dict(raw)).run()
    assert len(spike) == 59 and len(ppl) == 30 and len(weight) == 30
    assert max(spike) < 0.5 and max(ppl) < 0.5 and max(weight) < 0.5
    assert max(norms) < GRAD_NORM_LIMIT / 1000


# --------------------------------------------------------------------------- the guard


def _noisy_run(guard: DivergenceGuard, steps: range, rng: random.Random) -> None:
    """Ordinary updates: a loss rising 20% during a warm-up, then falling from ln|V| towards
    0.05 nats, with batch noise of -40%..+60%, and gradient norms of 0.1..50."""
    top = math.log(guard.tgt_vocab_size)
    for step in steps:
        base = top * (1 + 0.2 * min(step, 50) / 50) * math.exp(-step / 300) + 0.05
        guard.update(step, base * rng.uniform(0.6, 1.6), rng.uniform(0.1, 50.0), kept=0)


def test_guard_ignores_noise_warmup_and_short_spikes():
    rng = random.Random(0)  # any seed: no noisy update comes near a threshold
    guard = DivergenceGuard(1e-3, 8000, "run")
    _noisy_run(guard, range(1, 1001), rng)
    for step in range(1001, 1001 + SUSTAIN - 1):  # a short spike: the loss x50
        guard.update(step, 50.0, 1.0, kept=0)
    _noisy_run(guard, range(1001 + SUSTAIN, 1501), rng)
    for step in range(1501, 1501 + SUSTAIN - 1):  # a short burst of exploded gradients
        guard.update(step, 0.1, GRAD_NORM_LIMIT * 10, kept=0)
    _noisy_run(guard, range(1501 + SUSTAIN, 2001), rng)
    assert guard.far_off == 0 and guard.level < 1.0


def test_guard_stops_a_sustained_loss_spike_where_it_completes():
    guard = DivergenceGuard(1e-3, 8000, "runs/x")
    _noisy_run(guard, range(1, 301), random.Random(1))
    level = guard.level
    for step in range(301, 300 + SUSTAIN):
        guard.update(step, SPIKE_FACTOR * level + SPIKE_NATS + 0.5, 1.0, kept=200)
    with pytest.raises(TrainingDiverged) as e:
        guard.update(300 + SUSTAIN, SPIKE_FACTOR * level + SPIKE_NATS + 0.5, 1.0, kept=200)
    msg = str(e.value)
    assert msg.startswith(f"training diverged: at step {300 + SUSTAIN}, {SUSTAIN} updates in a "
                          "row were far off, the last with a training loss of"), msg
    assert "train.lr=0.001" in msg and "up to step 200 are kept" in msg and "\n" not in msg
    assert "--resume runs/x train.lr=" in msg


@pytest.mark.parametrize("nll", [2.0, None])  # None: a distributed run, which has no shared loss
def test_guard_stops_exploded_gradients(nll):
    guard = DivergenceGuard(1.0, 100, "run")
    for step in range(1, SUSTAIN):
        guard.update(step, nll, GRAD_NORM_LIMIT * 2, kept=0)
    with pytest.raises(TrainingDiverged, match=rf"at step {SUSTAIN}, .*gradient norm of 2e\+06"
                                               r".*train\.lr=1 is too high"):
        guard.update(SUSTAIN, nll, GRAD_NORM_LIMIT * 2, kept=0)


def test_guard_counts_non_finite_updates_in_a_row():
    guard = DivergenceGuard(1e30, 100, "run")
    for step in range(1, MAX_BAD_UPDATES):
        assert guard.non_finite(step, "loss", kept=0) == step
    guard.update(MAX_BAD_UPDATES, 3.0, 1.0, kept=0)  # one finite update starts the count again
    for step in range(MAX_BAD_UPDATES + 1, 2 * MAX_BAD_UPDATES):
        guard.non_finite(step, "loss", kept=0)
    with pytest.raises(TrainingDiverged, match=rf"at step {2 * MAX_BAD_UPDATES}, "
                                               rf"{MAX_BAD_UPDATES} updates in a row had a "
                                               r"non-finite gradient norm.*train\.lr=1e\+30"):
        guard.non_finite(2 * MAX_BAD_UPDATES, "gradient norm", kept=0)


def test_guard_checks_weights():
    guard = DivergenceGuard(1e-3, 13, "run")
    model = make_model()
    guard.check_weights(model, 10, kept=8)  # an initialised model
    name, p = list(model.named_parameters())[3]
    with torch.no_grad():
        p.view(-1)[0] = -2 * WEIGHT_LIMIT
    with pytest.raises(TrainingDiverged, match=rf"at step 10, weights exploded: \|{re.escape(name)}"
                                               r"\| reaches 2e\+04.*up to step 8 are kept"):
        guard.check_weights(model, 10, kept=8)
    with torch.no_grad():
        p.view(-1)[0] = float("nan")
    with pytest.raises(TrainingDiverged, match=rf"weights are not finite \({re.escape(name)}\)"):
        guard.check_weights(model, 10, kept=8)


def test_guard_checks_validation_perplexity():
    V = 63
    guard = DivergenceGuard(0.5, V, "run")
    for ppl in (1.0, V, PPL_FACTOR * V):  # perfect, uniform, the bound itself
        guard.check_validation(4, ppl, kept=2)
    for ppl in (PPL_FACTOR * V + 1, math.exp(100), float("nan")):
        with pytest.raises(TrainingDiverged, match=r"at step 4, validation perplexity is .*above "
                                                   r"630 .*63-entry.*train\.lr=0\.5"):
            guard.check_validation(4, ppl, kept=2)


# --------------------------------------------------------------------------- decoding garbage


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("garbage")
    return {
        "rnn": train_tiny(root / "rnn"),
        "transformer": train_tiny(root / "transformer", encoder="transformer",
                                  decoder="transformer", d_model=16, heads=2, ff_dim=32,
                                  enc_layers=1, dec_layers=1),
    }


def _scaled_copy(src: Path, dst: Path, scale: float) -> Path:
    """A copy of a model directory whose weights are all multiplied by ``scale`` (finite)."""
    shutil.copytree(src, dst)
    tr = attendo.load(dst)
    with torch.no_grad():
        for p in tr.model.parameters():
            p.mul_(scale)
    save_weights(dst / MODEL_FILE, tr.model, {"step": 0})
    return dst


@pytest.mark.parametrize("scale", [1e15, 1e30])
@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_huge_finite_weights_decode_to_garbage_not_a_crash(tiny_models, tmp_path, capsys, arch,
                                                           scale):
    model = _scaled_copy(tiny_models[arch], tmp_path / "model", scale)
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("a b c\nd e\nb\nc c d a\n")
    ref.write_text("a b c\nd e\nb\nc c d a\n")
    for beam in ("1", "5"):
        out = tmp_path / f"beam{beam}.txt"
        assert main(["translate", "--model", str(model), "--beam", beam, "-i", str(src),
                     "-o", str(out)]) == 0, capsys.readouterr().err
        assert len(out.read_text().splitlines()) == 4
        assert main(["translate", "--model", str(model), "--beam", beam, "--n-best", beam,
                     "-i", str(src), "-o", str(out)]) == 0, capsys.readouterr().err
        assert main(["evaluate", "--model", str(model), "--src", str(src), "--ref", str(ref),
                     "--beam", beam]) == 0, capsys.readouterr().err
    tr = attendo.load(model)
    for beam in (1, 5):
        for t in tr.translate(src.read_text().splitlines(), beam=beam, n_best=beam):
            assert isinstance(t.text, str) and t.nbest
            for h in t.nbest:  # a real score, or -inf: never NaN, never +inf
                assert h.score == -math.inf or math.isfinite(h.score), h.score
            json.dumps(t.to_dict(), allow_nan=False)  # -inf is null in the JSON form


@dataclass
class _TableState(DecoderState):
    t: Tensor  # (B,) steps taken


class _TableDecoder:
    """Every row gets the log-probabilities ``table[t]`` (V,) at step t."""

    def __init__(self, table: Tensor):
        self.table = table  # (T, V)

    def start(self, batch: int) -> _TableState:
        return _TableState(torch.zeros(batch, dtype=torch.long))

    def step(self, y_prev: Tensor, state: _TableState, need_info: bool = True):
        t = state.t.clamp(max=len(self.table) - 1)
        return self.table[t].clone(), _TableState(state.t + 1), {}  # (B, V)


EOS = 3


def _search(table: Tensor, beam: int, caps: int = 5):
    dec = _TableDecoder(table)
    if beam == 1:
        return [[h] for h in greedy_search(dec, dec.start(2), 2, 2, EOS, caps)]
    return beam_search(dec, dec.start(2), 2, 2, EOS, caps, beam_size=beam, n_best=2)


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_invalid_log_probabilities_are_impossible_tokens(beam, bad):
    """A NaN or +inf log-probability acts exactly as -inf: same tokens, same scores."""
    table = torch.log_softmax(torch.tensor([[3.0, 0.0, 0.0, 1.0, 2.0, 2.5]] * 6), -1)  # (T, V)
    table[:, 0] = -math.inf  # as a real model's impossible tokens (before: NaN ranked first)
    table[1, EOS] = -math.inf
    bad_table = table.clone()
    bad_table[:, 0] = bad
    bad_table[1, EOS] = bad
    want, got = _search(table, beam), _search(bad_table, beam)
    assert [[(h.tokens, h.score) for h in hs] for hs in got] == \
        [[(h.tokens, h.score) for h in hs] for hs in want]
    assert all(0 not in h.tokens for hs in got for h in hs)


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_model_with_no_valid_log_probability_still_gets_a_hypothesis(beam, bad):
    """Every token impossible at every step (before: beam search returned no hypothesis and
    the translator's ``hyps[0]`` raised IndexError): one hypothesis per sentence, at its
    length cap, scored -inf."""
    for hs in _search(torch.full((6, 6), bad), beam, caps=4):
        assert len(hs) >= 1
        assert hs[0].score == -math.inf and len(hs[0].tokens) == 4


# --------------------------------------------------------------------------- out of memory
def test_out_of_memory_during_training_is_one_line_and_keeps_checkpoints(tmp_path, capsys,
                                                                         monkeypatch):
    """A batch whose activations do not fit (the model's own size is checked before it is
    built, activations cannot be) ends in one line naming train.batch_size, exit 2; the
    checkpoints already written stay and resume. Any other RuntimeError is a bug: traceback."""
    run = tmp_path / "run"
    cfg = _config(tmp_path, run, max_steps=4, valid_every=2)
    assert main(["train", str(cfg)]) == 0
    before = _weight_files(run)
    real_step = Trainer.train_step

    def oom(self, batches):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "68719476736 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(Trainer, "train_step", oom)
    line = _train_fails(capsys, "--resume", str(run), "train.max_steps=8")
    assert "out of memory" in line and "train.batch_size" in line, line
    assert _weight_files(run) == before
    monkeypatch.setattr(Trainer, "train_step", lambda self, b: (_ for _ in ()).throw(
        RuntimeError("mat1 and mat2 shapes cannot be multiplied")))
    with pytest.raises(RuntimeError, match="shapes"):
        main(["train", "--resume", str(run), "train.max_steps=8"])
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main(["train", "--resume", str(run), "train.max_steps=8"]) == 0
    assert _train_steps(run) == list(range(1, 9))
