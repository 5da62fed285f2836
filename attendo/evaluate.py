"""``attendo evaluate``: translate a test set and score it (sacreBLEU, chrF, perplexity) and
diagnose it (BLEU by source length, repetition, rare words, attention; see
:mod:`attendo.diagnostics`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from . import align, metrics
from . import diagnostics as dg
from .data.batch import collate
from .data.corpus import read_parallel, read_requests
from .data.prepare import Corpus, encode_copy, encode_pairs
from .errors import UsageError
from .translator import Translation, Translator

RARE_MAX_COUNT = 5  # a source word seen at most this many times in training is "rare"

# what a bad pair's message suggests (read_parallel's default is a training-config setting)
BAD_PAIR_HINT = (
    "attendo evaluate scores every pair: --src and --ref need a non-empty sentence on every "
    "line; fix or remove this line in both files"
)


def evaluate(
    translator: Translator,
    src_path: str | Path,
    ref_path: str | Path | None,
    beam: int | None = None,
    batch_size: int | None = None,
    length_penalty: float | None = None,
    diagnostics: bool = True,
    align_gold: str | Path | None = None,
    align_method: str = "argmax",
    align_threshold: float = 0.5,
    rare_max_count: int = RARE_MAX_COUNT,
    decode_opts: dict[str, Any] | None = None,
    input_format: str = "text",
) -> tuple[dict[str, Any], list[str]]:
    """Score a model on a parallel test set; returns the report and the hypotheses.

    The files are read by :func:`~attendo.data.corpus.read_parallel` (no pair is skipped: an
    empty or bad line, an empty file or different line counts are a CorpusError naming the
    file and line). An image model reads ``src_path`` as a list of ``image<TAB>text`` lines
    (``ref_path`` None), as in training. ``decode_opts``: more keyword arguments of
    :meth:`Translator.translate` (e.g. ``replace_unk``, ``unk_dict``, ``sampling``);
    ``input_format`` tsv or jsonl: the source lines carry a prefix or constraints per sentence
    (:func:`~attendo.data.corpus.read_requests`)."""
    image = translator.cfg.data.src_type == "image"
    if image:
        if ref_path is not None:
            raise UsageError("an image model is evaluated on one list of image<TAB>text "
                             "lines (--src LIST), without --ref")
        from .data.images import read_image_tsv

        src, ref, _ = read_image_tsv(src_path)
    elif ref_path is None:
        raise UsageError("give the references (--ref FILE), one line per source line")
    else:
        src, ref, _ = read_parallel(src_path, ref_path, max_chars=10**6, hint=BAD_PAIR_HINT)
        src, rules = read_requests(src, input_format, str(src_path))
        decode_opts = {**(decode_opts or {}), **rules}
    gold = dg.read_gold_alignments(align_gold) if align_gold else None
    report, outs = evaluate_texts(
        translator, src, ref, beam=beam, batch_size=batch_size, length_penalty=length_penalty,
        diagnostics=diagnostics, gold=gold, gold_path=align_gold, align_method=align_method,
        align_threshold=align_threshold, rare_max_count=rare_max_count, decode_opts=decode_opts,
    )
    if image:
        add_image_scores(report, translator, src, ref, [o.text for o in outs],
                         read_boxes(src_path, len(src)) if diagnostics else None)
    ref_name = None if ref_path is None else str(ref_path)
    return {"src": str(src_path), "ref": ref_name, **report}, [o.text for o in outs]


def read_boxes(image_list: str | Path, n: int) -> list[str] | None:
    """The first ``n`` lines of the symbols' boxes beside an image list (``LIST.boxes.jsonl``,
    one JSON line per image), or None when there is no such file."""
    path = Path(image_list).with_suffix(".boxes.jsonl")
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < n:
        raise UsageError(f"{path}: {len(lines)} lines for {n} images")
    return lines[:n]


def add_image_scores(report: dict[str, Any], translator: Translator, images: list[str],
                     refs: list[str], hyps: list[str], boxes: list[str] | None) -> None:
    """Reading text off images: the CER, the scores by length (:func:`by_length`) and, given
    the symbols' boxes (:func:`read_boxes`), where attention looked."""
    report["cer"] = round(metrics.char_error_rate(hyps, refs), 2)
    if not translator.model.has_attention:
        boxes = None
    samples = None if boxes is None else localization_samples(translator, images, refs, boxes)
    if samples is not None:
        report["diagnostics"]["attention"]["localization"] = localization(samples)
    report["by_length"] = by_length(refs, hyps, samples)


