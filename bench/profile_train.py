"""Where a training step's time goes: torch.profiler over N steps of a bench config, the top
operators by self CPU time.

    OMP_NUM_THREADS=2 python bench/profile_train.py bench/rnn_reference.yaml train.precision=bf16
"""

from __future__ import annotations

import argparse
import tempfile
import time

from torch.profiler import ProfilerActivity, profile
from train_throughput import load_bench_config

from attendo.train import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_bench_config(
            args.config, [f"train.out_dir={tmp}", "train.progress=false", *args.overrides]
        )
        trainer = Trainer(cfg)
        trainer.model.train()
        for _ in range(args.warmup):
            trainer.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.time()
            for _ in range(args.steps):
                trainer.step()
            per_step = (time.time() - t) / args.steps
        trainer.close()
    print(f"{per_step:.4f} s/step under the profiler")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
