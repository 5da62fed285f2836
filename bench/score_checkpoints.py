"""Score a training run's checkpoints on a test set, the way ../shared/peers scores the peers.

For each chosen checkpoint (the last one saved within each wall-clock budget, like the
peers' "last checkpoint within 30 minutes"), decode greedy and beam 5 and report
  * plain sacreBLEU: detokenized, cased output against the raw references (13a), and
  * harness BLEU: prep.py's normalisation (NFC, lowercase, regex \\w+|[^\\w\\s] tokens) of
    both output and reference, then sacreBLEU with tokenize='none'.
Prints one JSON object.

    python bench/score_checkpoints.py runs/multi30k_rnn --src data/multi30k/test_2016_flickr.de \
        --ref data/multi30k/test_2016_flickr.en --budgets 30 60
"""

from __future__ import annotations

import argparse
import json
import re
import time
import unicodedata
from pathlib import Path

import sacrebleu
import torch

from attendo.checkpoint import read_safetensors, step_checkpoints
from attendo.data.corpus import read_parallel
from attendo.translator import Translator

TOK = re.compile(r"\w+|[^\w\s]")


def harness_norm(line: str) -> str:
    """prep.py's tok(): NFC, lowercase, regex tokens joined by spaces."""
    return " ".join(TOK.findall(unicodedata.normalize("NFC", line.strip().lower())))


def pick(model_dir: Path, budget_min: float) -> tuple[Path, dict] | None:
    best = None
    for p in step_checkpoints(model_dir):
        _, meta = read_safetensors(p)
        if meta.get("elapsed_s", 1e18) <= budget_min * 60:
            best = (p, meta)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--src", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--budgets", type=float, nargs="+", default=[30, 60])
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src, ref, _ = read_parallel(args.src, args.ref, max_chars=10**6)
    ref_norm = [harness_norm(r) for r in ref]
    results = []
    for budget in args.budgets:
        chosen = pick(args.model_dir, budget)
        if chosen is None:
            results.append({"budget_min": budget, "error": "no checkpoint within budget"})
            continue
        path, meta = chosen
        tr = Translator.from_dir(args.model_dir, weights=path)
        row = {"budget_min": budget, "checkpoint": path.name, "step": meta.get("step"),
               "elapsed_s": meta.get("elapsed_s")}
        for beam in args.beams:
            t = time.time()
            hyps = [o.text for o in tr.translate(src, beam=beam)]
            dt = time.time() - t
            bleu = sacrebleu.BLEU()
            plain = bleu.corpus_score(hyps, [ref])
            row["sacrebleu_signature"] = str(bleu.get_signature())
            harness = sacrebleu.corpus_bleu([harness_norm(h) for h in hyps], [ref_norm],
                                            tokenize="none")
            row[f"beam{beam}"] = {
                "sacrebleu_cased_detok": round(plain.score, 2),
                "harness_lc_tok": round(harness.score, 2),
                "decode_s": round(dt, 1),
                "sents_per_s": round(len(src) / dt, 1),
                "avg_len_words": round(sum(len(h.split()) for h in hyps) / len(hyps), 2),
            }
        results.append(row)
    print(json.dumps({"bench": "score_checkpoints", "model_dir": str(args.model_dir),
                      "test": args.src, "results": results}, indent=2))


if __name__ == "__main__":
    main()
