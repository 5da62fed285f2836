"""Kill test: a training run with dropout on, SIGKILLed at five moments (one of them inside
a checkpoint write) and resumed with ``attendo train --resume`` each time, ends bit-identical
to a run that was never interrupted; metrics.jsonl has each step once; no temporary file of
an interrupted write is left behind.

The runs are real processes (``python -m attendo``), killed with SIGKILL: nothing in attendo
gets a chance to clean up, as after a power cut or the OOM killer.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")

STEPS = 120
VALID_EVERY = 20  # a checkpoint every 20 steps: 6 in all


def _config(out: Path, device: str) -> dict:
    return {
        "data": {"toy": "reverse", "tokenizer": "word", "toy_train_size": 3000,
                 "toy_valid_size": 32, "toy_test_size": 16, "toy_max_len": 8},
        "model": {"emb_dim": 32, "enc_hidden": 64, "dec_hidden": 64, "attention": "additive",
                  "dropout": 0.3},
        "train": {"out_dir": str(out), "device": device, "progress": False, "threads": 1,
                  "batch_size": 16, "lr": 0.003, "max_steps": STEPS, "log_every": 1,
                  "valid_every": VALID_EVERY, "valid_max_sents": 16, "seed": 3},
    }


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _train_cmd(cfg: Path, resume_dir: Path | None) -> list[str]:
    if resume_dir is None:
        return [sys.executable, "-m", "attendo", "train", str(cfg)]
    return [sys.executable, "-m", "attendo", "train", "--resume", str(resume_dir)]


def _last_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    step = 0
    for line in path.read_text().splitlines():
        try:
            step = max(step, json.loads(line)["step"])
        except (ValueError, KeyError):
            pass  # a line torn by the kill
    return step


def _temporary_files(run: Path) -> list[Path]:
    return [p for d in (run, run / "checkpoints") if d.is_dir() for p in d.glob(".*.tmp")]


def _checkpoint_write_under_way(run: Path) -> bool:
    return any(".safetensors." in p.name for p in _temporary_files(run))


def _kill_during_write(proc: subprocess.Popen, run: Path, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as the temporary file of a weights or checkpoint write exists
    (the write is under way: not yet renamed). False if the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if _checkpoint_write_under_way(run):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    return False


def _kill_after_progress(proc: subprocess.Popen, run: Path, delay: float,
                         timeout: float = 120) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after it logged a step beyond its starting point."""
    start = _last_step(run)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if _last_step(run) > start:
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            return False
        time.sleep(0.005)
    return False


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(path).items() if not k.startswith("rng.")}


def _train_losses(run: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)  # every line parses: no torn line survives a resume
        if rec["type"] == "train":
            assert rec["step"] not in out, f"step {rec['step']} logged twice"
            out[rec["step"]] = rec["loss"]
    return out


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_killed_five_times_and_resumed_is_bit_identical(tmp_path, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ref = tmp_path / "ref"
    ref_cfg = tmp_path / "ref.yaml"
    ref_cfg.write_text(yaml.safe_dump(_config(ref, device)))
    subprocess.run(_train_cmd(ref_cfg, None), env=_env(), check=True, capture_output=True,
                   timeout=600)

    run = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(_config(run, device)))
    rng = random.Random(1234)
    # the first kill lands inside the first checkpoint write (the run has no complete
    # checkpoint yet), the fourth inside a later one; the others at random moments
    plans = ["write", "random", "random", "write", "random"]
    kills = []
    for plan in plans:
        # as a user would: `attendo train cfg.yaml` again if the run never got as far as
        # writing its config, else `attendo train --resume DIR`
        started = (run / "config.yaml").exists()
        proc = subprocess.Popen(_train_cmd(cfg, run if started else None), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if plan == "write":
            killed = _kill_during_write(proc, run)
        else:
            killed = _kill_after_progress(proc, run, rng.uniform(0.0, 0.4))
        if not killed:
            proc.kill()
            pytest.fail(f"the run ended before it could be killed ({plan}): "
                        f"{proc.stderr.read().decode()[-2000:]}")
        proc.stderr.close()
        kills.append((plan, _last_step(run)))
    assert kills[0][1] <= VALID_EVERY, kills  # the first kill came before a checkpoint existed
    assert kills[-1][1] < STEPS, kills
    done = subprocess.run(_train_cmd(cfg, run), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    for name in ("last.safetensors", "model.safetensors",
                 f"checkpoints/step-{STEPS}.safetensors"):
        a, b = _tensors(ref / name), _tensors(run / name)
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k} differs after {kills}"
    ref_losses, run_losses = _train_losses(ref), _train_losses(run)
    assert sorted(run_losses) == list(range(1, STEPS + 1))
    assert run_losses == ref_losses
    assert _temporary_files(run) == []


def test_run_killed_in_its_first_checkpoint_write_can_be_restarted(tmp_path, attendo_handlers):
    """What a kill inside the first checkpoint write leaves (model.safetensors and a step
    checkpoint, no last.safetensors, a temporary file): plain `attendo train` starts over
    instead of refusing, `--resume` starts over too, and the temporary file goes away."""
    from attendo.cli import main

    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    raw = _config(run, "cpu")
    raw["train"].update(max_steps=4, valid_every=2, log_every=2)
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg)]) == 0
    (run / "last.safetensors").unlink()  # as if killed before last.safetensors was renamed
    (run / ".last.safetensors.4242.0badcafe.tmp").write_bytes(b"\0" * 1000)
    (run / "checkpoints" / ".step-4.safetensors.4242.0badcafe.tmp").write_bytes(b"\0" * 10)
    assert main(["train", str(cfg)]) == 0  # no "already holds a training run"
    assert (run / "last.safetensors").exists() and _temporary_files(run) == []
    (run / "last.safetensors").unlink()
    (run / ".last.safetensors.4243.0badcafe.tmp").write_bytes(b"\0" * 1000)
    assert main(["train", "--resume", str(run)]) == 0  # no "nothing to resume from"
    assert (run / "last.safetensors").exists() and _temporary_files(run) == []
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == [2, 4]
