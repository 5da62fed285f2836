"""The one-GPU benchmark behind ``bench/gpu.sh``: one command, at most 8 minutes, no network.

Prints one JSON object on stdout (and the same as a Markdown table on stderr) and writes both,
with the logs of every phase, into an output folder: ``$OUT`` if set, else ``./gpu_bench_out``.

    bash bench/gpu.sh                 # on a machine with one CUDA GPU
    bash bench/gpu.sh --cpu-smoke     # the same code path on the CPU, tiny models, seconds
    bash bench/gpu.sh --pack          # details/ packed into details.tar.gz (4 files in all)

Where ``torch.cuda.is_available()`` is false (and not ``--cpu-smoke``) it prints
``{"gpu": null, "reason": ...}`` and exits 0, writing nothing.

Phases, in this order, each bounded in time (minutes from the environment, defaults here):

1. **bf16 matmul peak** (``BENCH_PEAK_S``, 10 s): ``torch.matmul`` of two 8192x8192 bf16
   matrices, 3 warm-ups, then groups of 5 timed with ``torch.cuda.synchronize``; the best
   group's mean TFLOP/s (2*n^3 FLOPs a product) is the peak MFU is measured against.
2. **small Transformer** (configs/multi30k_transformer_gpu.yaml, ``BENCH_SMALL_MIN``, 3):
   trains, then sacreBLEU on test_2016_flickr with beam 5 and the beam-5 decoding speed.
3. **base Transformer** (configs/base_transformer_gpu.yaml on Multi30k, ``BENCH_BASE_MIN``,
   0.75): training throughput only (``BENCH_BASE_DECODE=1`` decodes it too).
4. **RNN** (configs/multi30k_rnn.yaml, train.device=cuda, ``BENCH_RNN_MIN``, 0.75): training
   throughput, BLEU and decoding speed.
5. **peer: Joey NMT 2.3** (``BENCH_PEER_MIN``, 0.75): the small Transformer's size and token
   batch size in Joey NMT, trained on the same card on the same data, cut into the same
   sentencepiece pieces (attendo's tokenizer from phase 2, written out as space-separated
   "words" so both toolkits see identical token sequences and vocabulary). Joey NMT is used if
   importable, else installed from the wheels in ``$JOEYNMT_WHEELS`` (bench/gpu_wheels.sh makes
   that folder on a machine with network) into a folder put on PYTHONPATH; otherwise the peer
   row says "not run" and why. Joey NMT has no bf16 mode: it trains with its ``fp16: true``
   (float16 autocast + gradient scaler; ``BENCH_PEER_FP16=0`` for fp32).

The whole run stays inside ``BENCH_TOTAL_MIN`` (8): before each phase the time it may train is
cut so that every later phase still gets its planned time plus an allowance for its setup and
decoding (``BENCH_ALLOWANCE_S``, 30; the peer's ``BENCH_PEER_ALLOWANCE_S``, 40); a phase that
cannot get ``BENCH_MIN_TRAIN_S`` (20 s) is skipped and says so. The defaults (10 s + 3 + 0.75
+ 0.75 + 0.75 minutes + allowances) fill about 7.6 of the 8 minutes; ``train_min`` in each row
is the time it actually trained. The peer trains its minutes from its first logged update.
gpu.sh stops the driver with SIGTERM 20 s after ``BENCH_TOTAL_MIN`` if it hangs; the driver
then still writes and prints what it has, marked "interrupted".

Definitions (per model row):

- ``train_tgt_tok_per_s``: target tokens (EOS included, padding not) trained on per second of
  wall time, in a steady window: from the first update after ``max(20 updates, 10% of the
  budget)`` to the end of training. Batches come through the Trainer's own pipeline
  (``train.num_workers`` collation workers, pinned memory), one ``Trainer.step()`` per
  update, as ``Trainer.run`` does it minus validation and checkpoints (none falls inside).
- ``mfu_pct``: model FLOPs per second in that window / the measured bf16 matmul peak. Model
  FLOPs of an update = 3 x forward FLOPs (forward + backward = 3 forwards) with, summed over
  the batch's sentences (S source tokens, T target tokens incl. EOS, padding excluded)::

      forward = 2 * N_enc * S + 2 * N_dec * T                         (weight matmuls)
              + 4 * d * (L_enc * S^2 + L_dec * (T^2 + S * T))         (Transformer attention:
                                                                       QK^T and AV, full
                                                                       squares, no causal half)
              + 4 * k * S * T                                          (RNN decoder attention,
                                                                       k = encoder output size)

  where N_enc / N_dec are the encoder's / decoder's matrix parameters (every parameter of 2 or
  more dimensions that is not an embedding table; the decoder's output projection d x V is
  counted even when it is tied to the embeddings, since it is a matmul per target token).
  So it is 6 x non-embedding parameters per token, encoder parameters over source tokens,
  decoder parameters over target tokens, plus attention terms. Biases, norms, softmax and
  dropout are not counted. ``model_flops_per_tgt_token`` gives the resulting FLOPs per target
  token.
- ``sm_busy_pct``: the mean of ``nvidia-smi --query-gpu=utilization.gpu`` sampled every 200 ms
  over the same window (the share of time at least one kernel was running; null without
  nvidia-smi). ``gpu_mem_used_max_gib``: the largest ``memory.used`` sampled then (whole
  process, CUDA context included).
- ``train_peak_mem_gib`` / ``decode_peak_mem_gib``: ``torch.cuda.max_memory_allocated`` after
  training / decoding, reset before each.
- ``bleu``: sacreBLEU (13a, mixed case, the model's detokenized output) on all of
  test_2016_flickr after ``train_min`` minutes of training, beam 5, the config's decode
  settings with ``decode.batch_size=256`` and ``decode.precision=bf16`` for every model.
- ``beam5_sents_per_s`` / ``beam5_tok_per_s``: test sentences and output pieces (EOS
  included) per second of ``Translator.translate(test, beam=5)`` (after a short untimed
  warm-up, model already loaded), timed with ``torch.cuda.synchronize``.

Data: ``$MULTI30K_DIR``, else the first of ../shared/data/multi30k, shared/data/multi30k,
data/multi30k (next to the repository) holding train.{de,en}.gz and test_2016_flickr.*.gz.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from attendo import metrics  # noqa: E402
from attendo.config import config_from_dict, read_yaml  # noqa: E402
from attendo.data.corpus import read_lines  # noqa: E402
from attendo.train import Trainer  # noqa: E402
from attendo.translator import Translator  # noqa: E402

log = logging.getLogger("gpu_bench")

GIB = 1024**3
JOEY_VERSION = "2.3.0"


# -- settings --------------------------------------------------------------------------
def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value.strip() else default
    except ValueError:
        raise SystemExit(f"gpu_bench: {name}={value!r} is not a number") from None


def find_data_dir() -> Path:
    env = os.environ.get("MULTI30K_DIR", "").strip()
    candidates = [Path(env)] if env else [
        REPO.parent / "shared" / "data" / "multi30k",
        REPO / "shared" / "data" / "multi30k",
        REPO / "data" / "multi30k",
    ]
    for d in candidates:
        if (d / "train.de.gz").is_file() and (d / "test_2016_flickr.en.gz").is_file():
            return d
    raise SystemExit(
        "gpu_bench: no Multi30k copy found (train.de.gz, test_2016_flickr.en.gz ...) in "
        + ", ".join(map(str, candidates)) + "; set MULTI30K_DIR"
    )


class Plan:
    """Budgets of one run (GPU or CPU smoke)."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        if smoke:
            train_s = env_float("BENCH_SMOKE_TRAIN_S", 3.0)
            self.total_s = env_float("BENCH_SMOKE_TOTAL_S", 150.0)
            self.peak_s = 1.0
            self.train_s = {"small_transformer": train_s, "base_transformer": train_s,
                            "rnn": train_s, "peer": train_s}
            self.min_train_s = 0.5
            self.allowance_s = {"attendo": 10.0, "peer": 20.0}
            self.warm_steps = 2
            self.peak_n = 256
            self.decode_sents = int(env_float("BENCH_SMOKE_DECODE_SENTS", 12))
            self.peer = os.environ.get("BENCH_PEER", "0") == "1"
        else:
            self.total_s = env_float("BENCH_TOTAL_MIN", 8.0) * 60
            self.peak_s = env_float("BENCH_PEAK_S", 10.0)
            self.train_s = {
                "small_transformer": env_float("BENCH_SMALL_MIN", 3.0) * 60,
                "base_transformer": env_float("BENCH_BASE_MIN", 0.75) * 60,
                "rnn": env_float("BENCH_RNN_MIN", 0.75) * 60,
                "peer": env_float("BENCH_PEER_MIN", 0.75) * 60,
            }
            self.min_train_s = env_float("BENCH_MIN_TRAIN_S", 20.0)
            # setup (tokenizer training, encoding, model build) + decoding, per phase
            self.allowance_s = {"attendo": env_float("BENCH_ALLOWANCE_S", 30.0),
                                "peer": env_float("BENCH_PEER_ALLOWANCE_S", 40.0)}
            self.warm_steps = 20
            self.peak_n = 8192
            self.decode_sents = int(env_float("BENCH_DECODE_SENTS", 0))  # 0 = all 1000
            self.peer = os.environ.get("BENCH_PEER", "1") != "0"
        self.base_decode = os.environ.get("BENCH_BASE_DECODE", "1" if smoke else "0") == "1"
        self.warm_frac = 0.1
        self.t_start = time.time()
        self.deadline = self.t_start + self.total_s - (5.0 if smoke else 15.0)

    def train_budget(self, phase: str, later: list[str]) -> float:
        """Seconds phase may train: its plan, cut so every later phase keeps its own."""
        reserve = sum(self.train_s[p] + self.allowance_s["peer" if p == "peer" else "attendo"]
                      for p in later)
        own = self.allowance_s["peer" if phase == "peer" else "attendo"]
        left = self.deadline - time.time() - reserve - own
        return max(0.0, min(self.train_s[phase], left))


