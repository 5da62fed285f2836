"""AER of attendo's attention alignments and of eflomal on the 150 gold-aligned de-en pairs.

The "Word alignment" table of BENCHMARKS.md (issue 13). Data from bench/align_data.py; models
from configs/alignment/*.yaml. For every given de->en model: each method (argmax, shift;
threshold and shift-threshold at a few values; each under both pieces-to-words rules, any and
mean) for the head average and every single head of every decoder layer (Transformer) or the
one attention (RNN); a reverse (en->de) model adds intersect / union /
grow-diag / grow-diag-final of the best forward and reverse settings, and average (the mean
of those two settings' word weights, then argmax or a threshold). Settings are chosen on the
same 150 pairs (the rest of the RWTH set is a blind test that is not here), so every "best" row
is an oracle choice among the listed ones, as in the papers that tune layer and method on them.
eflomal (Östling & Tiedemann 2016) aligns the same training text (lowercased, as attendo
align-prior does) in both directions; its rows are read off the last 150 pairs.
BLEU (sacreBLEU, beam 5) of each de->en model on Multi30k test_2016_flickr tokenised like its
training text (bench/align_data.py) shows what guided alignment costs in translation.

    python bench/align_aer.py --data runs/align_data --model runs/align_deen \
        --model runs/align_deen_guided --reverse runs/align_ende --eflomal --bleu > aer.json

Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from attendo import align as al
from attendo import diagnostics as dg
from attendo.translator import Translator


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def settings(tr: Translator) -> list[tuple[int | None, int | None]]:
    """(layer, head) choices: (None, None) is the model's default attention."""
    if not al.is_transformer(tr.model):
        return [(None, None)]
    L = len(tr.model.decoder.layers)
    H = tr.cfg.model.heads
    return [(layer, head) for layer in range(L) for head in [None, *range(H)]]


# (method, threshold) pairs tried for every (layer, head), each under both pieces-to-words rules
METHODS = [("argmax", 0.5), ("shift", 0.5), ("threshold", 0.3), ("threshold", 0.5),
           ("shift-threshold", 0.3), ("shift-threshold", 0.4)]


# (rule, threshold) of the average symmetrisation, applied to the best settings' word weights
AVERAGE = [("argmax", 0.5), ("threshold", 0.3), ("threshold", 0.35), ("threshold", 0.4),
           ("threshold", 0.45)]


def model_rows(tr: Translator, src, tgt, gold, rev: bool = False
               ) -> tuple[list[dict], dict, dict]:
    """Every (method, layer, head) row and, per row key, the links (for symmetrisation); per
    (layer, head, shifted rows) the word weights (for average)."""
    rows, links, weights = [], {}, {}
    for layer, head in settings(tr):
        fa = al.forced_attention(tr, src, tgt, 32, layer, head)
        lh = ("default" if layer is None else layer, "mean" if head is None else head)
        for shifted in (False, True):
            weights[(*lh, shifted)] = [
                None if x is None else al.word_rows(
                    x[2], x[0], x[1], al.tokenizer_kinds(tr), len(s.split()), len(t.split()),
                    "shift" if shifted else "argmax") for s, t, x in zip(src, tgt, fa)]
        for (method, thr), words in itertools.product(METHODS, al.WORD_RULES):
            out = []
            for s, t, x in zip(src, tgt, fa):
                if x is None:
                    out.append(None)
                    continue
                sp, tp, attn = x
                out.append(al.word_links(attn, sp, tp, al.tokenizer_kinds(tr), len(s.split()),
                                         len(t.split()), method, thr, words))
            if rev:  # (de word, en word) for scoring and symmetrisation
                out = [al.transpose(x) for x in out]
            sc = al.score(out, gold)
            key = (method if "threshold" not in method else f"{method} {thr}",
                   "default" if layer is None else layer,
                   "mean" if head is None else head, words)
            rows.append({"method": key[0], "layer": key[1], "head": key[2], "words": words,
                         **sc})
            links[key] = out
    return rows, links, weights


def bleu(tr: Translator, src: list[str], ref: list[str]) -> dict:
    import sacrebleu

    t0 = time.time()
    hyps = [t.text for t in tr.translate(src, beam=5, batch_size=64)]
    metric = sacrebleu.BLEU(force=True)  # the text is tokenised on purpose (both sides alike)
    b = metric.corpus_score(hyps, [ref])
    return {"bleu": round(b.score, 2), "signature": str(metric.get_signature()),
            "seconds": round(time.time() - t0, 1)}


