"""Where decoding time goes: torch.profiler over one batched beam search of the reference
Transformer (random weights, random 14-token sources, outputs capped at 14 tokens), the top
operators by self CPU time.

    OMP_NUM_THREADS=1 python bench/profile_decode.py [--precision bf16] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from attendo.config import ModelConfig
from attendo.model import build_model
from attendo.search import beam_search


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--rows", type=int, default=22)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(encoder="transformer", decoder="transformer", d_model=256, heads=4,
                      ff_dim=512, enc_layers=3, dec_layers=3)
    cfg.validate()
    model = build_model(cfg, 8004, 8004).eval()
    src = torch.randint(4, 8004, (args.batch, 14))
    lens = torch.full((args.batch,), 14)

    def run():
        with torch.inference_mode(), torch.autocast(
            "cpu", torch.bfloat16, enabled=args.precision == "bf16"
        ):
            state = model.start(src, lens)
            return beam_search(model.decoder, state, args.batch, 2, 3, 14,
                               beam_size=args.beam, return_info=False)

    run()
    t = time.time()
    run()
    print(f"{time.time() - t:.3f} s per search without the profiler")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
