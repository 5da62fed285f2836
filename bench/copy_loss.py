"""The pointer-generator's training loss with label smoothing: the smoothing term without the
(N, V) mixture (attendo.model.copy.copy_token_loss, through OutputLayer.token_loss) against the mixture built
in full over the vocabulary (attendo's code before 2026-12-01), forward + backward.

    python bench/copy_loss.py --threads 1 > copy_loss.json

N target positions (a batch of 64 sentences x 25 tokens), S source positions; prints one JSON
object with the median seconds of each and their ratio per vocabulary size, measured in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from attendo.model.decoders import TINY, OutputLayer


class Out(torch.nn.Module, OutputLayer):
    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.out, self.vocab_size, self.copy = torch.nn.Linear(dim, vocab), vocab, True


def full_mixture(layer: Out, feats, info, target, keep, ls):
    """The smoothing term over the mixture built in full (N, V), as attendo computed it."""
    _, nll = layer.token_loss(feats, info, target, keep, 0.0)
    V = layer.vocab_size
    lp = torch.log_softmax(layer.out(feats[keep]), -1)
    attn = info["attn"][keep]
    src_ext = info["src_ext"].unsqueeze(1).expand(-1, keep.size(1), -1)[keep]
    logit = info["p_gen_logit"][keep]
    mass = attn.new_zeros(attn.size(0), V + 1).scatter_add_(1, src_ext.clamp(max=V), attn)
    mix = torch.logaddexp(lp + F.logsigmoid(logit).unsqueeze(1),
                          F.logsigmoid(-logit).unsqueeze(1) + mass[:, :V].clamp_min(TINY).log())
    return (1 - ls) * nll - ls * mix.mean(-1).sum(), nll


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(V: int, reps: int, B: int = 64, T: int = 25, S: int = 40, D: int = 512) -> dict:
    layer = Out(D, V)
    src_ext = torch.randint(4, V + 5, (B, S))  # some source-only words (ids >= V)
    feats = torch.randn(B, T, D, requires_grad=True)
    scores = torch.randn(B, T, S, requires_grad=True)
    logit = torch.randn(B, T, requires_grad=True)
    target = torch.randint(4, V, (B, T))
    keep = torch.ones(B, T, dtype=torch.bool)

    def run(fn) -> float:
        info = {"attn": torch.softmax(scores, -1), "src_ext": src_ext, "p_gen_logit": logit}
        loss, _ = fn(feats, info, target, keep, 0.1)
        loss.backward()
        return float(loss.detach())

    def old(*a):
        return full_mixture(layer, *a)

    now, before = run(layer.token_loss), run(old)  # also warms up
    new_s = timed(lambda: run(layer.token_loss), reps)
    old_s = timed(lambda: run(old), reps)
    return {"vocab": V, "loss_now": round(now, 4), "loss_full_mixture": round(before, 4),
            "seconds_now": round(new_s, 4), "seconds_full_mixture": round(old_s, 4),
            "speedup": round(old_s / new_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vocab", type=int, nargs="+", default=[8000, 20000])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [measure(V, args.reps) for V in args.vocab]
    print(json.dumps({"bench": "copy_loss", "positions": 64 * 25, "source_len": 40, "dim": 512,
                      "threads": args.threads, "torch": torch.__version__,
                      "machine": platform.processor() or platform.machine(),
                      "results": rows}, indent=1))


if __name__ == "__main__":
    main()
