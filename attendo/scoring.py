"""Forced decoding: the log-probability a model gives to given translations, per sentence and
per target piece (``attendo score``; fairseq's ``--score-reference``, Sockeye's ``score``,
CTranslate2's ``score_batch``).

    >>> import attendo
    >>> from attendo.scoring import score_pairs
    >>> t = attendo.load("runs/dates")
    >>> s = score_pairs(t, ["march 3, 1987"], ["1987-03-03"])[0]
    >>> s.log_prob, s.tgt_tokens[-1]   # the sum of s.token_log_probs, "</s>" included

These are the numbers of training's loss (without label smoothing) on the same pairs: each
target piece and the final ``</s>`` is scored teacher-forced given the source and the pieces
before it, in fp32 with the model in eval mode (no dropout), so the sum of ``-log_prob`` over
a set of pairs is :func:`attendo.metrics.corpus_nll` of those pairs. A copy model
(``model.copy``) scores a target word that its vocabulary lacks but the source holds as that
word (by copying), and any other unknown word as ``<unk>``, as training's loss target
(:attr:`attendo.data.batch.Batch.loss_target`) does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from .data.batching import collate, make_batches
from .data.corpus import clean_texts
from .data.prepare import ImageCodec, copy_ids
from .data.vocab import Vocab
from .errors import UsageError
from .metrics import perplexity

EOS_PIECE = Vocab.SPECIALS[Vocab.EOS]  # "</s>"


def check_pairs(src: list[str], tgt: list[str], src_name: str, tgt_name: str) -> None:
    """Files to score: one target line per non-empty source line (a UsageError otherwise)."""
    if len(src) != len(tgt):
        raise UsageError(f"{src_name} has {len(src)} lines but {tgt_name} has {len(tgt)}: "
                         "give one target line per source line")
    for lineno, s in enumerate(src, start=1):
        if not s:
            raise UsageError(f"{src_name}:{lineno}: empty source line; a translation is scored "
                             "given its source (fix or remove this line in both files)")


def format_scores(scored: list[Scored], as_json: bool) -> str:
    """One line per pair: '<log_prob>\\t<pieces>' or its JSON record."""
    if as_json:
        lines = [json.dumps(s.to_dict(), ensure_ascii=False, allow_nan=False) for s in scored]
    else:
        lines = [f"{s.log_prob:.6f}\t{s.n_tokens}" for s in scored]
    return "".join(line + "\n" for line in lines)


def summary(scored: list[Scored]) -> str:
    """Pairs, pieces, NLL per piece and perplexity, in one line."""
    tokens = sum(s.n_tokens for s in scored)
    nll = -sum(s.log_prob for s in scored)
    per_token = f"{nll / tokens:.4f}" if tokens else "n/a"
    ppl = f"{perplexity(nll, tokens):.3f}" if tokens else "n/a"
    return (f"score: {len(scored)} pairs, {tokens} tokens (</s> included), NLL per token "
            f"{per_token}, perplexity {ppl}")


@dataclass
class Scored:
    """One scored pair. ``tgt_tokens`` are the target pieces as the model scored them
    (a piece its vocabulary lacks shows as ``<unk>``, unless a copy model copies it from the
    source), then ``"</s>"``; ``token_log_probs[i]`` is the natural-log probability of
    ``tgt_tokens[i]`` given the source and the pieces before it; ``log_prob`` is their sum.
    ``src_tokens``: the source pieces the model read (after decode.max_input_tokens
    truncation); empty for an image model."""

    src_tokens: list[str]
    tgt_tokens: list[str]
    token_log_probs: list[float]
    log_prob: float

    @property
    def n_tokens(self) -> int:
        """Scored target pieces, ``"</s>"`` included."""
        return len(self.tgt_tokens)

    def to_dict(self) -> dict:
        """A JSON-ready dict (``json.dumps(..., allow_nan=False)`` works: a log-probability
        that is not finite, from a model whose numbers overflow, is None)."""
        return {
            "src_tokens": list(self.src_tokens),
            "tgt_tokens": list(self.tgt_tokens),
            "token_log_probs": [_finite_or_none(x) for x in self.token_log_probs],
            "log_prob": _finite_or_none(self.log_prob),
        }


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def score_pairs(
    translator,  # an attendo.translator.Translator (its model, codecs, config and sources())
    src_texts: list[str],
    tgt_texts: list[str],
    batch_size: int | None = None,
) -> list[Scored]:
    """Teacher-forced log-probabilities of ``tgt_texts[i]`` given ``src_texts[i]``, one
    :class:`Scored` per pair, in input order.

    Texts are cleaned as :meth:`Translator.translate` cleans them (a control character is a
    :class:`~attendo.data.corpus.TextError` naming ``src_texts[i]`` or ``tgt_texts[i]``).
    Sources are cut at decode.max_input_tokens pieces, as for translation (with a warning);
    targets are scored whole. An empty target scores ``"</s>"`` alone; an empty source is a
    :class:`~attendo.errors.UsageError` (a ValueError), as are lists of different lengths.
    For an image model (``data.src_type: image``) ``src_texts`` are image paths.
    ``batch_size``: pairs per batch (default decode.batch_size); the batch's full
    log-probabilities (B, T, V) are held at once, so lower it for large vocabularies."""
    if isinstance(src_texts, str) or isinstance(tgt_texts, str):
        raise TypeError("score_pairs: expected lists of strings, got a str; wrap it in a list")
    if len(src_texts) != len(tgt_texts):
        raise UsageError(f"score_pairs: got {len(src_texts)} sources but {len(tgt_texts)} "
                         "targets; expected one target per source")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"score_pairs: batch_size must be >= 1, got {batch_size}")
    src_texts = clean_texts(src_texts, "src_texts")
    tgt_texts = clean_texts(tgt_texts, "tgt_texts")
    model, vocab = translator.model, translator.tgt.vocab
    image = isinstance(translator.src, ImageCodec)
    if image and model.copies:  # the config refuses it; a hand-built translator might not
        raise UsageError("score_pairs: a copy model copies source words, and an image has none")
    for i, text in enumerate(src_texts):
        if not text:
            raise UsageError(f"src_texts[{i}] is empty: a translation is scored given its "
                             "source; give a non-empty source for every pair")
    src_pieces, src_ids = translator.sources(src_texts)  # (pieces shown, what encoder reads)
    tgt_pieces = [translator.tgt.pieces(t) for t in tgt_texts]
    _check_target_lengths(translator, tgt_pieces)
    # as in training: the decoder reads vocabulary ids (<unk> for unknown pieces); a copy
    # model's loss target is the extended ids, where a source-only word is scored as its copy
    tgt_ids = [vocab.encode(t) for t in tgt_pieces]
    copy = None
    if model.copies:
        copy = [copy_ids(s, t, vocab) for s, t in zip(src_pieces, tgt_pieces)]
    scored_ids = tgt_ids if copy is None else [c.tgt_ext for c in copy]  # what is scored

    results: list[Scored | None] = [None] * len(src_texts)
    plans = make_batches([len(s) for s in src_ids], [len(t) for t in tgt_ids],
                         batch_size=batch_size or translator.cfg.decode.batch_size,
                         batch_type="sentences", shuffle=False)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for rows in plans:
                batch = collate([src_ids[r] for r in rows], [tgt_ids[r] for r in rows], rows,
                                copy=None if copy is None else [copy[r] for r in rows])
                batch = batch.to(translator.device)
                lp, _ = model.log_probs(batch.src, batch.src_lens, batch.tgt_in,
                                        batch.src_ext)  # (B, T, V), V + n_ext with copy
                target = batch.loss_target  # (B, T): y EOS, extended ids with copy, padded
                tok = lp.float().gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T)
                tok = tok.masked_fill(batch.tgt_pad_mask, 0.0).cpu()  # (B, T)
                lens = batch.tgt_lens.tolist()  # (B,) len(y) + 1
                for b, r in enumerate(rows):
                    values = tok[b, : lens[b]].tolist()
                    oovs = None if batch.src_oovs is None else batch.src_oovs[b]
                    results[r] = Scored(
                        src_tokens=list(src_pieces[r]),
                        tgt_tokens=_pieces(scored_ids[r], vocab, oovs) + [EOS_PIECE],
                        token_log_probs=values,
                        log_prob=float(tok[b].double().sum()),
                    )
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _pieces(ids: list[int], vocab: Vocab, oovs: list[str] | None) -> list[str]:
    """The target pieces as scored: vocabulary entries, and a copy model's extended id V + k
    as the source-only piece oovs[k]."""
    V = len(vocab)
    return [vocab.itos[i] if i < V else oovs[i - V] for i in ids]  # type: ignore[index]


def _check_target_lengths(translator, tgt_pieces: list[list[str]]) -> None:
    """A Transformer decoder with learned positions reads at most model.max_positions target
    positions (``BOS y``): a longer target is an error naming it, before any batch runs."""
    cfg = translator.cfg.model
    if cfg.decoder != "transformer" or cfg.positions != "learned":
        return
    for i, p in enumerate(tgt_pieces):
        if len(p) + 1 > cfg.max_positions:
            raise UsageError(f"tgt_texts[{i}] has {len(p)} pieces; this model's decoder reads "
                             f"at most model.max_positions - 1 = {cfg.max_positions - 1}")