# -- GPU sampling ----------------------------------------------------------------------
class GpuSampler:
    """nvidia-smi utilization.gpu and memory.used every 200 ms, timestamped on arrival."""

    def __init__(self, device_id: str | None):
        self.samples: list[tuple[float, float, float]] = []
        self.error: str | None = None
        self.proc: subprocess.Popen | None = None
        exe = shutil.which("nvidia-smi")
        if exe is None:
            self.error = "nvidia-smi not found"
            return
        base = [exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                "-lms", "200"]
        for args in ([*base, "-i", device_id] if device_id else None, base):
            if args is None:
                continue
            try:
                proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
            except OSError as e:
                self.error = f"nvidia-smi: {e}"
                return
            time.sleep(0.5)
            if proc.poll() is None:
                self.proc = proc
                break
        if self.proc is None:
            self.error = "nvidia-smi exited at once"
            return
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                util, mem = float(parts[0]), float(parts[1])
            except (ValueError, IndexError):
                continue
            self.samples.append((time.time(), util, mem))

    def window(self, t0: float, t1: float) -> dict:
        rows = [s for s in self.samples if t0 <= s[0] <= t1]
        if not rows:
            return {"sm_busy_pct": None, "gpu_mem_used_max_gib": None, "smi_samples": 0}
        return {
            "sm_busy_pct": round(statistics.mean(r[1] for r in rows), 1),
            "gpu_mem_used_max_gib": round(max(r[2] for r in rows) / 1024, 2),
            "smi_samples": len(rows),
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)