def by_length(refs: list[str], hyps: list[str], samples: list[tuple | None] | None
              ) -> list[dict[str, Any]]:
    """An image test set's scores by reference length in characters (for digit strings: how
    reading degrades with the string's length, beyond the trained lengths too): images, CER,
    exact match and, given :func:`localization_samples`, the share of attention peaks inside
    their symbol."""
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(refs):
        groups.setdefault(len(r), []).append(i)
    rows = []
    for n, idx in sorted(groups.items()):
        row = {"length": n, "images": len(idx),
               "cer": round(metrics.char_error_rate([hyps[i] for i in idx],
                                                    [refs[i] for i in idx]), 2),
               "exact_match": round(float(np.mean([hyps[i] == refs[i] for i in idx])), 4)}
        if samples is not None:
            row["peak_in_box"] = localization([samples[i] for i in idx])["peak_in_box"]
        rows.append(row)
    return rows


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
    decode_opts: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[Translation]]:
    """:func:`evaluate` on sentences in memory; returns the report and the translations
    (with attention when ``diagnostics``)."""
    if len(src) != len(ref):
        raise UsageError(f"got {len(src)} sources but {len(ref)} references")
    if not src:
        raise UsageError("nothing to evaluate: no sentences")
    if gold is not None:  # before decoding: a bad gold file fails fast
        dg.check_gold(gold, gold_path or "<gold>", [len(s.split()) for s in src],
                      [len(r.split()) for r in ref])
    t = time.time()
    out = translator.translate(src, beam=beam, batch_size=batch_size,
                               length_penalty=length_penalty, return_attention=diagnostics,
                               **(decode_opts or {}))
    decode_s = time.time() - t
    hyps = [o.text for o in out]
    b, b_sig = metrics.bleu_with_signature(hyps, ref)
    c, c_sig = metrics.chrf_with_signature(hyps, ref)
    corpus = Corpus(src, ref)
    src_ids, tgt_ids, kept = encode_pairs(corpus, translator.src, translator.tgt)
    copy = None
    if translator.model.copies:  # a pointer-generator scores extended ids
        copy = encode_copy(corpus, translator.src, translator.tgt, kept)
    ppl = None  # an ensemble has no one loss: no perplexity
    if hasattr(translator.model, "loss"):
        nll, n = metrics.corpus_nll(translator.model, src_ids, tgt_ids,
                                    device=translator.device, copy=copy)
        ppl = round(metrics.perplexity(nll, n), 3)
    report: dict[str, Any] = {
        "sentences": len(src),
        "beam": beam or translator.cfg.decode.beam_size,
        "bleu": round(b.score, 2),
        "bleu_signature": b_sig,
        "bleu_detail": str(b),
        "chrf": round(c.score, 2),
        "chrf_signature": c_sig,
        "exact_match": round(sum(h == r for h, r in zip(hyps, ref)) / len(ref), 4),
        "ppl": ppl,
        "decode_s": round(decode_s, 2),
        "sents_per_s": round(len(src) / max(decode_s, 1e-9), 1),
    }
    if (decode_opts or {}).get("replace_unk"):  # <unk> written by the model, then replaced
        report["unk_replaced"] = sum(o.unk_replaced for o in out)
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
    # source words (by sentence length, and rare ones): not for an image model
    words = translator.cfg.data.src_type == "text"
    by_length, rare = _source_word_diagnostics(translator, src, ref, hyps, rare_max_count) \
        if words else (None, None)
    d: dict[str, Any] = {
        "bleu_by_length": by_length,
        "repetition": {
            "output": dg.repetition(dg.words_13a(h) for h in hyps),
            "reference": dg.repetition(dg.words_13a(r) for r in ref),
        },
        "rare_words": rare,
        "unk_rate": dg.unk_rate(o.tgt_tokens for o in out),
        "attention": None,
    }
    if not words:
        del d["bleu_by_length"], d["rare_words"]
    if translator.model.has_attention:
        att: dict[str, Any] = dg.attention_entropy(o.attention for o in out)
        if gold is not None:
            att.update(alignment_error(translator, src, ref, gold, align_method, align_threshold))
        d["attention"] = att
    p_gen = [o.info["p_gen"] for o in out if "p_gen" in o.info and o.info["p_gen"].size]
    if p_gen:
        d["p_gen"] = round(float(np.concatenate(p_gen).mean()), 4)
    return d


