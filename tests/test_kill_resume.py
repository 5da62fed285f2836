"""Kill test: a training run with dropout on, SIGKILLed at five moments (two of them inside
a checkpoint write) and resumed with ``attendo train --resume`` each time, ends bit-identical
to a run that was never interrupted; metrics.jsonl has each step once; no temporary file of
an interrupted write is left behind.

The runs are real processes (``python -m attendo``), killed with SIGKILL: nothing in attendo
gets a chance to clean up, as after a power cut or the OOM killer.

The moments are points in the run, not wall-clock delays, so the test cannot race however
loaded the machine is. Each killed run gets the test-only environment variable
``ATTENDO_STOP_AT`` (:func:`attendo.utils.stop_point`; unset, it costs nothing), and stops
itself with SIGSTOP there; the test waits for the stopped state (``os.waitpid`` with
``WUNTRACED``), then sends SIGKILL:

- ``ATTENDO_STOP_AT=update:N``: right after update N (its metrics line written; when N is a
  multiple of train.valid_every, its checkpoint too);
- ``ATTENDO_STOP_AT=write:NAME[:K]``: inside the K-th atomic write of the file NAME in that
  process (``model.safetensors``, ``step-40.safetensors``, ``last.safetensors``): its
  temporary file is written and fsynced, the rename over NAME has not happened.

A seeded RNG picks the five points: the first inside one of the three writes of the first
checkpoint (no checkpoint is complete yet: the run has to start again), the fourth inside a
write of a later checkpoint, the others after an update between two checkpoints.
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


def _env(stop_at: str | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    env.pop("ATTENDO_STOP_AT", None)
    if stop_at is not None:
        env["ATTENDO_STOP_AT"] = stop_at
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


def _kill_when_stopped(proc: subprocess.Popen, timeout: float = 600) -> bool:
    """Wait until ``proc`` stops itself at its ATTENDO_STOP_AT point (SIGSTOP), then SIGKILL
    it. False if it exited first (it never reached the point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid == 0:  # still running
            time.sleep(0.01)
            continue
        if os.WIFSTOPPED(status):
            proc.send_signal(signal.SIGKILL)  # a stopped process dies of SIGKILL at once
            proc.wait()
            return True
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        return False
    proc.kill()
    proc.wait()
    pytest.fail(f"the run neither stopped nor ended within {timeout} s")


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
    kept = 0  # step of the last complete checkpoint, where the next run resumes (0: none)
    kills = []
    for plan in ["first write", "update", "update", "later write", "update"]:
        if plan == "first write":  # one of the three files of the checkpoint at VALID_EVERY
            name = rng.choice(["model.safetensors", f"step-{VALID_EVERY}.safetensors",
                               "last.safetensors"])
            stop_at, step = f"write:{name}", VALID_EVERY
        elif plan == "later write":  # the step checkpoint or last.safetensors, whichever the
            # first kill did not hit (model.safetensors is written only when validation improves)
            step = rng.choice(range(max(kept, VALID_EVERY) + VALID_EVERY, STEPS + 1, VALID_EVERY))
            nth = (step - kept) // VALID_EVERY  # this run's nth checkpoint
            step_file, last_file = f"write:step-{step}.safetensors", f"write:last.safetensors:{nth}"
            stop_at = (last_file if "step-" in kills[0] else step_file if "last." in kills[0]
                       else rng.choice([step_file, last_file]))
        else:  # between two checkpoints
            step = rng.choice([n for n in range(kept + 1, STEPS) if n % VALID_EVERY])
            stop_at = f"update:{step}"
        # as a user would: `attendo train cfg.yaml` again if the run never got as far as
        # writing its config, else `attendo train --resume DIR`
        started = (run / "config.yaml").exists()
        with open(tmp_path / "stderr.txt", "w") as err:
            proc = subprocess.Popen(_train_cmd(cfg, run if started else None),
                                    env=_env(stop_at), stdout=subprocess.DEVNULL, stderr=err)
            killed = _kill_when_stopped(proc)
        if not killed:
            pytest.fail(f"the run ended (code {proc.returncode}) before {stop_at}: "
                        f"{(tmp_path / 'stderr.txt').read_text()[-2000:]}")
        kills.append(stop_at)
        assert _last_step(run) == step, kills  # it stopped where it was told, nowhere else
        if plan.endswith("write"):  # inside the write: its temporary file is there
            assert _temporary_files(run), kills
            kept = step - VALID_EVERY  # last.safetensors is still the one before
        else:
            kept = step // VALID_EVERY * VALID_EVERY
        if plan == "first write":
            assert not (run / "last.safetensors").exists(), kills  # no complete checkpoint
    assert kept < STEPS
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


def _signal_when_stopped(proc: subprocess.Popen, signum: int, timeout: float = 600) -> None:
    """Wait until ``proc`` stops itself at its ATTENDO_STOP_AT point, send it ``signum`` and
    let it go on (SIGCONT): the signal is handled as if it came right after that update."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid and os.WIFSTOPPED(status):
            proc.send_signal(signum)
            proc.send_signal(signal.SIGCONT)
            return
        assert pid == 0, "the run ended before its stop point"
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"the run did not stop within {timeout} s")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_there_and_resume_is_bit_identical(tmp_path, signum):
    """Ctrl-C (SIGINT) or SIGTERM between two checkpoints: the run finishes its update, writes
    last.safetensors at that step, prints the command that resumes it and exits with 130 or
    143; that command continues it to the same weights as a run never interrupted (dropout
    on, so the RNG state is part of what must be restored)."""
    steps, at = 30, 13  # checkpoints every 20 updates: 13 is between two
    runs = {}
    for name in ("ref", "run"):
        raw = _config(tmp_path / name, "cpu")
        raw["train"].update(max_steps=steps)
        runs[name] = tmp_path / f"{name}.yaml"
        runs[name].write_text(yaml.safe_dump(raw))
    subprocess.run(_train_cmd(runs["ref"], None), env=_env(), check=True, capture_output=True,
                   timeout=600)
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(runs["run"], None), env=_env(f"update:{at}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _signal_when_stopped(proc, signum)
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == (130 if signum == signal.SIGINT else 143), err[-2000:]
    resume = f"attendo train --resume {run}"
    assert resume in err and f"at step {at}" in err, err[-2000:]
    from attendo.weights import read_header

    assert read_header(run / "last.safetensors").meta["trainer"]["step"] == at
    assert _temporary_files(run) == []
    done = subprocess.run([sys.executable, "-m", "attendo", *resume.split()[1:]], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _tensors(tmp_path / "ref" / "last.safetensors"), _tensors(run / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _train_losses(run) == _train_losses(tmp_path / "ref")


def test_a_second_signal_stops_at_once():
    """The first SIGINT asks for a checkpoint and a stop; a second one does not wait."""
    from attendo.train.interrupt import StopRequest, stop_on_signals

    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as stop:
        assert isinstance(stop, StopRequest) and stop.signame is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signame == "SIGTERM"  # handled: the process is still here
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back
