"""Text in, text out: the inference API behind ``attendo translate`` and ``attendo.load``.

    >>> import attendo
    >>> t = attendo.load("runs/dates")
    >>> out = t.translate(["march 3, 1987"], beam=5, return_attention=True)
    >>> out[0].text, out[0].attention.shape   # (output tokens incl. </s>, source tokens)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import (
    DECODING_FILES,
    MODEL_FILE,
    build_model_for_weights,
    check_model_dir,
    load_weights,
)
from .config import Config, ConfigError, DecodeConfig, load_config
from .data.batching import collate, make_batches
from .data.corpus import clean_texts
from .data.prepare import Codec, ImageCodec, copy_ids, load_sources
from .data.vocab import Vocab
from .errors import UsageError
from .model.seq2seq import Seq2Seq
from .search import Hypothesis, beam_search, greedy_search

log = logging.getLogger("attendo")

# what ``translate(return_alignment=True)`` links words with: attendo.align's
# translation_links(translator, translation, src_text), installed by attendo/__init__.py so
# that decoding imports nothing from the layers above it (align reads translations)
word_links: Callable[..., Iterable[tuple[int, int]] | None] | None = None


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
    # copy models: p_gen of each output token (len(tgt_tokens),), 1 = generated, 0 = copied
    p_gen: np.ndarray | None = None
    # coverage models: coverage before each output token (len(tgt_tokens), len(src_tokens))
    coverage: np.ndarray | None = None
    # return_alignment: (source word, output word) links, 0-based whitespace words of the input
    # and of ``text`` (argmax of attention, see attendo.align); None when not asked for
    alignment: list[tuple[int, int]] | None = None

    def to_dict(self, with_attention: bool = True) -> dict:
        """A JSON-ready dict (``json.dumps(..., allow_nan=False)`` works): a score that is not
        finite (a model that gives no finite score, see :func:`attendo.search.beam_search`)
        is None, as in the server's answers."""
        d = {
            "text": self.text,
            "score": _finite_or_none(self.score),
            "src_tokens": self.src_tokens,
            "tgt_tokens": self.tgt_tokens,
        }
        if with_attention and self.attention is not None:
            d["attention"] = np.round(self.attention, 4).tolist()
        if self.p_gen is not None:
            d["p_gen"] = np.round(self.p_gen, 4).tolist()
        if with_attention and self.coverage is not None:
            d["coverage"] = np.round(self.coverage, 4).tolist()
        if self.alignment is not None:
            d["alignment"] = [list(x) for x in self.alignment]
        if self.nbest and len(self.nbest) > 1:
            d["nbest"] = [{"text": h.text, "score": _finite_or_none(h.score)} for h in self.nbest]
        return d


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def max_output_lengths(src_lens: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    """Output caps: ratio * source length + 10, never above decode.max_len."""
    return (src_lens.float() * cfg.max_len_ratio + 10).long().clamp(max=cfg.max_len)


class Translator:
    def __init__(
        self, model: Seq2Seq, src: Codec | ImageCodec, tgt: Codec, cfg: Config,
        device: str | torch.device | None = None,
    ):
        """Translate with ``model`` where it is: a Translator never moves a model (it may be
        one that a Trainer is training). ``device`` (optional) only states where it is
        expected; a model elsewhere is an error, not a silent copy. Translating switches the
        model to eval mode (a Trainer switches it back)."""
        here = next(model.parameters()).device
        if device is not None and torch.device(device) != here and not (
            torch.device(device).type == here.type and torch.device(device).index is None
        ):
            raise ValueError(
                f"the model is on {here}, not {device}: move it first (model.to({str(device)!r}))"
                " or leave device unset; a Translator does not move the model it is given"
            )
        self.model = model.eval()
        self.src, self.tgt, self.cfg, self.device = src, tgt, cfg, here
        self._int8: tuple[tuple, Seq2Seq] | None = None  # (weights' identity and versions, copy)

    def search_model(self, precision: str = "fp32") -> Seq2Seq:
        """The model to search with: ``self.model`` for fp32 and bf16 (autocast); for int8 a
        copy whose linear layers are dynamically quantized (int8 weights with one scale per
        output row, as CTranslate2's; activations quantized per call, where CTranslate2 scales
        each row), made once and made again only when
        the weights change (training updates them in place, which bumps their version
        counters). Recurrent cells and embeddings stay fp32; log-probabilities are fp32."""
        if precision != "int8":
            return self.model
        if self.device.type != "cpu":
            raise ConfigError("decode.precision: int8 (dynamic quantization) runs on CPU only")
        key = tuple((id(p), p._version) for p in self.model.parameters())
        if self._int8 is None or self._int8[0] != key:
            self._int8 = (key, quantize_linear_int8(self.model))
        return self._int8[1]

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        weights: str | Path | None = None,
        device: str = "cpu",
        overrides: list[str] | None = None,
    ) -> Translator:
        """Load a trained model directory (config, tokenizers, vocabularies, best weights).

        ``overrides``: dotted ``decode.*`` settings (e.g. ``decode.block_ngram_repeat=3``)."""
        model_dir = Path(model_dir)
        if not (model_dir / "config.yaml").exists():
            raise FileNotFoundError(f"{model_dir}: not a model directory (no config.yaml)")
        for item in overrides or []:
            if not item.strip().startswith("decode."):
                raise ConfigError(
                    f"override {item!r}: only decode.* settings can change for a trained model"
                )
        # the files it reads are its own: a link to elsewhere is refused
        check_model_dir(model_dir, DECODING_FILES + (() if weights else (MODEL_FILE,)))
        cfg = load_config(model_dir / "config.yaml", overrides)
        src, tgt = load_sources(model_dir, cfg.data)
        weights = Path(weights) if weights else model_dir / MODEL_FILE
        # sizes in config.yaml are checked against memory and the weights' header before any
        # allocation
        model = build_model_for_weights(
            weights, cfg.model, src.size, len(tgt.vocab), model_dir / "config.yaml",
            device=device,
        )
        load_weights(weights, model, str(model_dir / "config.yaml"))
        return cls(model.to(device), src, tgt, cfg)  # the translator owns this model

    def _hyp_to_translation(
        self, h: Hypothesis, src_pieces: list[str], n_src: int, oovs: list[str] | None = None
    ) -> Translation:
        """``n_src``: the source's memory positions (its pieces, or an image's regions)."""
        ids = h.tokens
        ended = bool(ids) and ids[-1] == Vocab.EOS
        body = ids[:-1] if ended else ids
        if oovs is None:
            pieces = self.tgt.vocab.decode(body, strip=False)
            text = self.tgt.tokenizer.decode(self.tgt.vocab.decode(body))
        else:
            pieces, text = self._decode_copy(body, oovs)
        tokens = pieces + (["</s>"] if ended else [])
        attn = None if h.attn is None else h.attn[: len(tokens), :n_src].float().cpu().numpy()
        # per-head attention (T, L, H, S) and coverage (T, S) are trimmed to the real source
        # length like attention
        info = {
            k: (v[: len(tokens), ..., :n_src] if k in ("attn_heads", "coverage")
                else v[: len(tokens)])
            .float().cpu().numpy()
            for k, v in h.info.items()
        }
        return Translation(
            text,
            src_pieces,
            tokens,
            h.score,
            h.log_prob,
            attn,
            info,
            p_gen=info.get("p_gen"),
            coverage=info.get("coverage"),
        )

    def _decode_copy(self, body: list[int], oovs: list[str]) -> tuple[list[str], str]:
        """Output pieces and text of a copy model: id V + k is the source-only piece oovs[k],
        written verbatim."""
        vocab, V = self.tgt.vocab, len(self.tgt.vocab)
        unk = Vocab.SPECIALS[Vocab.UNK]
        pieces = [vocab.itos[i] if i < V else (oovs[i - V] if i - V < len(oovs) else unk)
                  for i in body]
        kept = []  # what vocab.decode(strip=True) keeps: stop at EOS, drop PAD/BOS
        for i, piece in zip(body, pieces):
            if i == Vocab.EOS:
                break
            if i not in (Vocab.PAD, Vocab.BOS):
                kept.append(piece)
        text = self.tgt.tokenizer.decode(kept)
        if any(i >= V for i in body) and self.tgt.tokenizer.kind in ("bpe", "unigram"):
            # sentencepiece writes pieces it does not know as they are, word-boundary mark
            # included: turn the marks of copied pieces into spaces
            text = " ".join(text.replace("\u2581", " ").split())
        return pieces, text

    @torch.inference_mode()
    def translate(
        self,
        texts: list[str],
        beam: int | None = None,
        n_best: int = 1,
        return_attention: bool = False,
        length_penalty: float | None = None,
        batch_size: int | None = None,
        coverage_penalty: float | None = None,
        block_ngram_repeat: int | None = None,
        return_alignment: bool = False,
    ) -> list[Translation]:
        """Translate sentences; empty input gives empty output; over-long input is truncated
        to decode.max_input_tokens pieces (with a warning). Options left None come from
        the decode config. A copy model writes source words it copies verbatim.
        ``return_alignment`` (implies attention) sets each best Translation's ``alignment``
        (empty when its pieces do not map onto words, see :mod:`attendo.align`).

        Each text is checked and cleaned as files and stdin are
        (:func:`attendo.data.corpus.clean_text`): a byte-order mark and surrounding whitespace
        are dropped (whitespace-only text translates to ``""``); a control character is a
        :class:`~attendo.data.corpus.TextError` (a ValueError) naming ``texts[i]`` and the
        character's position."""
        texts = clean_texts(texts, "texts")
        if return_alignment:
            out = self.translate(texts, beam, n_best, True, length_penalty, batch_size,
                                 coverage_penalty, block_ngram_repeat)
            for text, t in zip(texts, out):
                t.alignment = sorted(word_links(self, t, text) or ())
            return out
        cfg = self.cfg.decode
        beam = cfg.beam_size if beam is None else beam
        alpha = cfg.length_penalty if length_penalty is None else length_penalty
        beta = cfg.coverage_penalty if coverage_penalty is None else coverage_penalty
        ngram = cfg.block_ngram_repeat if block_ngram_repeat is None else block_ngram_repeat
        if beam < 1 or n_best < 1 or n_best > beam:
            raise UsageError(f"need 1 <= n_best ({n_best}) <= beam ({beam})")
        pieces, ids = self._sources(texts)
        results: list[Translation | None] = [None] * len(texts)
        todo = [i for i, x in enumerate(ids) if x]
        for i, x in enumerate(ids):
            if not x:
                results[i] = Translation("", [], [], 0.0, 0.0, np.zeros((0, 0)) if return_attention else None)
        lens = [len(ids[i]) for i in todo]
        model = self.search_model(cfg.precision)
        bf16 = cfg.precision == "bf16"
        garbage = 0  # sentences whose best output scores -inf: the model gives no numbers
        for plan in make_batches(lens, None, batch_size=batch_size or cfg.batch_size,
                                 batch_type="sentences", shuffle=False):
            rows = [todo[j] for j in plan]
            copy = None
            if model.copies:
                copy = [copy_ids(pieces[r], None, self.tgt.vocab) for r in rows]
            batch = collate([ids[r] for r in rows], None, rows, copy=copy).to(self.device)
            caps = max_output_lengths(batch.src_lens, cfg)
            opts = dict(return_info=return_attention, block_ngram_repeat=ngram,
                        coverage_penalty=beta)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=bf16):
                state = model.start(batch.src, batch.src_lens, batch.src_ext, batch.n_ext)
                n_src = (~state.src_pad_mask).sum(1).tolist()  # memory positions per row
                if beam == 1:
                    hyps = [[h] for h in greedy_search(
                        model.decoder, state, batch.size, Vocab.BOS, Vocab.EOS, caps, **opts)]
                else:
                    hyps = beam_search(
                        model.decoder, state, batch.size, Vocab.BOS, Vocab.EOS, caps,
                        beam_size=beam, n_best=n_best, alpha=alpha, stop_rule=cfg.stop_rule, **opts)
            for b, (r, hs) in enumerate(zip(rows, hyps)):
                oovs = None if batch.src_oovs is None else batch.src_oovs[b]
                ts = [self._hyp_to_translation(h, pieces[r], n_src[b], oovs) for h in hs]
                ts[0].nbest = ts
                results[r] = ts[0]
                garbage += not math.isfinite(ts[0].score)
        if garbage:  # see attendo.search.impossible_if_invalid
            log.warning("%d of %d translations have no finite score: the model's "
                        "log-probabilities are NaN or overflow (diverged or corrupted weights?), "
                        "so its output is meaningless", garbage, len(todo))
        return results  # type: ignore[return-value]

    def _sources(self, texts: list[str]) -> tuple[list[list[str]], list]:
        """Per input, the source pieces a Translation shows and what the encoder reads: the
        pieces' ids, the pieces cut at decode.max_input_tokens (with a warning); for an image
        model (``texts`` are image paths) no pieces and the images."""
        if isinstance(self.src, ImageCodec):
            return [[] for _ in texts], [self.src.encode(t) for t in texts]
        limit = self.cfg.decode.max_input_tokens
        pieces = [self.src.pieces(t) for t in texts]
        for i, p in enumerate(pieces):
            if len(p) > limit:
                log.warning("input %d has %d tokens; truncated to decode.max_input_tokens=%d",
                            i + 1, len(p), limit)
                pieces[i] = p[:limit]
        return pieces, [self.src.vocab.encode(p) for p in pieces]

    @torch.no_grad()
    def encoder_self_attention(self, src_tokens: list[list[str]]) -> list[np.ndarray | None]:
        """Encoder self-attention (L, H, S, S) of each source, given as the pieces the model
        saw (``Translation.src_tokens``); None for an empty source or an encoder without
        self-attention (RNN, CNN). For pictures: it encodes once more, with weights."""
        out: list[np.ndarray | None] = [None] * len(src_tokens)
        encoder = self.model.encoder
        if not hasattr(encoder, "self_attention"):
            return out
        todo = [i for i, p in enumerate(src_tokens) if p]
        step = self.cfg.decode.batch_size
        for k in range(0, len(todo), step):
            rows = todo[k : k + step]
            batch = collate([self.src.vocab.encode(src_tokens[r]) for r in rows], None, rows)
            batch = batch.to(self.device)
            w = encoder.self_attention(batch.src, batch.src_lens)  # (B, L, H, S, S)
            for b, r in enumerate(rows):
                n = len(src_tokens[r])
                out[r] = w[b, :, :, :n, :n].float().cpu().numpy()
        return out


def quantize_linear_int8(model: Seq2Seq) -> Seq2Seq:
    """A copy of model whose nn.Linear layers compute in int8 (PyTorch's dynamic
    quantization: each weight matrix quantized once with one scale per output row, as
    CTranslate2 does, activations quantized on the fly per call; fbgemm kernels on x86). The
    copy is for inference only."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # PyTorch warns that quantized tensors will move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8, inplace=False).eval()


def load(model_dir: str | Path, device: str = "cpu") -> Translator:
    """Load a trained model directory for translation (the public Python API)."""
    return Translator.from_dir(model_dir, device=device)
