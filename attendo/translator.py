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
from .constraints import OutputRules, continuation_pieces, encode_rules
from .data.batching import collate, make_batches
from .data.corpus import clean_texts
from .data.prepare import Codec, ImageCodec, copy_ids, load_sources
from .data.vocab import Vocab
from .errors import UsageError
from .model.seq2seq import Seq2Seq
from .scoring import score_pairs
from .search import Sampling, beam_search, greedy_search, sample_search
from .translation import Translation, nbest_lines, to_translation

__all__ = ["Translation", "Translator", "load", "nbest_lines", "max_output_lengths"]

log = logging.getLogger("attendo")

# what ``translate(return_alignment=True)`` links words with: attendo.align's
# translation_links(translator, translation, src_text), installed when attendo.align.links
# loads (``import attendo`` does it), so that decoding imports nothing from the layers above it
word_links: Callable[..., Iterable[tuple[int, int]] | None] | None = None


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
        self.unk_dict: dict[str, str] = {}  # replace_unk's dictionary when translate gets none

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

    @classmethod
    def ensemble(cls, model_dirs: list[str | Path], weights: list[str | Path | None] | None = None,
                 device: str = "cpu", overrides: list[str] | None = None) -> Translator:
        """Decode with several models at once, their probabilities averaged at each step
        (:class:`attendo.model.ensemble.Ensemble`; any mix of architectures sharing the
        source and target vocabularies). The first model's decode settings apply; one model
        directory gives a plain Translator."""
        from .model.ensemble import Ensemble, check_compatible

        weights = weights or [None] * len(model_dirs)
        members = [cls.from_dir(d, w, device, overrides)
                   for d, w in zip(model_dirs, weights, strict=True)]
        if len(members) == 1:
            return members[0]
        check_compatible([str(d) for d in model_dirs], [(m.src, m.tgt) for m in members])
        first = members[0]
        return cls(Ensemble([m.model for m in members]), first.src, first.tgt, first.cfg)

    def score(self, src_texts: list[str], tgt_texts: list[str], batch_size: int | None = None):
        """Log-probabilities of given translations (forced decoding), per sentence and per
        piece: :func:`attendo.scoring.score_pairs`."""
        return score_pairs(self, src_texts, tgt_texts, batch_size=batch_size)

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
        *,
        prefixes: list[str | None] | None = None,
        constraints: list[list[str] | None] | None = None,
        sampling: Sampling | None = None,
        replace_unk: bool = False,
        unk_dict: dict[str, str] | None = None,
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
        character's position.

        Per sentence (lists as long as ``texts``, None entries for none): ``prefixes``, target
        text the output starts with verbatim; ``constraints``, words or phrases that must each
        appear in the output (see :mod:`attendo.constraints`). ``sampling`` draws
        ``sampling.n`` outputs (the n-best) instead of searching. ``replace_unk`` writes the
        attended source word (or its ``unk_dict`` translation) for each ``<unk>``."""
        texts = self._clean(texts)
        opts = dict(prefixes=prefixes, constraints=constraints, sampling=sampling,
                    replace_unk=replace_unk, unk_dict=unk_dict)
        if return_alignment:
            if word_links is None:
                raise UsageError("return_alignment: word links come from attendo.align; "
                                 "import attendo (or attendo.align.links) first")
            out = self.translate(texts, beam, n_best, True, length_penalty, batch_size,
                                 coverage_penalty, block_ngram_repeat, **opts)
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
        if replace_unk and not self.model.has_attention:
            raise UsageError("replace_unk needs attention, and this model has none")
        unk_dict = (self.unk_dict if unk_dict is None else unk_dict) if replace_unk else None
        rules_ids = encode_rules(self.tgt, len(texts), prefixes, constraints)
        continuation = continuation_pieces(self.tgt) if rules_ids[1] is not None else None
        if sampling is not None and rules_ids[1] is not None:
            raise UsageError("lexical constraints need beam search; sampling cannot keep them")
        pieces, ids = self.sources(texts)
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
            rules = None
            if rules_ids != (None, None):
                rules = OutputRules(*[None if x is None else [x[r] for r in rows]
                                      for x in rules_ids], batch.size, self.device,
                                    continuation)
                caps = caps + rules.extra_length()
            opts = dict(return_info=return_attention or replace_unk, block_ngram_repeat=ngram,
                        rules=rules)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=bf16):
                state = model.start(batch.src, batch.src_lens, batch.src_ext, batch.n_ext)
                args = (model.decoder, state, batch.size, Vocab.BOS, Vocab.EOS, caps)
                n_src = (~state.src_pad_mask).sum(1).tolist()  # memory positions per row
                if sampling is not None:
                    hyps = sample_search(*args, sampling, **opts)
                elif beam == 1 and (rules is None or not rules.has_constraints):
                    hyps = [[h] for h in greedy_search(*args, coverage_penalty=beta, **opts)]
                else:  # constraints with beam 1: a beam of one, with its allocation
                    hyps = beam_search(*args, beam_size=beam, n_best=n_best, alpha=alpha,
                                       stop_rule=cfg.stop_rule, coverage_penalty=beta, **opts)
            for b, (r, hs) in enumerate(zip(rows, hyps)):
                oovs = None if batch.src_oovs is None else batch.src_oovs[b]
                ts = [to_translation(h, self.tgt, pieces[r], n_src[b], oovs, unk_dict)
                      for h in hs]
                ts[0].nbest = ts
                results[r] = ts[0]
                garbage += not math.isfinite(ts[0].score)
        if garbage:  # see attendo.search.impossible_if_invalid
            log.warning("%d of %d translations have no finite score: the model's "
                        "log-probabilities are NaN or overflow (diverged or corrupted weights?), "
                        "so its output is meaningless", garbage, len(todo))
        return results  # type: ignore[return-value]

    def _clean(self, texts: list) -> list:
        """:func:`clean_texts` of the inputs; an image model also takes PIL images and arrays
        (only paths are cleaned)."""
        if not isinstance(self.src, ImageCodec) or isinstance(texts, str):
            return clean_texts(texts, "texts")
        paths = clean_texts([t for t in texts if isinstance(t, str)], "image paths")
        return [paths.pop(0) if isinstance(t, str) else t for t in texts]

    def sources(self, texts: list) -> tuple[list[list[str]], list]:
        """Per input, the source pieces a Translation shows and what the encoder reads: the
        pieces' ids, the pieces cut at decode.max_input_tokens (with a warning); for an image
        model (``texts`` are image paths) no pieces and the images."""
        if isinstance(self.src, ImageCodec):
            return [[] for _ in texts], [self.src.encode(t, f"texts[{i}]")
                                         for i, t in enumerate(texts)]
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
