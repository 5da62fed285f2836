"""Corpus metrics shared by validation and ``attendo evaluate``: sacreBLEU, chrF, perplexity."""

from __future__ import annotations

import math

import sacrebleu
import torch

from .data.batching import collate, make_batches
from .data.vocab import Vocab


def bleu(hyps: list[str], refs: list[str], tokenize: str = "13a", lowercase: bool = False):
    """Corpus BLEU on detokenized text (sacreBLEU); ``.score``."""
    return bleu_with_signature(hyps, refs, tokenize, lowercase)[0]


def bleu_with_signature(
    hyps: list[str], refs: list[str], tokenize: str = "13a", lowercase: bool = False
):
    """(BLEU score object, sacreBLEU signature string) for one reference per sentence."""
    metric = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase)
    score = metric.corpus_score(hyps, [refs])
    return score, str(metric.get_signature())


def chrf_with_signature(hyps: list[str], refs: list[str]):
    metric = sacrebleu.metrics.CHRF()
    score = metric.corpus_score(hyps, [refs])
    return score, str(metric.get_signature())


@torch.no_grad()
def corpus_nll(
    model, src_ids: list[list[int]], tgt_ids: list[list[int]], batch_size: int = 64,
    device: torch.device | str = "cpu", copy: list | None = None,
) -> tuple[float, int]:
    """Summed teacher-forced NLL (nats) over all target tokens (incl. EOS), and their count.

    A copy model needs ``copy``: each pair's :class:`~attendo.data.batching.CopyIds`
    (``attendo.data.prepare.encode_copy`` of the same pairs)."""
    if getattr(model, "copies", False) and copy is None:
        raise ValueError(
            "corpus_nll: this model copies from the source (model.copy); pass "
            "copy=encode_copy(corpus, src_codec, tgt_codec, kept) for the same pairs"
        )
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    plans = make_batches([len(s) for s in src_ids], [len(t) for t in tgt_ids],
                         batch_size=batch_size, batch_type="sentences", shuffle=False)
    for plan in plans:
        ext = None if copy is None else [copy[i] for i in plan]
        b = collate([src_ids[i] for i in plan], [tgt_ids[i] for i in plan], plan, copy=ext)
        b = b.to(device)
        _, nll, n = model.loss(b.src, b.src_lens, b.tgt_in, b.loss_target, Vocab.PAD,
                               src_ext=b.src_ext)
        total += float(nll)
        count += n
    model.train(was_training)
    return total, count


def perplexity(nll_sum: float, n_tokens: int) -> float:
    return math.exp(min(nll_sum / max(n_tokens, 1), 100.0))
