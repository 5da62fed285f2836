"""Text in, text out: the inference API behind ``attendo translate`` and ``attendo.load``.

    >>> import attendo
    >>> t = attendo.load("runs/dates")
    >>> out = t.translate(["march 3, 1987"], beam=5, return_attention=True)
    >>> out[0].text, out[0].attention.shape   # (output tokens incl. </s>, source tokens)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import MODEL_FILE, load_weights
from .config import Config, DecodeConfig, load_config
from .data.batching import collate, make_batches
from .data.prepare import Codec, load_codecs
from .data.vocab import Vocab
from .model.seq2seq import Seq2Seq, build_model
from .search import Hypothesis, beam_search, greedy_search

log = logging.getLogger("attendo")


@dataclass
class Translation:
    text: str  # detokenized output
    src_tokens: list[str]  # source pieces the model saw
    tgt_tokens: list[str]  # output pieces, with "</s>" last when the model ended the sentence
    score: float  # search score (length-normalised log-probability)
    log_prob: float
    attention: np.ndarray | None = None  # (len(tgt_tokens), len(src_tokens)), rows sum to 1
    info: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. p_gen: (len(tgt_tokens),)
    nbest: list[Translation] = field(default_factory=list)  # all n-best, best first (incl. this)

    def to_dict(self, with_attention: bool = True) -> dict:
        d = {
            "text": self.text,
            "score": self.score,
            "src_tokens": self.src_tokens,
            "tgt_tokens": self.tgt_tokens,
        }
        if with_attention and self.attention is not None:
            d["attention"] = np.round(self.attention, 4).tolist()
        if self.nbest and len(self.nbest) > 1:
            d["nbest"] = [{"text": h.text, "score": h.score} for h in self.nbest]
        return d


def max_output_lengths(src_lens: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    """Output caps: ratio * source length + 10, never above decode.max_len."""
    return (src_lens.float() * cfg.max_len_ratio + 10).long().clamp(max=cfg.max_len)


class Translator:
    def __init__(self, model: Seq2Seq, src: Codec, tgt: Codec, cfg: Config, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.src, self.tgt, self.cfg, self.device = src, tgt, cfg, torch.device(device)

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, weights: str | Path | None = None, device: str = "cpu"
    ) -> Translator:
        """Load a trained model directory (config, tokenizers, vocabularies, best weights)."""
        model_dir = Path(model_dir)
        if not (model_dir / "config.yaml").exists():
            raise FileNotFoundError(f"{model_dir}: not a model directory (no config.yaml)")
        cfg = load_config(model_dir / "config.yaml")
        src, tgt = load_codecs(model_dir, cfg.data.lowercase)
        model = build_model(cfg.model, len(src.vocab), len(tgt.vocab))
        load_weights(weights or model_dir / MODEL_FILE, model)
        return cls(model, src, tgt, cfg, device)

    def _hyp_to_translation(self, h: Hypothesis, src_pieces: list[str]) -> Translation:
        ids = h.tokens
        ended = bool(ids) and ids[-1] == Vocab.EOS
        body = ids[:-1] if ended else ids
        pieces = self.tgt.vocab.decode(body, strip=False)
        tokens = pieces + (["</s>"] if ended else [])
        attn = None if h.attn is None else h.attn[: len(tokens), : len(src_pieces)].float().cpu().numpy()
        # per-head attention (T, L, H, S) is trimmed to the real source length like attention
        info = {
            k: (v[: len(tokens), ..., : len(src_pieces)] if k == "attn_heads" else v[: len(tokens)])
            .float().cpu().numpy()
            for k, v in h.info.items()
        }
        return Translation(
            self.tgt.tokenizer.decode(self.tgt.vocab.decode(body)),
            src_pieces,
            tokens,
            h.score,
            h.log_prob,
            attn,
            info,
        )

    @torch.no_grad()
    def translate(
        self,
        texts: list[str],
        beam: int | None = None,
        n_best: int = 1,
        return_attention: bool = False,
        length_penalty: float | None = None,
        batch_size: int | None = None,
    ) -> list[Translation]:
        """Translate sentences; empty input gives empty output; over-long input is truncated
        to decode.max_input_tokens pieces (with a warning)."""
        cfg = self.cfg.decode
        beam = cfg.beam_size if beam is None else beam
        alpha = cfg.length_penalty if length_penalty is None else length_penalty
        if beam < 1 or n_best < 1 or n_best > beam:
            raise ValueError(f"need 1 <= n_best ({n_best}) <= beam ({beam})")
        pieces = [self.src.pieces(t) for t in texts]
        for i, p in enumerate(pieces):
            if len(p) > cfg.max_input_tokens:
                log.warning(
                    "input %d has %d tokens; truncated to decode.max_input_tokens=%d",
                    i + 1, len(p), cfg.max_input_tokens,
                )
                pieces[i] = p[: cfg.max_input_tokens]
        ids = [self.src.vocab.encode(p) for p in pieces]
        results: list[Translation | None] = [None] * len(texts)
        todo = [i for i, x in enumerate(ids) if x]
        for i, x in enumerate(ids):
            if not x:
                results[i] = Translation("", [], [], 0.0, 0.0, np.zeros((0, 0)) if return_attention else None)
        lens = [len(ids[i]) for i in todo]
        for plan in make_batches(lens, None, batch_size=batch_size or cfg.batch_size,
                                 batch_type="sentences", shuffle=False):
            rows = [todo[j] for j in plan]
            batch = collate([ids[r] for r in rows], None, rows).to(self.device)
            state = self.model.start(batch.src, batch.src_lens)
            caps = max_output_lengths(batch.src_lens, cfg)
            if beam == 1:
                hyps = [[h] for h in greedy_search(
                    self.model.decoder, state, batch.size, Vocab.BOS, Vocab.EOS, caps,
                    return_info=return_attention)]
            else:
                hyps = beam_search(
                    self.model.decoder, state, batch.size, Vocab.BOS, Vocab.EOS, caps,
                    beam_size=beam, n_best=n_best, alpha=alpha, return_info=return_attention)
            for r, hs in zip(rows, hyps):
                ts = [self._hyp_to_translation(h, pieces[r]) for h in hs]
                ts[0].nbest = ts
                results[r] = ts[0]
        return results  # type: ignore[return-value]


def load(model_dir: str | Path, device: str = "cpu") -> Translator:
    """Load a trained model directory for translation (the public Python API)."""
    return Translator.from_dir(model_dir, device=device)