class NoSampler:
    error = "CPU smoke run: no GPU to sample"

    def window(self, t0: float, t1: float) -> dict:
        return {"sm_busy_pct": None, "gpu_mem_used_max_gib": None, "smi_samples": 0}

    def stop(self) -> None:
        pass


# -- device helpers --------------------------------------------------------------------
class Device:
    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.type = "cpu" if smoke else "cuda"

    def sync(self) -> None:
        if self.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        if self.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated() / GIB, 2)

    def release(self) -> None:
        gc.collect()
        if self.type == "cuda":
            torch.cuda.empty_cache()


def matmul_peak(dev: Device, n: int, budget_s: float, min_groups: int = 3) -> dict:
    """Best mean TFLOP/s of groups of 5 bf16 n x n x n products within budget_s."""
    a = torch.randn(n, n, device=dev.type, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev.type, dtype=torch.bfloat16)
    for _ in range(3):
        c = torch.matmul(a, b)
    dev.sync()
    best, groups, t_end = 0.0, 0, time.time() + budget_s
    while groups < min_groups or time.time() < t_end:
        t = time.perf_counter()
        for _ in range(5):
            c = torch.matmul(a, b)
        dev.sync()
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t) / 1e12)
        groups += 1
        if groups >= 50:
            break
    del a, b, c
    dev.release()
    return {"matmul_n": n, "dtype": "bfloat16", "groups_of_5": groups,
            "tflops": float(f"{best:.4g}")}


# -- FLOPs -----------------------------------------------------------------------------
def flop_counter(model: torch.nn.Module, mcfg) -> tuple[callable, dict]:
    """A function batch -> training FLOPs of one update on it (see the module docstring)."""
    emb_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}

    def matrix_params(part: torch.nn.Module) -> int:
        seen, total = set(), 0
        for p in part.parameters():
            if id(p) in seen or id(p) in emb_ids or p.dim() < 2:
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    n_enc = matrix_params(model.encoder)
    n_dec = matrix_params(model.decoder)
    out = getattr(model.decoder, "out", None)
    if isinstance(out, torch.nn.Linear) and id(out.weight) in emb_ids:
        n_dec += out.weight.numel()  # tied output layer: still a d x V matmul per target token
    d = mcfg.d_model
    c_enc_self = 4 * d * mcfg.enc_layers if mcfg.encoder == "transformer" else 0
    c_dec_self = 4 * d * mcfg.dec_layers if mcfg.decoder == "transformer" else 0
    if mcfg.decoder == "transformer":
        c_cross = 4 * d * mcfg.dec_layers
    elif mcfg.attention != "none":
        c_cross = 4 * int(getattr(model.encoder, "out_dim", 0) or 0)
    else:
        c_cross = 0

    def count(batch) -> tuple[float, int, int]:
        s = batch.src_lens.to(torch.float64)
        if batch.tgt_lens is not None:
            t = batch.tgt_lens.to(torch.float64)
        else:
            t = (batch.tgt_out != 0).sum(1).to(torch.float64)
        ss, tt = float(s.sum()), float(t.sum())
        fwd = (2 * n_enc * ss + 2 * n_dec * tt + c_enc_self * float((s * s).sum())
               + c_dec_self * float((t * t).sum()) + c_cross * float((s * t).sum()))
        return 3 * fwd, int(ss), int(tt)

    return count, {"matrix_params_encoder": n_enc, "matrix_params_decoder": n_dec}


# -- attendo phases --------------------------------------------------------------------
MODELS = {
    "small_transformer": "configs/multi30k_transformer_gpu.yaml",
    "base_transformer": "configs/base_transformer_gpu.yaml",
    "rnn": "configs/multi30k_rnn.yaml",
}

SMOKE_OVERRIDES = {
    "small_transformer": ["model.d_model=32", "model.heads=2", "model.ff_dim=64",
                          "model.enc_layers=1", "model.dec_layers=1", "train.batch_size=600",
                          "train.warmup_steps=10"],
    "base_transformer": ["model.d_model=48", "model.heads=2", "model.ff_dim=96",
                         "model.enc_layers=2", "model.dec_layers=2", "train.batch_size=800",
                         "train.warmup_steps=10"],
    "rnn": ["model.emb_dim=32", "model.enc_hidden=32", "model.dec_hidden=32",
            "train.batch_size=16"],
}