def _source_word_diagnostics(translator: Translator, src: list[str], ref: list[str],
                             hyps: list[str], rare_max_count: int) -> tuple[dict, dict]:
    subword = translator.src.tokenizer.kind in ("bpe", "unigram")
    classify = dg.vocab_word_classifier(translator.src.pieces, translator.src.vocab,
                                        rare_max_count, subword)
    rare = dg.rare_word_reproduction(src, ref, hyps, classify, lowercase=translator.src.lowercase)
    rare["max_count"] = rare_max_count
    rare["counts_known"] = translator.src.vocab.counts is not None
    return dg.bleu_by_length(src, hyps, ref), rare


def alignment_error(
    translator: Translator,
    src: list[str],
    ref: list[str],
    gold: list[dg.GoldAlignment],
    method: str = "argmax",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """AER of links read off teacher-forced attention on the references, by the rules of
    :mod:`attendo.align` (links between pieces, words linked when any of their pieces are),
    against gold links. Gold alignments link reference words, so this, not the attention of
    the model's own output, is what AER compares. Sentences whose pieces do not map onto their
    words (e.g. an input the tokenizer normalises into a different number of words) are
    skipped and counted."""
    r = align.score(align.align_pairs(translator, src, ref, method, threshold), gold)
    return {
        "aer": None if r["aer"] is None else round(r["aer"], 4),
        "align_method": f"threshold {threshold}" if method == "threshold" else method,
        "aer_sentences": r["sentences"],
        "aer_skipped": r["skipped"],
        "links": r["links"],
        "sure": r["sure"],
    }


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['sentences']} sentences, beam {r['beam']}, {r['sents_per_s']} sents/s",
        f"BLEU  {r['bleu']:6.2f}   {r['bleu_signature']}",
        f"chrF  {r['chrf']:6.2f}   {r['chrf_signature']}",
        f"exact {100 * r.get('exact_match', 0):6.2f}%  of outputs equal their reference",
        *([f"CER   {r['cer']:6.2f}%  characters edited"] if "cer" in r else []),
        *[f"      length {g['length']:3d}: CER {g['cer']:6.2f}%  exact {100 * g['exact_match']:6.2f}%"
          + (f"  peak in box {100 * g['peak_in_box']:6.2f}%" if g.get("peak_in_box") is not None
             else "") + f"  ({g['images']} images)" for g in r.get("by_length", [])],
        f"ppl   {r['ppl']:8.3f} (teacher-forced on the references)" if r["ppl"] is not None
        else "ppl      -     (an ensemble: no single model to score the references with)",
        *([f"unk   {r['unk_replaced']:6d}   <unk> replaced by attended source words"]
          if "unk_replaced" in r else []),
    ]
    if r.get("diagnostics"):
        lines += ["", dg.format_diagnostics(r["diagnostics"])]
    return "\n".join(lines)


@torch.no_grad()
def localization_samples(translator: Translator, images: list[str], refs: list[str],
                         lines: list[str], batch_size: int = 32) -> list[tuple | None]:
    """Per image, the (attention, region centres, boxes) that
    :func:`attendo.diagnostics.attention_localization` reads: the attention teacher-forced on
    the reference, against the symbols' boxes in ``lines`` (one JSON line per image,
    ``{"boxes": [[x0, y0, x1, y1], ...]}`` in the image file's pixels, one box per output
    piece); None for an image whose reference has another number of pieces than boxes."""
    model, samples = translator.model, []
    for k in range(0, len(images), batch_size):
        rows = list(range(k, min(k + batch_size, len(images))))
        items = [translator.src.encode(images[i]) for i in rows]
        ids = [translator.tgt.encode(refs[i]) for i in rows]
        b = collate(items, ids, rows).to(translator.device)
        _, info = model(b.src, b.src_lens, b.tgt_in)
        for j, i in enumerate(rows):
            boxes = np.asarray(json.loads(lines[i])["boxes"], dtype=float).reshape(-1, 4)
            if len(ids[j]) != len(boxes):
                samples.append(None)
                continue
            _, H, W = items[j].pixels.shape
            with PILImage.open(images[i]) as im:  # boxes are in the file's pixels
                boxes *= H / im.size[1]
            centres = model.encoder.region_centres(H, W).numpy()
            attn = info["attn"][j, : len(boxes), : len(centres)].float().cpu().numpy()
            samples.append((attn, centres, boxes))
    return samples


def localization(samples: list[tuple | None]) -> dict[str, Any]:
    """attention_localization of :func:`localization_samples`' output, and how many images
    were skipped."""
    return {**dg.attention_localization(x for x in samples if x is not None),
            "skipped": sum(x is None for x in samples)}
