"""attendo vs CTranslate2 on one Transformer: sentences/s and BLEU side by side, in one run.

Exports the model with ``attendo export --format ctranslate2`` (float32 weights; int8 is
CTranslate2's ``compute_type="int8"`` at load, as attendo's decode.precision=int8 quantizes
at load), then decodes the test set with each engine and precision under the same settings:
beam 5, batches of 64 sentences, attendo's output caps (2 x source + 10), no length
penalty, the same rule for ending a sentence (attendo's decode.stop_rule=exact, CTranslate2's
rule; --stop-rule first_k for attendo's default), N threads. Timing covers text in -> text
out (tokenization and detokenization included in both) after one warm-up batch. The two
engines' timed runs alternate (attendo, CTranslate2, attendo, ... --repeat rounds), so a slow
spell of a shared machine falls on both; each row keeps its best run, and the JSON also has
the speed ratio of every round and their median.

``--check N`` also decodes the first N lines greedily with attendo, CTranslate2 and the
ONNX export (numpy + onnxruntime loop) and counts token-identical outputs.

    python bench/compare_ct2.py --model runs/multi30k_transformer \\
        --src ../shared/data/multi30k/test_2016_flickr.de.gz \\
        --ref ../shared/data/multi30k/test_2016_flickr.en.gz --threads 2 --check 300

With a GPU (torch.cuda and CTranslate2 built with CUDA), the same rows are added on it
(attendo fp32 / bf16, CTranslate2 float32 / bfloat16). Untested here: no GPU was lent.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from attendo.data.corpus import read_lines
from attendo.export.ct2 import ct2_translate_pieces, export_ctranslate2
from attendo.metrics import bleu
from attendo.translator import Translator, max_output_lengths


def time_alternating(fn_a, fn_b, repeat: int):
    """Run fn_a and fn_b in turn, repeat rounds: (best seconds of a, its output, best seconds
    of b, its output, [seconds_b / seconds_a of each round])."""
    best = [float("inf"), float("inf")]
    outs: list = [None, None]
    ratios = []
    for _ in range(repeat):
        secs = []
        for i, fn in enumerate((fn_a, fn_b)):
            t = time.perf_counter()
            outs[i] = fn()
            secs.append(time.perf_counter() - t)
            best[i] = min(best[i], secs[-1])
        ratios.append(secs[1] / secs[0])
    return best[0], outs[0], best[1], outs[1], ratios


def attendo_run(tr: Translator, texts, precision, stop_rule, beam, batch, device):
    tr.cfg.decode.precision, tr.cfg.decode.stop_rule = precision, stop_rule

    def run():
        return [t.text for t in tr.translate(texts, beam=beam, batch_size=batch, length_penalty=0.0)]

    run_warm = tr.translate(texts[:batch], beam=beam, batch_size=batch)  # warm-up (and int8 copy)
    del run_warm
    if device == "cuda":
        def run_sync():
            out = run()
            torch.cuda.synchronize()
            return out
        return run_sync
    return run


def ct2_run(ct, tr: Translator, texts, beam, batch):
    def run():
        pieces = [tr.src.pieces(t)[: tr.cfg.decode.max_input_tokens] for t in texts]
        caps = max_output_lengths(torch.tensor([len(p) for p in pieces]), tr.cfg.decode).tolist()
        out = ct2_translate_pieces(ct, pieces, caps, beam=beam, batch_size=batch)
        return [tr.tgt.tokenizer.decode(o) for o in out]

    ct.translate_batch([tr.src.pieces(t) for t in texts[:batch]], beam_size=beam)  # warm-up
    return run


def greedy_check(tr: Translator, ct, onnx_dir: Path | None, texts: list[str], threads: int) -> dict:
    """Token-identical greedy outputs of attendo, CTranslate2 and ONNX on texts."""
    tr.cfg.decode.precision = "fp32"
    ours = [[p for p in t.tgt_tokens if p != "</s>"] for t in tr.translate(texts, beam=1)]
    pieces = [tr.src.pieces(t)[: tr.cfg.decode.max_input_tokens] for t in texts]
    caps = max_output_lengths(torch.tensor([len(p) for p in pieces]), tr.cfg.decode).tolist()
    theirs = ct2_translate_pieces(ct, pieces, caps, beam=1)
    res = {"lines": len(texts), "ct2_identical": sum(a == b for a, b in zip(ours, theirs))}
    res["ct2_differ_at"] = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b][:20]
    if onnx_dir is not None:
        from attendo.export.onnx_decode import OnnxTranslator

        ox = OnnxTranslator(onnx_dir, threads=threads)
        ids = ox.translate_ids([tr.src.vocab.encode(p) for p in pieces], beam=1)
        onnx = [tr.tgt.vocab.decode(x) for x in ids]
        res["onnx_identical"] = sum(a == b for a, b in zip(ours, onnx))
        res["onnx_differ_at"] = [i for i, (a, b) in enumerate(zip(ours, onnx)) if a != b][:20]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="attendo model directory (a Transformer)")
    ap.add_argument("--src", default="../shared/data/multi30k/test_2016_flickr.de.gz")
    ap.add_argument("--ref", default="../shared/data/multi30k/test_2016_flickr.en.gz")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2,
                    help="timed rounds (attendo and CTranslate2 alternate; best run of each kept)")
    ap.add_argument("--stop-rule", default="exact", choices=["exact", "first_k"],
                    help="attendo's decode.stop_rule: exact stops as CTranslate2 does (default); "
                         "first_k once beam_size hypotheses have ended (attendo's default)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N test lines (0 = all)")
    ap.add_argument("--check", type=int, default=0, help="greedy identity check on N lines")
    ap.add_argument("--no-onnx", action="store_true", help="leave ONNX out of --check")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import ctranslate2

    torch.set_num_threads(args.threads)
    texts, refs = read_lines(args.src), read_lines(args.ref)
    if args.limit:
        texts, refs = texts[: args.limit], refs[: args.limit]
    tmp = Path(tempfile.mkdtemp(prefix="compare_ct2_"))
    t = time.perf_counter()
    export_ctranslate2(args.model, tmp / "ct2")
    export_s = time.perf_counter() - t
    tr = Translator.from_dir(args.model)
    devices = ["cpu"]
    if torch.cuda.is_available() and ctranslate2.get_cuda_device_count() > 0:
        devices.append("cuda")
    rows = []
    for device in devices:
        if device == "cuda":
            tr = Translator.from_dir(args.model, device="cuda")
        precisions = [("fp32", "float32"), ("int8", "int8")] if device == "cpu" else [
            ("fp32", "float32"), ("bf16", "bfloat16")]
        for ours, theirs in precisions:
            fn_a = attendo_run(tr, texts, ours, args.stop_rule, args.beam, args.batch_size, device)
            ct = ctranslate2.Translator(str(tmp / "ct2"), device=device, compute_type=theirs,
                                        inter_threads=1, intra_threads=args.threads)
            fn_c = ct2_run(ct, tr, texts, args.beam, args.batch_size)
            sec_a, hyps_a, sec_c, hyps_c, ratios = time_alternating(fn_a, fn_c, args.repeat)
            rows.append(dict(engine="attendo", device=device, precision=ours, seconds=round(sec_a, 2),
                             sents_per_s=round(len(texts) / sec_a, 1),
                             bleu=round(bleu(hyps_a, refs).score, 2),
                             round_ratios=[round(r, 3) for r in ratios],
                             median_ratio=round(statistics.median(ratios), 3)))
            print(json.dumps(rows[-1]), flush=True)
            rows.append(dict(engine="ctranslate2", device=device, precision=theirs,
                             seconds=round(sec_c, 2), sents_per_s=round(len(texts) / sec_c, 1),
                             bleu=round(bleu(hyps_c, refs).score, 2),
                             same_as_attendo=sum(a == b for a, b in zip(hyps_a, hyps_c))))
            print(json.dumps(rows[-1]), flush=True)
            del ct
    check = None
    if args.check:
        onnx_dir = None
        if not args.no_onnx:
            from attendo.export.onnx_graphs import export_onnx

            onnx_dir = export_onnx(args.model, tmp / "onnx")
        tr = Translator.from_dir(args.model)
        ct = ctranslate2.Translator(str(tmp / "ct2"), device="cpu", compute_type="float32",
                                    intra_threads=args.threads)
        check = greedy_check(tr, ct, onnx_dir, texts[: args.check], args.threads)
        print(json.dumps(check), flush=True)

    print(f"\nmodel {args.model}, {len(texts)} sentences of {args.src}, beam {args.beam}, "
          f"batch {args.batch_size}, attendo decode.stop_rule={args.stop_rule}, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, ctranslate2 {ctranslate2.__version__}; export {export_s:.1f} s\n")
    print("| engine | device | precision | sentences/s | BLEU | attendo / CT2 speed (best runs) | "
          "median of the rounds' ratios | outputs identical to attendo's |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for i in range(0, len(rows), 2):
        a, c = rows[i], rows[i + 1]
        for r in (a, c):
            ratio = f"{a['sents_per_s'] / c['sents_per_s']:.2f}x" if r is a else ""
            median = f"{a['median_ratio']:.2f}x" if r is a else ""
            same = f"{c['same_as_attendo']} / {len(texts)}" if r is c else ""
            print(f"| {r['engine']} | {r['device']} | {r['precision']} | {r['sents_per_s']} | "
                  f"{r['bleu']} | {ratio} | {median} | {same} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "check": check}, indent=2) + "\n")


if __name__ == "__main__":
    main()