def model_config(name: str, data: dict[str, str], out_dir: Path, smoke: bool):
    raw = read_yaml(REPO / MODELS[name])
    over = [
        f"train.out_dir={out_dir}", "train.progress=false",
        f"data.train_src={data['train_src']}", f"data.train_tgt={data['train_tgt']}",
        "data.valid_src=", "data.valid_tgt=",  # no validation inside the benchmark
        f"data.test_src={data['test_src']}", f"data.test_tgt={data['test_tgt']}",
        "decode.batch_size=256", "decode.precision=bf16",
    ]
    if smoke:
        over += ["train.device=cpu", "train.num_workers=0", "train.threads=1",
                 "data.vocab_size=300", "decode.batch_size=16", "decode.max_len=40",
                 *SMOKE_OVERRIDES[name]]
    else:
        over += ["train.device=cuda"]
    return config_from_dict(raw, over)


def train_phase(name: str, cfg, budget_s: float, plan: Plan, dev: Device, sampler,
                decode: bool, test_src: list[str], test_ref: list[str], details: Path,
                keep: dict) -> dict:
    row: dict = {"model": name, "config": MODELS[name], "status": "ok"}
    t = time.time()
    trainer = Trainer(cfg)
    try:
        row["setup_s"] = round(time.time() - t, 1)
        model = trainer.model
        row["params"] = sum(p.numel() for p in model.parameters())
        count, sizes = flop_counter(model, cfg.model)
        row.update(sizes)
        tc = cfg.train
        row.update(precision=tc.precision, batch_size=tc.batch_size, batch_type=tc.batch_type,
                   num_workers=tc.num_workers)
        model.train()
        dev.reset_peak()
        steps, win_steps = 0, 0
        total = {"tgt": 0, "src": 0, "sents": 0, "flops": 0.0}
        win = dict(total)
        win_t0 = None
        t0 = time.time()
        while True:
            res = trainer.step()  # syncs with the host once an update
            counted = [count(b) for b in res.batches]  # (flops, source tokens, _) per batch
            steps += 1
            now = time.time()
            add = {"tgt": res.tokens, "src": sum(c[1] for c in counted),
                   "sents": res.sentences, "flops": sum(c[0] for c in counted)}
            for k, v in add.items():
                total[k] += v
            if win_t0 is not None:
                win_steps += 1
                for k, v in add.items():
                    win[k] += v
            elif steps >= plan.warm_steps and now - t0 >= plan.warm_frac * budget_s:
                win_t0 = now  # the window starts after this update
            if now - t0 >= budget_s:
                break
        dev.sync()
        t1 = time.time()
        if win_t0 is None or win_steps == 0:  # too short for a warm-up: the whole run
            win_t0, win, win_steps, row["window"] = t0, total, steps, "whole run (no warm-up)"
        else:
            row["window"] = f"updates {steps - win_steps + 1}..{steps}"
        w = t1 - win_t0
        row.update(
            train_min=round((t1 - t0) / 60, 2), updates=steps, window_s=round(w, 2),
            window_updates=win_steps,
            train_tgt_tok_per_s=round(win["tgt"] / w, 1),
            train_src_tok_per_s=round(win["src"] / w, 1),
            train_sents_per_s=round(win["sents"] / w, 1),
            updates_per_s=round(win_steps / w, 2),
            model_tflops_per_s=float(f"{win['flops'] / w / 1e12:.4g}"),
            model_flops_per_tgt_token=round(win["flops"] / max(win["tgt"], 1)),
            mfu_pct=(float(f"{100 * win['flops'] / w / 1e12 / keep['peak_tflops']:.4g}")
                     if keep.get("peak_tflops") else None),
            train_peak_mem_gib=dev.peak_gib(),
            tgt_tokens_trained=total["tgt"],
        )
        row.update(sampler.window(win_t0, t1))
        # decoding: BLEU and beam-5 speed on test_2016_flickr
        if decode:
            tr = Translator(model, trainer.src, trainer.tgt, cfg)
            dev.reset_peak()
            tr.translate(test_src[:16], beam=5)  # warm-up (kernels, allocator), not timed
            dev.sync()
            t = time.perf_counter()
            out = tr.translate(test_src, beam=5)
            dev.sync()
            dt_s = time.perf_counter() - t
            hyps = [o.text for o in out]
            score, sig = metrics.bleu_with_signature(hyps, test_ref)
            n_tok = sum(len(o.tgt_tokens) for o in out)
            row.update(
                bleu=round(score.score, 2), bleu_after_train_min=row["train_min"],
                bleu_signature=sig, test_sentences=len(test_src),
                beam5_sents_per_s=round(len(test_src) / dt_s, 1),
                beam5_tok_per_s=round(n_tok / dt_s, 1), decode_s=round(dt_s, 2),
                decode_batch_size=cfg.decode.batch_size, decode_precision=cfg.decode.precision,
                decode_peak_mem_gib=dev.peak_gib(),
            )
            (details / f"{name}.beam5.en").write_text("".join(h + "\n" for h in hyps),
                                                       encoding="utf-8")
            del tr, out
        else:
            row.update({k: None for k in (
                "bleu", "bleu_after_train_min", "bleu_signature", "test_sentences",
                "beam5_sents_per_s", "beam5_tok_per_s", "decode_s", "decode_batch_size",
                "decode_precision", "decode_peak_mem_gib")})
            row["decode_note"] = "training throughput only (BENCH_BASE_DECODE=1 decodes it)"
        if name == "small_transformer":
            keep["small_codec"] = trainer.src  # joint tokenizer + vocabulary, for the peer
            keep["small_cfg"] = cfg
    finally:
        with contextlib.suppress(Exception):
            trainer.close()  # also shuts the collation workers down
        log_file = Path(cfg.train.out_dir) / "train.log"
        if log_file.exists():
            shutil.copy(log_file, details / f"{name}.train.log")
        del trainer
        dev.release()
    return row


