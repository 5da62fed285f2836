"""bench/gpu.sh: without a GPU it says so and exits 0; --cpu-smoke runs every phase's code on
the CPU in seconds and reports every field for every model. (The real GPU run takes 8 minutes
and is not run here.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GPU_SH = REPO / "bench" / "gpu.sh"

ROW_FIELDS = {
    "model", "config", "status", "params", "train_min", "updates", "window_s",
    "train_tgt_tok_per_s", "train_sents_per_s", "model_tflops_per_s",
    "model_flops_per_tgt_token", "mfu_pct", "sm_busy_pct", "gpu_mem_used_max_gib",
    "train_peak_mem_gib", "bleu", "beam5_sents_per_s", "beam5_tok_per_s",
}
DECODE_FIELDS = {"bleu_after_train_min", "bleu_signature", "test_sentences", "decode_s",
                 "decode_peak_mem_gib"}


def bench_env(out: Path) -> dict[str, str]:
    """The caller's environment without any benchmark knob, writing into ``out``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BENCH_") and k not in ("JOEYNMT_WHEELS", "MULTI30K_DIR")}
    env.update(PY=sys.executable, OUT=str(out), OMP_NUM_THREADS="2")
    return env


def last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, f"expected one JSON line on stdout, got: {stdout[-2000:]}"
    return json.loads(lines[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the real run takes minutes")
def test_gpu_sh_without_gpu_says_so_and_exits_0(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(GPU_SH)], capture_output=True, text=True, timeout=120,
                       env=bench_env(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = last_json(r.stdout)
    assert res["gpu"] is None
    assert "cuda" in res["reason"].lower()
    assert not out.exists()  # nothing measured, nothing written


@pytest.mark.slow
def test_gpu_sh_cpu_smoke_reports_every_field(tmp_path, shared_multi30k):
    out = tmp_path / "out"
    if not (shared_multi30k / "train.de.gz").exists():
        pytest.skip("the smoke run reads the gzip copy (train.de.gz ...)")
    env = dict(bench_env(out), MULTI30K_DIR=str(shared_multi30k))
    r = subprocess.run(["bash", str(GPU_SH), "--cpu-smoke"], capture_output=True, text=True,
                       timeout=170, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    res = last_json(r.stdout)
    assert res["mode"] == "cpu-smoke"
    for key in ("gpu", "driver", "torch", "date", "peak", "models", "peer", "total_s"):
        assert key in res, key
    assert res["peak"]["tflops"] > 0
    assert [m["model"] for m in res["models"]] == ["small_transformer", "base_transformer", "rnn"]
    for row in res["models"]:
        assert row["status"] == "ok", row
        missing = (ROW_FIELDS | DECODE_FIELDS) - row.keys()
        assert not missing, (row["model"], missing)
        assert row["train_tgt_tok_per_s"] > 0 and row["updates"] > 0
        assert row["mfu_pct"] is not None and row["mfu_pct"] > 0
        assert row["model_flops_per_tgt_token"] > 6 * row["matrix_params_decoder"]
        assert 0 <= row["bleu"] <= 100
        assert row["beam5_sents_per_s"] > 0 and row["beam5_tok_per_s"] > 0
        assert row["sm_busy_pct"] is None and row["train_peak_mem_gib"] is None  # CPU
        hyps = (out / "details" / f"{row['model']}.beam5.en").read_text().splitlines()
        assert len(hyps) == row["test_sentences"]
        assert (out / "details" / f"{row['model']}.train.log").exists()
    assert res["peer"]["status"] == "not run" and res["peer"]["reason"]
    assert res["peer"]["ratio_attendo_over_peer"] is None
    assert json.loads((out / "result.json").read_text())["models"] == res["models"]
    md = (out / "result.md").read_text()
    assert "| small_transformer |" in md and "Joey NMT" in md
    assert "| small_transformer |" in r.stderr  # the table on stderr too
