"""What decoding options cost and give (issue 32): plain beam search, a second model, their
ensemble and terminology-style lexical constraints, on one test set, in one process.

Jobs, all beam N with the same batch size, timed with ``time.perf_counter`` around
``Translator.translate`` only (models are loaded, and each job warmed up on a few sentences,
before any timing), one job at a time, alternated within each repeat (A, B, A+B, A with
constraints; then again):

- ``a``: model A alone, sentences per second (each repeat and the median) and sacreBLEU;
- ``b``: model B alone, the same;
- ``ensemble``: ``Translator.ensemble([A, B])`` (probabilities averaged at each step): speed,
  BLEU, cost ratio ensemble / A (median seconds) and BLEU gain over each member;
- ``constrained``: model A with one constraint per sentence, a word of its reference: the
  longest alphabetic word (surrounding punctuation stripped; ties: the first) whose target
  pieces are all in A's target vocabulary, preferring one that A's unconstrained output does
  not already contain, so that the constraint changes something. Reported: how many sentences
  got one (and how many of those were new to the output), speed, cost ratio constrained / plain
  A, BLEU and its change against plain A (an oracle-ish gain: the words come from the
  references), and the share of outputs holding their constraint, as pieces (what search
  guarantees: must be 1.0) and as a whitespace word sequence (output words with surrounding
  punctuation stripped; a piece-level match can still sit inside a longer word).

Multi30k (run when nothing else is using the cores):

    python bench/decode_options.py --model runs/m30k_a --model2 runs/m30k_b \\
        --src data/multi30k/test_2016_flickr.de --ref data/multi30k/test_2016_flickr.en \\
        --beam 5 --batch-size 64 --threads 2 --repeat 2 --out /tmp/m30k_options

Prints one JSON object; ``--out PREFIX`` also writes PREFIX.{a,b,ensemble,constrained}.txt and
PREFIX.constraints.txt (the chosen word per sentence, empty for none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import string
import time
from datetime import date

import torch

from attendo.data.corpus import read_lines
from attendo.metrics import bleu_with_signature
from attendo.translator import Translation, Translator


def words(text: str) -> list[str]:
    """Whitespace words with surrounding punctuation stripped (empty ones dropped)."""
    return [w for w in (x.strip(string.punctuation) for x in text.split()) if w]


def contains(seq: list[str], sub: list[str]) -> bool:
    """Whether ``sub`` (non-empty) occurs in ``seq`` as a contiguous run."""
    n = len(sub)
    return n > 0 and any(seq[i : i + n] == sub for i in range(len(seq) - n + 1))


def choose_constraints(tr: Translator, refs: list[str], plain: list[Translation]
                       ) -> tuple[list[str | None], int]:
    """One reference word per sentence (or None), see the module docstring; and how many of
    the chosen words the unconstrained output did not already contain."""
    chosen: list[str | None] = []
    new = 0
    for ref, out in zip(refs, plain, strict=True):
        seen = set(words(out.text))
        cands = []
        for w in words(ref):
            pieces = tr.tgt.pieces(w)
            if w.isalpha() and pieces and all(p in tr.tgt.vocab.stoi for p in pieces):
                cands.append(w)
        if not cands:
            chosen.append(None)
            continue
        fresh = [w for w in cands if surface(tr, w) not in seen]
        pool = fresh or cands
        best = max(pool, key=len)  # max keeps the first of equally long words
        chosen.append(best)
        new += bool(fresh)
    return chosen, new


def surface(tr: Translator, word: str) -> str:
    """How ``word`` reads in the model's output (e.g. lowercased by a lowercasing codec)."""
    return tr.tgt.tokenizer.decode(tr.tgt.pieces(word))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory A")
    ap.add_argument("--model2", required=True, help="model directory B (same vocabularies)")
    ap.add_argument("--src", required=True, help="source sentences, one per line")
    ap.add_argument("--ref", required=True, help="references, one per line")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each job")
    ap.add_argument("--limit", type=int, help="only the first N sentences")
    ap.add_argument("--warmup", type=int, default=8,
                    help="untimed sentences each job translates first (0: none)")
    ap.add_argument("--out", help="write the hypotheses to OUT.{a,b,ensemble,constrained}.txt")
    ap.add_argument("overrides", nargs="*", help="decode.* overrides, e.g. decode.max_len=100")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    torch.set_num_threads(args.threads)

    load_s = {}
    t = time.perf_counter()
    tr_a = Translator.from_dir(args.model, overrides=args.overrides)
    load_s["a"] = time.perf_counter() - t
    t = time.perf_counter()
    tr_b = Translator.from_dir(args.model2, overrides=args.overrides)
    load_s["b"] = time.perf_counter() - t
    t = time.perf_counter()
    tr_ens = Translator.ensemble([args.model, args.model2], overrides=args.overrides)
    load_s["ensemble"] = time.perf_counter() - t

    src, refs = read_lines(args.src), read_lines(args.ref)
    if len(src) != len(refs):
        raise SystemExit(f"{args.src} has {len(src)} lines but {args.ref} has {len(refs)}")
    if args.limit is not None:
        src, refs = src[: args.limit], refs[: args.limit]
    n = len(src)
    if n == 0:
        raise SystemExit("no sentences to translate")

    def translate(tr: Translator, texts: list[str], cons=None) -> list[Translation]:
        return tr.translate(texts, beam=args.beam, batch_size=args.batch_size,
                            constraints=cons)

    def timed(tr: Translator, cons=None) -> tuple[float, list[Translation]]:
        t = time.perf_counter()
        out = translate(tr, src, cons)
        return time.perf_counter() - t, out

    jobs = {"a": tr_a, "b": tr_b, "ensemble": tr_ens}
    w = min(args.warmup, n)
    if w:
        for tr in jobs.values():
            translate(tr, src[:w])

    seconds: dict[str, list[float]] = {k: [] for k in (*jobs, "constrained")}
    outs: dict[str, list[list[str]]] = {k: [] for k in seconds}
    first: dict[str, list[Translation]] = {}
    cons: list[list[str] | None] | None = None
    chosen: list[str | None] = []
    new = 0
    for _ in range(args.repeat):
        for name, tr in jobs.items():
            dt, out = timed(tr)
            seconds[name].append(dt)
            outs[name].append([o.text for o in out])
            first.setdefault(name, out)
            if name == "a" and cons is None:  # the constraints depend on A's plain output
                chosen, new = choose_constraints(tr_a, refs, out)
                cons = [[c] if c else None for c in chosen]
                if w:
                    translate(tr_a, src[:w], cons[:w])
        dt, out = timed(tr_a, cons)
        seconds["constrained"].append(dt)
        outs["constrained"].append([o.text for o in out])
        first.setdefault("constrained", out)

    signature = ""
    rows: dict[str, dict] = {}
    bleus: dict[str, float] = {}
    for name, secs in seconds.items():
        hyps = outs[name][0]
        score, signature = bleu_with_signature(hyps, refs)
        bleus[name] = score.score
        med = statistics.median(secs)
        rows[name] = {
            "seconds": [round(s, 3) for s in secs],
            "sents_per_s": [round(n / s, 1) for s in secs],
            "sents_per_s_median": round(n / med, 1),
            "bleu": round(score.score, 2),
            "avg_hyp_pieces": round(sum(len(o.tgt_tokens) for o in first[name]) / n, 2),
            "same_output_each_repeat": all(o == hyps for o in outs[name]),
        }
    med = {k: statistics.median(v) for k, v in seconds.items()}
    rows["ensemble"].update({
        "cost_ratio_vs_a": round(med["ensemble"] / med["a"], 3),
        "bleu_gain_vs_a": round(bleus["ensemble"] - bleus["a"], 2),
        "bleu_gain_vs_b": round(bleus["ensemble"] - bleus["b"], 2),
    })
    with_c = [i for i, c in enumerate(chosen) if c]
    got_pieces = got_words = 0
    misses = []
    for i in with_c:
        o, c = first["constrained"][i], chosen[i]
        pieces = [p for p in o.tgt_tokens if p != "</s>"]
        got_pieces += contains(pieces, tr_a.tgt.pieces(c))
        ok = contains(words(o.text), words(surface(tr_a, c)))
        got_words += ok
        if not ok and len(misses) < 5:
            misses.append({"line": i + 1, "constraint": c, "output": o.text})
    k = max(len(with_c), 1)
    rows["constrained"].update({
        "sentences_with_constraint": len(with_c),
        "constraint_new_to_plain_output": new,
        "cost_ratio_vs_a": round(med["constrained"] / med["a"], 3),
        "bleu_delta_vs_a": round(bleus["constrained"] - bleus["a"], 2),
        "contains_constraint_pieces": round(got_pieces / k, 4),
        "contains_constraint_words": round(got_words / k, 4),
        "word_misses": misses,
    })

    hyp_files = None
    if args.out:
        hyp_files = {}
        for name in seconds:
            path = f"{args.out}.{name}.txt"
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(h + "\n" for h in outs[name][0])
            hyp_files[name] = path
        path = f"{args.out}.constraints.txt"
        with open(path, "w", encoding="utf-8") as f:
            f.writelines((c or "") + "\n" for c in chosen)
        hyp_files["constraints"] = path

    print(json.dumps({
        "bench": "decode_options", "model": args.model, "model2": args.model2,
        "src": args.src, "ref": args.ref, "sentences": n, "beam": args.beam,
        "batch_size": args.batch_size, "repeat": args.repeat, "warmup_sentences": w,
        "overrides": args.overrides, "load_s": {k: round(v, 2) for k, v in load_s.items()},
        **rows, "bleu_signature": signature, "hyps": hyp_files,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "date": date.today().isoformat(),
    }))


if __name__ == "__main__":
    main()