# -- the peer: Joey NMT ----------------------------------------------------------------
JOEY_STEP = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) - INFO - joeynmt.training - "
    r"Epoch\s+\d+, Step:\s+(\d+),.*Tokens per Sec:\s+([\d.]+)"
)


def joey_python_path(work: Path) -> tuple[str | None, str | None]:
    """(PYTHONPATH entry or "" when Joey NMT is importable as it is, reason if it is not)."""
    check = [sys.executable, "-c", "import joeynmt, joeynmt.training; print(joeynmt.__version__)"]

    def importable(extra: str) -> tuple[bool, str]:
        env = dict(os.environ)
        if extra:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra, env.get("PYTHONPATH")]))
        r = subprocess.run(check, capture_output=True, text=True, env=env, timeout=120)
        if r.returncode == 0:
            return True, r.stdout.strip()
        return False, (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]

    ok, msg = importable("")
    if ok:
        return "", None
    wheels = os.environ.get("JOEYNMT_WHEELS", "").strip()
    if not wheels:
        return None, f"Joey NMT is not importable ({msg}) and JOEYNMT_WHEELS is not set " \
                     "(bench/gpu_wheels.sh DIR makes that folder on a machine with network)"
    files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
    if not files:
        return None, f"JOEYNMT_WHEELS={wheels}: no wheels there"
    site = work / "joey_site"
    # --no-deps --target: joeynmt 2.3.0 declares ~25 requirements (protobuf<3.21, datasets,
    # pylint, ...) that offline resolution cannot meet; it imports only a few of them, which a
    # CUDA PyTorch image has, and the folder brings the rest (bench/gpu_wheels.sh). --target,
    # not a --system-site-packages venv: where python3 is itself a venv (the GPU image's is),
    # a nested venv sees the base interpreter's packages, not this one's torch.
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--disable-pip-version-check", "--target", str(site),
                        *files], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return None, "pip install of JOEYNMT_WHEELS failed: " + r.stderr.strip()[-300:]
    ok, msg = importable(str(site))
    if not ok:
        return None, f"Joey NMT installed from {wheels} but not importable: {msg}"
    return str(site), None


def joey_fp16(smoke: bool) -> bool:
    return (not smoke) and os.environ.get("BENCH_PEER_FP16", "1") != "0"


def joey_config(small_cfg, data_dir: Path, model_dir: Path, smoke: bool) -> str:
    """Joey NMT 2.3 YAML for attendo's small Transformer: same size, same token batch,
    same optimiser settings; laid out like ../shared/peers/configs/joeynmt/transformer.yaml."""
    m, tc = small_cfg.model, small_cfg.train
    fp16 = joey_fp16(smoke)
    workers = int(env_float("BENCH_PEER_WORKERS", tc.num_workers))
    side = """
        lang: "{lang}"
        level: "word"           # pre-cut into attendo's sentencepiece pieces
        lowercase: False
        normalize: False
        voc_file: "{data}/vocab.txt"
        voc_limit: 100000
        max_length: {max_len}"""

    def layers(n: int) -> str:
        return f"""
        type: "transformer"
        num_layers: {n}
        num_heads: {m.heads}
        embeddings:
            embedding_dim: {m.d_model}
            scale: True
        hidden_size: {m.d_model}
        ff_size: {m.ff_dim}
        dropout: {m.dropout}
        layer_norm: "{m.norm}\""""

    return f"""# written by bench/gpu_bench.py: attendo's {MODELS['small_transformer']} in Joey NMT 2.3
name: "gpu_bench_small_transformer"
joeynmt_version: "{JOEY_VERSION}"
model_dir: "{model_dir}"
use_cuda: {not smoke}
fp16: {fp16}
random_seed: {tc.seed}
data:
    train: "{data_dir}/train"
    dev: "{data_dir}/dev"
    dataset_type: "plain"
    src:{side.format(lang="de", data=data_dir, max_len=small_cfg.data.max_len)}
    trg:{side.format(lang="en", data=data_dir, max_len=small_cfg.data.max_len)}
testing:
    n_best: 1
    beam_size: 1
    beam_alpha: -1
    batch_size: 64
    batch_type: "sentence"
    max_output_length: 100
    eval_metrics: ["bleu"]
training:
    random_seed: {tc.seed}
    optimizer: "adam"
    adam_betas: [{tc.betas[0]}, {tc.betas[1]}]
    learning_rate: {tc.lr}
    scheduling: "warmupinversesquareroot"
    learning_rate_warmup: {max(tc.warmup_steps, 1)}
    learning_rate_min: 1.0e-9
    clip_grad_norm: {tc.clip_norm}
    label_smoothing: {tc.label_smoothing}
    normalization: "tokens"
    batch_size: {tc.batch_size}
    batch_type: "{'token' if tc.batch_type == 'tokens' else 'sentence'}"
    epochs: 100000
    updates: 100000000
    logging_freq: {2 if smoke else 10}
    validation_freq: 100000000   # no validation or checkpoint while it is measured
    early_stopping_metric: "ppl"
    keep_best_ckpts: 1
    shuffle: True
    overwrite: True
    print_valid_sents: []
    num_workers: {workers}
model:
    initializer: "xavier_uniform"
    bias_initializer: "zeros"
    init_gain: 1.0
    embed_initializer: "xavier_uniform"
    embed_init_gain: 1.0
    tied_embeddings: {m.tie_src_tgt}
    tied_softmax: {m.tie_output}
    encoder:{layers(m.enc_layers)}
    decoder:{layers(m.dec_layers)}
"""


