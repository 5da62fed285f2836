"""Training throughput: sentences and target tokens per second in a fixed window of updates.

Measures like ../shared/peers/scripts/analyze.py does for the peers: the wall time between
update 50 and update 350 (300 updates after a 50-update warm-up), with no validation or
checkpoint inside the window. Prints one JSON object.

    python bench/train_throughput.py bench/rnn_reference.yaml [overrides...] [--steps 350]

``--step-decoder`` runs the RNN decoder step by step instead of as the fused pass
(``RNNDecoder.fused = False``), to measure what the fused pass saves on the same config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import yaml

from attendo.config import config_from_dict
from attendo.train import Trainer

PEERS_MEAN_TGT_LEN = 14.13  # mean Multi30k train target length incl. EOS (peers' RESULTS.md)


def load_bench_config(path: str, overrides: list[str]):
    text = Path(path).read_text()
    peers_data = os.environ.get("PEERS_DATA", str(Path.home() / "peers" / "data"))
    raw = yaml.safe_load(text.replace("${PEERS_DATA}", peers_data))
    return config_from_dict(raw, overrides)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--steps", type=int, default=350)
    ap.add_argument("--step-decoder", action="store_true",
                    help="RNN decoder step by step, not the fused pass")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_bench_config(args.config, [f"train.out_dir={tmp}", "train.progress=false",
                                              *args.overrides])
        t_start = time.time()
        trainer = Trainer(cfg)
        setup_s = time.time() - t_start
        model = trainer.model
        model.train()
        if args.step_decoder:
            model.decoder.fused = False
        fused_decoder = bool(getattr(model.decoder, "fusable", lambda: False)())  # RNN only
        marks: dict[int, float] = {}
        sents = toks = 0
        for step in range(1, args.steps + 1):
            res = trainer.step()
            if step > args.warmup:
                sents += res.sentences
                toks += res.tokens
            if step in (args.warmup, args.steps):
                marks[step] = time.time()
        trainer.close()
        window = marks[args.steps] - marks[args.warmup]
        updates = args.steps - args.warmup
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sents_per_s = sents / window
    print(json.dumps({
        "bench": "train_throughput",
        "config": args.config,
        "overrides": args.overrides,
        "params": sum(p.numel() for p in model.parameters()),
        "precision": cfg.train.precision,
        "fused_decoder": fused_decoder,
        "updates_window": [args.warmup, args.steps],
        "window_s": round(window, 2),
        "sents_per_s": round(sents_per_s, 1),
        "tgt_tok_per_s_peers_formula": round(sents_per_s * PEERS_MEAN_TGT_LEN, 0),
        "tgt_tok_per_s_counted": round(toks / window, 0),
        "mean_updates_per_s": round(updates / window, 2),
        "setup_s": round(setup_s, 2),
        "peak_rss_mb": round(rss_mb, 0),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "date": date.today().isoformat(),
    }))


if __name__ == "__main__":
    sys.exit(main())
