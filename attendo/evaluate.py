"""``attendo evaluate``: translate a test set and score it (sacreBLEU, chrF, perplexity)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import metrics
from .data.corpus import read_parallel
from .data.prepare import Corpus, encode_pairs
from .translator import Translator


def evaluate(
    translator: Translator,
    src_path: str | Path,
    ref_path: str | Path,
    beam: int | None = None,
    batch_size: int | None = None,
    length_penalty: float | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Score a model on a parallel test set; returns the report and the hypotheses."""
    src, ref, _ = read_parallel(src_path, ref_path, max_chars=10**6)
    t = time.time()
    out = translator.translate(src, beam=beam, batch_size=batch_size, length_penalty=length_penalty)
    decode_s = time.time() - t
    hyps = [o.text for o in out]
    b, b_sig = metrics.bleu_with_signature(hyps, ref)
    c, c_sig = metrics.chrf_with_signature(hyps, ref)
    src_ids, tgt_ids, _ = encode_pairs(Corpus(src, ref), translator.src, translator.tgt)
    nll, n = metrics.corpus_nll(translator.model, src_ids, tgt_ids, device=translator.device)
    report = {
        "src": str(src_path),
        "ref": str(ref_path),
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
    return report, hyps


def format_report(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{r['sentences']} sentences, beam {r['beam']}, {r['sents_per_s']} sents/s",
            f"BLEU  {r['bleu']:6.2f}   {r['bleu_signature']}",
            f"chrF  {r['chrf']:6.2f}   {r['chrf_signature']}",
            f"ppl   {r['ppl']:8.3f} (teacher-forced on the references)",
        ]
    )