def parse_joey_log(text: str) -> list[tuple[int, float, float]]:
    out = []
    for line in text.splitlines():
        mt = JOEY_STEP.match(line)
        if mt:
            ts = dt.datetime.strptime(mt.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((int(mt.group(2)), ts, float(mt.group(3))))
    return out


def peer_phase(budget_s: float, plan: Plan, keep: dict, data: dict[str, str], work: Path,
               details: Path, sampler) -> dict:
    row: dict = {"toolkit": "joeynmt", "version": JOEY_VERSION, "model": "small_transformer",
                 "status": "not run"}
    if "small_codec" not in keep:
        row["reason"] = "the small Transformer phase did not finish (its tokenizer is the peer's)"
        return row
    site, reason = joey_python_path(work)
    if site is None:
        row["reason"] = reason
        return row
    codec, cfg = keep["small_codec"], keep["small_cfg"]
    jd = work / "joey_data"
    jd.mkdir(parents=True, exist_ok=True)
    # the same training pairs cut into the same pieces; the vocabulary without attendo's specials
    # (Joey NMT puts its own <unk> <pad> <s> </s> first, the same strings)
    n_train = 0
    for lang, key in (("de", "train_src"), ("en", "train_tgt")):
        lines = read_lines(data[key])
        n_train = len(lines)
        with open(jd / f"train.{lang}", "w", encoding="utf-8") as f:
            f.writelines(" ".join(codec.pieces(s)) + "\n" for s in lines)
        with open(jd / f"dev.{lang}", "w", encoding="utf-8") as f:
            f.writelines(" ".join(codec.pieces(s)) + "\n" for s in lines[:200])
    (jd / "vocab.txt").write_text("".join(t + "\n" for t in codec.vocab.itos[4:]),
                                  encoding="utf-8")
    model_dir = work / "joey_model"
    cfg_path = work / "joey.yaml"
    cfg_path.write_text(joey_config(cfg, jd, model_dir, plan.smoke), encoding="utf-8")
    shutil.copy(cfg_path, details / "joeynmt.yaml")
    env = dict(os.environ, PYTHONWARNINGS="ignore", TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    if site:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
    if plan.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")
    stdout_path = work / "joey_stdout.log"
    startup_cap = 30.0 if plan.smoke else 90.0
    t0 = time.time()
    with open(stdout_path, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "joeynmt", "train", str(cfg_path), "--skip-test"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True)
        first_ts = None
        log_path = model_dir / "train.log"
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                now = time.time()
                if first_ts is None and log_path.exists():
                    lines = parse_joey_log(log_path.read_text(encoding="utf-8", errors="replace"))
                    first_ts = lines[0][1] if lines else None
                if first_ts is not None and now >= first_ts + budget_s:
                    break  # trained as long as attendo's phases (from its first logged update)
                if now - t0 >= budget_s + startup_cap or now >= plan.deadline:
                    break
        finally:
            rc = proc.poll()
            if rc is None:  # stop Joey NMT and its data workers (they share its session)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    t_end = time.time()
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    if log_path.exists():
        shutil.copy(log_path, details / "joeynmt.train.log")
    shutil.copy(stdout_path, details / "joeynmt.stdout.log")
    lines = parse_joey_log(text)
    row.update(wall_s=round(t_end - t0, 1), exit="stopped by the benchmark" if rc is None else rc,
               fp16=joey_fp16(plan.smoke), batch_size=cfg.train.batch_size,
               batch_type=cfg.train.batch_type, train_pairs=n_train)
    pm = re.search(r"Total params: (\d+)", text)
    row["params"] = int(pm.group(1)) if pm else None
    if len(lines) < 2:
        tail = stdout_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        row.update(status="failed", reason="fewer than 2 logged updates; stdout ends: "
                   + " | ".join(tail[-5:]))
        return row
    # window: log intervals that start after the warm-up (like attendo's: 10% of the budget
    # and at least 2 log lines in); tokens of an interval = its logged rate x its length
    start = lines[0][1] + plan.warm_frac * budget_s
    pairs = [(a, b) for a, b in zip(lines, lines[1:]) if a[1] >= start and a is not lines[0]]
    if not pairs:
        pairs = list(zip(lines, lines[1:]))
        row["window"] = "whole run (no warm-up)"
    else:
        row["window"] = f"updates {pairs[0][0][0] + 1}..{pairs[-1][1][0]}"
    w = sum(b[1] - a[1] for a, b in pairs)
    tokens = sum(b[2] * (b[1] - a[1]) for a, b in pairs)
    row.update(
        status="ok", train_min=round((lines[-1][1] - lines[0][1]) / 60, 2),
        updates=lines[-1][0], window_s=round(w, 2),
        train_tgt_tok_per_s=round(tokens / w, 1) if w > 0 else None,
        own_logged_tok_per_s_mean=round(statistics.mean(b[2] for _, b in pairs), 1),
        updates_per_s=round((pairs[-1][1][0] - pairs[0][0][0]) / w, 2) if w > 0 else None,
    )
    row.update(sampler.window(pairs[0][0][1], pairs[-1][1][1]))
    return row


# -- output ----------------------------------------------------------------------------
def fmt(v, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(res: dict) -> str:
    lines = [
        f"# attendo GPU benchmark ({res['mode']}): {res.get('gpu')}",
        "",
        f"{res['date']} | torch {res['torch']} | CUDA {res.get('cuda')} | driver "
        f"{res.get('driver')} | bf16 matmul peak {fmt(res.get('peak', {}).get('tflops'))} "
        f"TFLOP/s (measured) | {res['total_s']} s in all",
        "",
        "| model | params | train min | tgt tok/s | sents/s | model TFLOP/s | MFU % | SM busy % "
        "| peak mem GiB | BLEU (beam 5) | beam-5 sents/s | beam-5 tok/s | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["models"]:
        lines.append(
            f"| {r['model']} | {fmt(r.get('params'))} | {fmt(r.get('train_min'), 2)} "
            f"| {fmt(r.get('train_tgt_tok_per_s'), 0)} | {fmt(r.get('train_sents_per_s'))} "
            f"| {fmt(r.get('model_tflops_per_s'), 2)} | {fmt(r.get('mfu_pct'), 2)} "
            f"| {fmt(r.get('sm_busy_pct'))} | {fmt(r.get('train_peak_mem_gib'), 2)} "
            f"| {fmt(r.get('bleu'), 2)} | {fmt(r.get('beam5_sents_per_s'))} "
            f"| {fmt(r.get('beam5_tok_per_s'), 0)} | {r.get('status')} |")
    p = res["peer"]
    lines += [
        "",
        "| peer | model | train min | tgt tok/s | SM busy % | GPU mem used GiB | "
        "attendo / peer tok/s | status |",
        "|---|---|---|---|---|---|---|---|",
        f"| Joey NMT {p.get('version')} | {p.get('model')} | {fmt(p.get('train_min'), 2)} "
        f"| {fmt(p.get('train_tgt_tok_per_s'), 0)} | {fmt(p.get('sm_busy_pct'))} "
        f"| {fmt(p.get('gpu_mem_used_max_gib'), 2)} | {fmt(p.get('ratio_attendo_over_peer'), 2)} "
        f"| {p.get('status')}{': ' + p['reason'] if p.get('reason') else ''} |",
        "",
        "Definitions: bench/gpu_bench.py's docstring.",
    ]
    return "\n".join(lines) + "\n"


class Interrupted(BaseException):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run every phase on the CPU with tiny models and seconds of training")
    ap.add_argument("--pack", action="store_true",
                    help="pack details/ into details.tar.gz (fewer files to carry back)")
    args = ap.parse_args()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        reason = "torch.cuda.is_available() is false"
        if torch.version.cuda is None:
            reason += f" (torch {torch.__version__} is a CPU build)"
        print(json.dumps({"bench": "gpu", "gpu": None, "reason": reason,
                          "torch": torch.__version__}))
        print(f"gpu_bench: no GPU: {reason}; nothing measured", file=sys.stderr)
        return 0

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    plan = Plan(smoke)
    out = Path(os.environ.get("OUT") or "gpu_bench_out").resolve()
    details = out / "details"
    details.mkdir(parents=True, exist_ok=True)
    file_log = logging.FileHandler(out / "gpu_bench.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(file_log)
    work = Path(tempfile.mkdtemp(prefix="gpu_bench_"))

    def on_term(signum, frame):
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    dev = Device(smoke)
    res: dict = {"bench": "gpu", "mode": "cpu-smoke" if smoke else "gpu",
                 "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "torch": torch.__version__, "cuda": torch.version.cuda,
                 "python": platform.python_version(), "host": platform.node(),
                 "cpus": os.cpu_count()}
    if smoke:
        res.update(gpu="none (cpu-smoke)", driver=None)
        sampler = NoSampler()
    else:
        props = torch.cuda.get_device_properties(0)
        res.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / GIB, 1),
                   sm_count=props.multi_processor_count, driver=None)
        uuid = getattr(props, "uuid", None)
        sampler = GpuSampler(f"GPU-{uuid}" if uuid else os.environ.get("CUDA_VISIBLE_DEVICES"))
        smi = shutil.which("nvidia-smi")
        if smi:
            with contextlib.suppress(Exception):
                r = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20)
                res["driver"] = r.stdout.strip().splitlines()[0] if r.stdout.strip() else None
    res["sampler"] = sampler.error or "nvidia-smi utilization.gpu, memory.used every 200 ms"
    res["budget_s"] = {"total": plan.total_s, "peak": plan.peak_s, **plan.train_s}
    res["models"], res["peer"] = [], {"toolkit": "joeynmt", "version": JOEY_VERSION,
                                      "model": "small_transformer", "status": "not run",
                                      "reason": "not reached"}
    failed = False
    keep: dict = {}
    try:
        ddir = find_data_dir()
        res["data"] = str(ddir)
        files = {k: str(ddir / f"{stem}.gz") for k, stem in (
            ("train_src", "train.de"), ("train_tgt", "train.en"),
            ("test_src", "test_2016_flickr.de"), ("test_tgt", "test_2016_flickr.en"))}
        if smoke:  # a slice of the real files, so the same code runs in seconds
            sd = work / "smoke_data"
            sd.mkdir()
            for key, n in (("train_src", 1500), ("train_tgt", 1500),
                           ("test_src", plan.decode_sents), ("test_tgt", plan.decode_sents)):
                lines = read_lines(files[key])[:n]
                path = sd / Path(files[key]).name.removesuffix(".gz")
                path.write_text("".join(s + "\n" for s in lines), encoding="utf-8")
                files[key] = str(path)
        test_src, test_ref = read_lines(files["test_src"]), read_lines(files["test_tgt"])
        if plan.decode_sents and not smoke:
            test_src, test_ref = test_src[: plan.decode_sents], test_ref[: plan.decode_sents]

        log.info("bf16 matmul peak (%d^3, %.0f s)", plan.peak_n, plan.peak_s)
        res["peak"] = matmul_peak(dev, plan.peak_n, plan.peak_s, 1 if smoke else 3)
        keep["peak_tflops"] = res["peak"]["tflops"]
        log.info("peak: %s TFLOP/s", res["peak"]["tflops"])

        order = ["small_transformer", "base_transformer", "rnn"] + (["peer"] if plan.peer else [])
        for i, name in enumerate(order):
            later = order[i + 1:]
            budget = plan.train_budget(name, later)
            if name == "peer":
                if budget < plan.min_train_s:
                    res["peer"].update(reason=f"out of time: {budget:.0f} s left for it")
                    continue
                log.info("peer: Joey NMT %s, %.0f s", JOEY_VERSION, budget)
                try:
                    res["peer"] = peer_phase(budget, plan, keep, files, work, details, sampler)
                except Exception as e:  # noqa: BLE001 - reported in the JSON
                    failed = True
                    res["peer"] = {"toolkit": "joeynmt", "version": JOEY_VERSION,
                                   "model": "small_transformer", "status": "failed",
                                   "reason": f"{type(e).__name__}: {e}"}
                    log.error("peer failed:\n%s", traceback.format_exc())
                continue
            if budget < plan.min_train_s:
                res["models"].append({"model": name, "config": MODELS[name],
                                      "status": f"skipped: out of time ({budget:.0f} s left)"})
                continue
            log.info("%s: training %.0f s", name, budget)
            try:
                cfg = model_config(name, files, work / name, smoke)
                decode = name != "base_transformer" or plan.base_decode
                row = train_phase(name, cfg, budget, plan, dev, sampler, decode, test_src,
                                  test_ref, details, keep)
            except Interrupted:
                res["models"].append({"model": name, "config": MODELS[name],
                                      "status": "interrupted"})
                raise
            except Exception as e:  # noqa: BLE001 - reported in the JSON, the run goes on
                failed = True
                row = {"model": name, "config": MODELS[name],
                       "status": f"failed: {type(e).__name__}: {e}"}
                log.error("%s failed:\n%s", name, traceback.format_exc())
                dev.release()
            res["models"].append(row)
            log.info("%s: %s", name, json.dumps(row))
        if not plan.peer:
            res["peer"].update(reason="--cpu-smoke (BENCH_PEER=1 runs it)" if smoke
                               else "BENCH_PEER=0")
    except Interrupted as e:
        failed = True
        res["interrupted"] = str(e)
    except SystemExit as e:  # e.g. no data found: still one JSON object
        failed = True
        res["error"] = str(e)
    finally:
        sampler.stop()
    p, small = res["peer"], next((r for r in res["models"] if r["model"] == "small_transformer"),
                                 {})
    if p.get("train_tgt_tok_per_s") and small.get("train_tgt_tok_per_s"):
        p["ratio_attendo_over_peer"] = round(small["train_tgt_tok_per_s"]
                                             / p["train_tgt_tok_per_s"], 3)
    else:
        p["ratio_attendo_over_peer"] = None
    res["total_s"] = round(time.time() - plan.t_start, 1)
    md = markdown(res)
    if os.environ.get("BENCH_KEEP_WORK") == "1":
        res["work_dir"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    (out / "result.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    (out / "result.md").write_text(md, encoding="utf-8")
    if args.pack:
        with tarfile.open(out / "details.tar.gz", "w:gz") as tar:
            tar.add(details, arcname="details")
        shutil.rmtree(details)
    logging.getLogger().removeHandler(file_log)
    file_log.close()
    print(md, file=sys.stderr)
    print(json.dumps(res))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
