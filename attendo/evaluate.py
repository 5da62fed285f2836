"""``attendo evaluate``: translate a test set and score it (sacreBLEU, chrF, perplexity) and
diagnose it (BLEU by source length, repetition, rare words, attention; see
:mod:`attendo.diagnostics`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import diagnostics as dg
from . import metrics
from .data.batching import collate, make_batches
from .data.corpus import read_parallel
from .data.prepare import Corpus, encode_copy, encode_pairs
from .translator import Translation, Translator

RARE_MAX_COUNT = 5  # a source word seen at most this many times in training is "rare"


def evaluate(
    translator: Translator,
    src_path: str | Path,
    ref_path: str | Path,
    beam: int | None = None,
    batch_size: int | None = None,
    length_penalty: float | None = None,
    diagnostics: bool = True,
    align_gold: str | Path | None = None,
    align_method: str = "argmax",
    align_threshold: float = 0.5,
    rare_max_count: int = RARE_MAX_COUNT,
) -> tuple[dict[str, Any], list[str]]:
    """Score a model on a parallel test set; returns the report and the hypotheses."""
    src, ref, _ = read_parallel(src_path, ref_path, max_chars=10**6)
    gold = dg.read_gold_alignments(align_gold) if align_gold else None
    report, outs = evaluate_texts(
        translator, src, ref, beam=beam, batch_size=batch_size, length_penalty=length_penalty,
        diagnostics=diagnostics, gold=gold, gold_path=align_gold, align_method=align_method,
        align_threshold=align_threshold, rare_max_count=rare_max_count,
    )
    return {"src": str(src_path), "ref": str(ref_path), **report}, [o.text for o in outs]


def evaluate_texts(
    translator: Translator,
    src: list[str],
    ref: list[str],
    beam: int | None = None,
    batch_size: int | None = None,
    length_penalty: float | None = None,
    diagnostics: bool = True,
    gold: list[dg.GoldAlignment] | None = None,
    gold_path: str | Path | None = None,
    align_method: str = "argmax",
    align_threshold: float = 0.5,
    rare_max_count: int = RARE_MAX_COUNT,
) -> tuple[dict[str, Any], list[Translation]]:
    """:func:`evaluate` on sentences in memory; returns the report and the translations
    (with attention when ``diagnostics``)."""
    if gold is not None:  # before decoding: a bad gold file fails fast
        dg.check_gold(gold, gold_path or "<gold>", [len(s.split()) for s in src],
                      [len(r.split()) for r in ref])
    t = time.time()
    out = translator.translate(src, beam=beam, batch_size=batch_size,
                               length_penalty=length_penalty, return_attention=diagnostics)
    decode_s = time.time() - t
    hyps = [o.text for o in out]
    b, b_sig = metrics.bleu_with_signature(hyps, ref)
    c, c_sig = metrics.chrf_with_signature(hyps, ref)
    corpus = Corpus(src, ref)
    src_ids, tgt_ids, kept = encode_pairs(corpus, translator.src, translator.tgt)
    copy = None
    if getattr(translator.model, "copies", False):  # a pointer-generator scores extended ids
        copy = encode_copy(corpus, translator.src, translator.tgt, kept)
    nll, n = metrics.corpus_nll(translator.model, src_ids, tgt_ids, device=translator.device,
                                copy=copy)
    report: dict[str, Any] = {
        "sentences": len(src),
        "beam": beam or translator.cfg.decode.beam_size,
        "bleu": round(b.score, 2),
        "bleu_signature": b_sig,
        "bleu_detail": str(b),
        "chrf": round(c.score, 2),
        "chrf_signature": c_sig,
        "ppl": round(metrics.perplexity(nll, n), 3),
        "decode_s": round(decode_s, 2),
        "sents_per_s": round(len(src) / max(decode_s, 1e-9), 1),
    }
    if diagnostics:
        report["diagnostics"] = diagnose(
            translator, src, ref, out, gold=gold, align_method=align_method,
            align_threshold=align_threshold, rare_max_count=rare_max_count,
        )
    return report, out


def diagnose(
    translator: Translator,
    src: list[str],
    ref: list[str],
    out: list[Translation],
    gold: list[dg.GoldAlignment] | None = None,
    align_method: str = "argmax",
    align_threshold: float = 0.5,
    rare_max_count: int = RARE_MAX_COUNT,
) -> dict[str, Any]:
    """The diagnostics of DESIGN.md section 3 for translations ``out`` of ``src``."""
    hyps = [o.text for o in out]
    subword = translator.src.tokenizer.kind in ("bpe", "unigram")
    classify = dg.vocab_word_classifier(translator.src.pieces, translator.src.vocab,
                                        rare_max_count, subword)
    rare = dg.rare_word_reproduction(src, ref, hyps, classify, lowercase=translator.src.lowercase)
    rare["max_count"] = rare_max_count
    rare["counts_known"] = translator.src.vocab.counts is not None
    d: dict[str, Any] = {
        "bleu_by_length": dg.bleu_by_length(src, hyps, ref),
        "repetition": {
            "output": dg.repetition(dg.words_13a(h) for h in hyps),
            "reference": dg.repetition(dg.words_13a(r) for r in ref),
        },
        "rare_words": rare,
        "unk_rate": dg.unk_rate(o.tgt_tokens for o in out),
        "attention": None,
    }
    if getattr(translator.model.decoder, "use_attn", True):
        att: dict[str, Any] = dg.attention_entropy(o.attention for o in out)
        if gold is not None:
            att.update(alignment_error(translator, src, ref, gold, align_method, align_threshold))
        d["attention"] = att
    p_gen = [o.info["p_gen"] for o in out if "p_gen" in o.info and o.info["p_gen"].size]
    if p_gen:
        d["p_gen"] = round(float(np.concatenate(p_gen).mean()), 4)
    return d


@torch.no_grad()
def forced_attention(
    translator: Translator, src: list[str], ref: list[str], batch_size: int = 64
) -> list[tuple[list[str], list[str], np.ndarray] | None]:
    """Teacher-forced attention over the *reference*: per sentence (source pieces, reference
    pieces, attention (len(ref pieces), len(source pieces))), the row that predicts </s>
    left out; None for an empty side. Gold alignments link reference words, so this, not the
    attention of the model's own output, is what AER compares."""
    model = translator.model
    sp = [translator.src.pieces(s) for s in src]
    tp = [translator.tgt.pieces(r) for r in ref]
    src_ids = [translator.src.vocab.encode(p) for p in sp]
    tgt_ids = [translator.tgt.vocab.encode(p) for p in tp]
    todo = [i for i in range(len(src)) if src_ids[i] and tgt_ids[i]]
    out: list[tuple[list[str], list[str], np.ndarray] | None] = [None] * len(src)
    was_training = model.training
    model.eval()
    for plan in make_batches([len(src_ids[i]) for i in todo], [len(tgt_ids[i]) for i in todo],
                             batch_size=batch_size, batch_type="sentences", shuffle=False):
        rows = [todo[k] for k in plan]
        b = collate([src_ids[i] for i in rows], [tgt_ids[i] for i in rows], rows)
        b = b.to(translator.device)
        # a pointer-generator needs the source in its extended vocabulary; the regular ids do
        # for attention, which does not depend on the extension
        extra = {"src_ext": b.src} if getattr(model, "copies", False) else {}
        _, info = model(b.src, b.src_lens, b.tgt_in, **extra)
        attn = info["attn"].float().cpu().numpy()  # (B, T, S)
        for k, i in enumerate(rows):
            out[i] = (sp[i], tp[i], attn[k, : len(tgt_ids[i]), : len(src_ids[i])])
    model.train(was_training)
    return out


