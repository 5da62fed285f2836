"""Data-parallel training: 2 processes, as torchrun would start them.

Checks that parameters stay identical across ranks, that 2 processes x batch equals one
process accumulating the same 2 batches (the effective-batch rule), and that a 2-process run
stopped at a checkpoint resumes to the same result.

The runs use train.device=auto, as a user's would: with fewer GPUs than processes on the
machine (none in CI, one on a single-GPU box) that is cpu with gloo; with a GPU per process
it is cuda with nccl, one GPU per rank. The single-process reference runs on the device the
ranks used, so the comparison is between the same kernels.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import toy_raw

from attendo.checkpoint import MODEL_FILE, read_safetensors
from attendo.config import config_from_dict
from attendo.train import Trainer, resume

STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(steps: int, **extra) -> list[str]:
    base = {
        "train.max_steps": steps,
        "train.valid_every": 3,
        "train.valid_bleu": False,
        "train.batch_size": 8,
        "train.seed": 3,
        "model.dropout": 0.0,
        "train.device": "auto",  # as a user's run would (the toy config pins cpu)
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _worker(rank: int, world: int, port: int, out_dir: str, overrides: list[str], resume_run: bool):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    if resume_run:
        resume(out_dir, overrides)
        trainer_params = None
    else:
        trainer = Trainer(config_from_dict(toy_raw(out_dir), overrides))
        # where this rank trains, and how it talks (the group is gone after run())
        Path(out_dir, f"device-rank{rank}.txt").write_text(
            json.dumps({"device": str(trainer.device), "backend": dist.get_backend()
                        if dist.is_initialized() else None})
        )
        trainer.run()
        trainer_params = {k: v.tolist() for k, v in trainer.model.state_dict().items()}
    if trainer_params is not None:
        Path(out_dir, f"params-rank{rank}.json").write_text(json.dumps(trainer_params))


def _spawn(out_dir: Path, overrides: list[str], resume_run: bool = False) -> None:
    mp.spawn(
        _worker, args=(2, _free_port(), str(out_dir), overrides, resume_run), nprocs=2, join=True
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_safetensors(path)
    return tensors


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _spawn(out, _overrides(STEPS))
    return out


def _rank_device(run: Path, rank: int) -> dict:
    return json.loads((run / f"device-rank{rank}.txt").read_text())


def test_ranks_pick_gloo_on_cpu_without_a_gpu_per_process(two_process_run):
    """train.device=auto (distributed.device_for): 2 processes on a machine with fewer than
    2 GPUs train on the CPU with gloo instead of crowding one GPU or failing in nccl."""
    ranks = [_rank_device(two_process_run, r) for r in (0, 1)]
    if torch.cuda.device_count() < 2:
        assert ranks == [{"device": "cpu", "backend": "gloo"}] * 2
    else:
        assert ranks == [{"device": f"cuda:{r}", "backend": "nccl"} for r in (0, 1)]


def test_ranks_hold_identical_parameters(two_process_run):
    p0 = json.loads((two_process_run / "params-rank0.json").read_text())
    p1 = json.loads((two_process_run / "params-rank1.json").read_text())
    assert p0.keys() == p1.keys()
    for k in p0:
        assert torch.equal(torch.tensor(p0[k]), torch.tensor(p1[k])), k


def test_two_processes_equal_one_process_accumulating(two_process_run, tmp_path):
    # the reference runs on the ranks' device type (auto would pick cuda on a 1-GPU machine
    # while the ranks fell back to the CPU)
    kind = torch.device(_rank_device(two_process_run, 0)["device"]).type
    single = tmp_path / "single"
    Trainer(config_from_dict(toy_raw(single), _overrides(
        STEPS, **{"train.accum_steps": 2, "train.device": kind}))).run()
    ddp = _weights(two_process_run / MODEL_FILE)
    one = _weights(single / MODEL_FILE)
    assert ddp.keys() == one.keys()
    for k in ddp:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    # and the runs did train: weights moved away from a fresh model's (built on the CPU, as
    # the saved weights are read)
    fresh = Trainer(config_from_dict(toy_raw(tmp_path / "fresh"),
                                     _overrides(0 + 1, **{"train.device": "cpu"})))
    moved = any(
        not torch.allclose(fresh.model.state_dict()[k], one[k]) for k in one
    )
    fresh.close()
    assert moved


def test_stopped_two_process_run_resumes_to_the_same_weights(two_process_run, tmp_path):
    out = tmp_path / "stopped"
    _spawn(out, _overrides(3))  # stops at step 3 with last.safetensors written
    _, meta = read_safetensors(out / "last.safetensors")
    assert meta["trainer"]["step"] == 3
    _spawn(out, [f"train.max_steps={STEPS}"], resume_run=True)
    resumed = _weights(out / MODEL_FILE)
    straight = _weights(two_process_run / MODEL_FILE)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-4, atol=1e-5, msg=k)


def test_ranks_that_disagree_on_config_fail_clearly(tmp_path):
    mp.spawn(_disagree_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "ok-0").exists() and (tmp_path / "ok-1").exists()


def _disagree_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    cfg = config_from_dict(toy_raw(out_dir), _overrides(2, **{"train.lr": 0.001 * (rank + 1)}))
    try:
        Trainer(cfg)
    except RuntimeError as e:
        assert "ranks disagree on the config" in str(e)
        Path(out_dir, f"ok-{rank}").write_text("raised")
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
