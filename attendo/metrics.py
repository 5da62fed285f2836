"""Corpus metrics shared by validation and ``attendo evaluate``: sacreBLEU, chrF, perplexity."""

from __future__ import annotations

import math

import numpy as np
import sacrebleu
import torch

from .data.batching import collate, make_batches
from .data.vocab import Vocab


def bleu(hyps: list[str], refs: list[str], tokenize: str = "13a", lowercase: bool = False):
    """Corpus BLEU on detokenized text (sacreBLEU); ``.score``."""
    return bleu_with_signature(hyps, refs, tokenize, lowercase)[0]


def bleu_with_signature(hyps: list[str], refs: list[str], tokenize: str = "13a",
                        lowercase: bool = False):
    """(BLEU score object, sacreBLEU signature string) for one reference per sentence."""
    metric = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase)
    return metric.corpus_score(hyps, [refs]), str(metric.get_signature())


def bleu_stats(hyps: list[str], refs: list[str], tokenize: str = "13a") -> np.ndarray:
    """sacreBLEU's per-sentence BLEU statistics (n, 2 + 2 * 4): hypothesis and reference
    lengths, then matched and total n-grams for n = 1..4, the sums corpus BLEU is computed from
    (what sacreBLEU's own paired tests resample). Effective order changes the score, not the
    counts: it only silences sacreBLEU's advice for sentence-level scores."""
    metric = sacrebleu.metrics.BLEU(tokenize=tokenize, effective_order=True)
    rows = []
    for h, r in zip(hyps, refs, strict=True):
        s = metric.sentence_score(h, [r])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return np.asarray(rows, dtype=np.int64)


def bleu_from_stats(summed: np.ndarray) -> float:
    """Corpus BLEU (sacreBLEU defaults: exp smoothing) from summed :func:`bleu_stats` rows
    (hypothesis length, reference length, 4 matched counts, 4 totals)."""
    n = (len(summed) - 2) // 2
    return sacrebleu.metrics.BLEU.compute_bleu(
        correct=[int(x) for x in summed[2 : 2 + n]], total=[int(x) for x in summed[2 + n :]],
        sys_len=int(summed[0]), ref_len=int(summed[1]), smooth_method="exp").score


def paired_bootstrap(stats_a: np.ndarray, stats_b: np.ndarray, n_samples: int = 1000,
                     seed: int = 12345) -> dict[str, float]:
    """Paired bootstrap resampling (Koehn 2004) of BLEU(b) - BLEU(a) on the same sentences.

    ``stats_a``/``stats_b``: :func:`bleu_stats` of two systems' outputs for the same n
    sentences. Each sample draws n sentences with replacement and scores both systems on
    them. Returns ``delta`` (on all n sentences), ``low``/``high`` (the 2.5th and 97.5th
    percentiles of the sampled differences: a 95% interval) and ``p``, the share of samples
    in which the difference does not have the sign of ``delta`` (Koehn's one-sided test;
    1.0 when ``delta`` is 0)."""
    n = len(stats_a)
    if n == 0 or len(stats_b) != n:
        raise ValueError(f"paired_bootstrap: need the same non-zero number of sentences, got "
                         f"{len(stats_a)} and {len(stats_b)}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_samples)  # (samples, n)
    sums_a, sums_b = counts @ stats_a, counts @ stats_b  # (samples, k)
    diffs = np.array([bleu_from_stats(b) - bleu_from_stats(a) for a, b in zip(sums_a, sums_b)])
    delta = bleu_from_stats(stats_b.sum(0)) - bleu_from_stats(stats_a.sum(0))
    p = float(np.mean(diffs <= 0) if delta > 0 else np.mean(diffs >= 0) if delta < 0 else 1.0)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"delta": float(delta), "low": float(low), "high": float(high), "p": p}


def chrf_with_signature(hyps: list[str], refs: list[str]):
    metric = sacrebleu.metrics.CHRF()
    return metric.corpus_score(hyps, [refs]), str(metric.get_signature())


@torch.no_grad()
def char_error_rate(hyps: list[str], refs: list[str]) -> float:
    """CER in %: the characters' edit distance (insertions, deletions, substitutions) summed
    over the sentences, divided by the number of reference characters."""
    edits = 0
    for h, r in zip(hyps, refs):
        prev = list(range(len(r) + 1))  # Levenshtein, one row at a time
        for i, hc in enumerate(h, 1):
            cur = [i]
            for j, rc in enumerate(r, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (hc != rc)))
            prev = cur
        edits += prev[-1]
    return 100.0 * edits / max(1, sum(len(r) for r in refs))


def corpus_nll(model, src_ids: list[list[int]], tgt_ids: list[list[int]], batch_size: int = 64,
               device: torch.device | str = "cpu", copy: list | None = None) -> tuple[float, int]:
    """Summed teacher-forced NLL (nats) over all target tokens (incl. EOS), and their count; a
    copy model needs ``copy``, each pair's :class:`~attendo.data.batching.CopyIds`."""
    if model.copies and copy is None:
        raise ValueError("corpus_nll: this model copies from the source (model.copy); pass "
                         "copy=encode_copy(corpus, src_codec, tgt_codec, kept) for the same pairs")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    plans = make_batches([len(s) for s in src_ids], [len(t) for t in tgt_ids],
                         batch_size=batch_size, batch_type="sentences", shuffle=False)
    for plan in plans:
        ext = None if copy is None else [copy[i] for i in plan]
        b = collate([src_ids[i] for i in plan], [tgt_ids[i] for i in plan], plan,
                    copy=ext).to(device)
        _, nll, n = model.loss(b.src, b.src_lens, b.tgt_in, b.loss_target, Vocab.PAD,
                               src_ext=b.src_ext)
        total += float(nll)
        count += n
    model.train(was_training)
    return total, count


def perplexity(nll_sum: float, n_tokens: int) -> float:
    return math.exp(min(nll_sum / max(n_tokens, 1), 100.0))
