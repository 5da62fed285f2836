"""Decoding throughput: sentences per second, greedy and beam 5, on a test set.

Times the translation of the whole file inside one process (after loading the model), so
start-up is excluded ("net" in the peers' RESULTS.md); the model load time is reported.

    python bench/decode_throughput.py --model runs/multi30k_rnn \
        --src data/multi30k/test_2016_flickr.de --beams 1 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from datetime import date

import torch

from attendo.data.corpus import read_lines
from attendo.translator import Translator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the hypotheses to OUT.beamN.txt")
    ap.add_argument("overrides", nargs="*", help="decode.* overrides, e.g. decode.max_len=100")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = time.time()
    tr = Translator.from_dir(args.model, overrides=args.overrides)
    load_s = time.time() - t
    src = read_lines(args.src)
    rows = {}
    for beam in args.beams:
        t = time.time()
        out = tr.translate(src, beam=beam, batch_size=args.batch_size)
        dt = time.time() - t
        if args.out:
            with open(f"{args.out}.beam{beam}.txt", "w", encoding="utf-8") as f:
                f.writelines(o.text + "\n" for o in out)
        rows[f"beam{beam}"] = {
            "sents_per_s": round(len(src) / dt, 1),
            "seconds": round(dt, 2),
            "avg_hyp_pieces": round(sum(len(o.tgt_tokens) for o in out) / len(out), 2),
        }
    print(json.dumps({
        "bench": "decode_throughput", "model": args.model, "sentences": len(src),
        "batch_size": args.batch_size, "overrides": args.overrides, "load_s": round(load_s, 2), **rows,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "date": date.today().isoformat(),
    }))


if __name__ == "__main__":
    main()