def alignment_error(
    translator: Translator,
    src: list[str],
    ref: list[str],
    gold: list[dg.GoldAlignment],
    method: str = "argmax",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """AER of links read off teacher-forced attention, mapped from pieces to whitespace words,
    against gold links. Sentences whose pieces do not map onto their words (e.g. an input the
    tokenizer normalises into a different number of words) are skipped and counted."""
    kinds = (translator.src.tokenizer.kind, translator.tgt.tokenizer.kind)
    totals = [0, 0, 0, 0]
    used = skipped = 0
    for g, s, r, fa in zip(gold, src, ref, forced_attention(translator, src, ref)):
        if fa is None:
            skipped += 1
            continue
        sp, tp, attn = fa
        sg, tg = dg.word_groups(sp, kinds[0]), dg.word_groups(tp, kinds[1])
        if len(sg) != len(s.split()) or len(tg) != len(r.split()):
            skipped += 1
            continue
        links = dg.links_from_attention(dg.attention_to_words(attn, sg, tg), method, threshold)
        for k, v in enumerate(dg.aer_counts(links, g)):
            totals[k] += v
        used += 1
    a = dg.aer(*totals)
    return {
        "aer": None if a is None else round(a, 4),
        "align_method": method if method == "argmax" else f"threshold {threshold}",
        "aer_sentences": used,
        "aer_skipped": skipped,
        "links": totals[0],
        "sure": totals[1],
    }


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['sentences']} sentences, beam {r['beam']}, {r['sents_per_s']} sents/s",
        f"BLEU  {r['bleu']:6.2f}   {r['bleu_signature']}",
        f"chrF  {r['chrf']:6.2f}   {r['chrf_signature']}",
        f"ppl   {r['ppl']:8.3f} (teacher-forced on the references)",
    ]
    if r.get("diagnostics"):
        lines += ["", dg.format_diagnostics(r["diagnostics"])]
    return "\n".join(lines)