def eflomal_rows(data: Path, gold, n_dev: int) -> list[dict]:
    t0 = time.time()
    fwd, rev = al.eflomal_links(read(data / "train.de"), read(data / "train.en"), lowercase=True)
    fwd, rev = fwd[-n_dev:], rev[-n_dev:]
    log(f"eflomal: {time.time() - t0:.0f} s")
    rows = [{"method": "forward", **al.score(fwd, gold)},
            {"method": "reverse", **al.score(rev, gold)}]
    for how in al.SYMMETRIZE:
        rows.append({"method": how, **al.score(
            [al.symmetrize(f, r, how) for f, r in zip(fwd, rev)], gold)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/align_data", type=Path)
    ap.add_argument("--model", action="append", default=[], help="a de->en model (repeatable)")
    ap.add_argument("--reverse", default="", help="an en->de model, for symmetrisation")
    ap.add_argument("--prior", default="", help="attendo align-prior links of the training "
                    "text (grow-diag); its last 150 lines are scored too")
    ap.add_argument("--eflomal", action="store_true", help="run eflomal on the training text")
    ap.add_argument("--bleu", action="store_true", help="BLEU of each model on test.{de,en}")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    d = args.data
    src, tgt = read(d / "dev150.de"), read(d / "dev150.en")
    gold = dg.read_gold_alignments(d / "dev150.talp.gz", "talp")
    dg.check_gold(gold, d / "dev150.talp.gz", [len(s.split()) for s in src],
                  [len(t.split()) for t in tgt])
    out: dict = {"pairs": len(src), "sure": sum(len(g.sure) for g in gold),
                 "possible": sum(len(g.possible) for g in gold), "models": {}}
    if args.eflomal:
        out["eflomal"] = eflomal_rows(d, gold, len(src))
    if args.prior:
        links = [g.sure for g in dg.read_gold_alignments(args.prior)][-len(src):]
        out["prior"] = {"file": args.prior, **al.score(links, gold)}
    rev_links = None
    if args.reverse:
        tr = Translator.from_dir(args.reverse, device="cpu")
        rows, rev_links, rev_weights = model_rows(tr, tgt, src, gold, rev=True)
        out["models"][args.reverse] = {"rows": rows,
                                       "best": min(rows, key=lambda r: r["aer"])}
        log(f"{args.reverse}: best {out['models'][args.reverse]['best']}")
    for m in args.model:
        tr = Translator.from_dir(m, device="cpu")
        rows, links, weights = model_rows(tr, src, tgt, gold)
        best = min(rows, key=lambda r: r["aer"])
        res = {"rows": rows, "best": best}
        # the default attention (head average of the model's attention layer) with argmax
        last = len(tr.model.decoder.layers) - 1 if al.is_transformer(tr.model) else "default"
        res["default_argmax"] = next(r for r in rows if r["method"] == "argmax" and r["words"]
                                     == "any" and r["head"] == "mean" and r["layer"] == last)
        if rev_links is not None:
            rbest = out["models"][args.reverse]["best"]
            fkey = (best["method"], best["layer"], best["head"], best["words"])
            rkey = (rbest["method"], rbest["layer"], rbest["head"], rbest["words"])
            f_l, r_l = links[fkey], rev_links[rkey]
            res["symmetrized"] = []
            for how in al.SYMMETRIZE:
                sym = [None if a is None or b is None else al.symmetrize(a, b, how)
                       for a, b in zip(f_l, r_l)]
                res["symmetrized"].append({"method": how, "forward": list(fkey),
                                           "reverse": list(rkey), **al.score(sym, gold)})
            # average: the two best settings' word weights (their layer, head and rows)
            fw = weights[(best["layer"], best["head"], best["method"].startswith("shift"))]
            rw = rev_weights[(rbest["layer"], rbest["head"], rbest["method"].startswith("shift"))]
            for method, thr in AVERAGE:
                sym = [None if a is None or b is None else al.average(a, b, method, thr)
                       for a, b in zip(fw, rw)]
                res["symmetrized"].append({
                    "method": "average" + (f" {thr}" if method == "threshold" else " argmax"),
                    "forward": list(fkey), "reverse": list(rkey), **al.score(sym, gold)})
        if args.bleu:
            res["test_bleu"] = bleu(tr, read(d / "test.de"), read(d / "test.en"))
        out["models"][m] = res
        log(f"{m}: best {best}")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
