"""The encoder-decoder, built from a validated :class:`~attendo.config.ModelConfig`.

Only :func:`build_model` reads the config; modules take explicit arguments. It looks the
encoder and the decoder up in :data:`ENCODERS` and :data:`DECODERS` (``model.encoder``,
``model.decoder``), which map each name to the function that builds that module from the
config: a new encoder or decoder is one class (behind the contracts of
:mod:`attendo.model.interfaces`) and one registered builder. Attention scorers have their
registry in :mod:`attendo.model.attention` (``SCORERS``, ``model.attention``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import ConfigError, ModelConfig
from .cnn import CNNEncoder
from .copy import extra_words
from .coverage import coverage_loss, coverage_parameters, doubly_stochastic_loss
from .decoders import RNNDecoder
from .encoders import RNNEncoder
from .image import ImageEncoder
from .interfaces import Decoder, Encoder
from .transformer import TransformerDecoder, TransformerEncoder


class LossParts(NamedTuple):
    loss: Tensor  # summed training objective: (label-smoothed) NLL + lambda * coverage loss
    nll: Tensor  # summed NLL (detached)
    cov: Tensor | None  # summed coverage loss sum_ij min(a_ij, cov_ij) (detached), or None
    n_tokens: Tensor  # non-pad target tokens (a 0-dim tensor: no host sync)
    # guided alignment: summed cross-entropy -sum_t sum_s p(t,s) log a(t,s) (detached) and the
    # number of aligned target pieces (0-dim tensors), or None without alignment targets
    align: Tensor | None = None
    n_aligned: Tensor | None = None


ALIGN_EPS = 1e-9  # attention weights are clamped to this before the log


def alignment_loss(attn: Tensor, align: Tensor) -> tuple[Tensor, Tensor]:
    """Guided alignment (Garg et al. 2019): (summed cross-entropy, aligned rows) of attention
    ``attn`` (B, T, S) against targets ``align`` (B, T, S), each row a distribution over
    source positions or all zero (a target piece without links, or padding), i.e.
    (-sum_t sum_s p(t,s) log a(t,s), N_aligned); the loss is their ratio. Row t of ``attn``
    is the teacher-forced row that *predicts* target piece t. Both are 0-dim tensors."""
    if attn.shape != align.shape:
        raise ValueError(f"attention {tuple(attn.shape)} and alignment targets "
                         f"{tuple(align.shape)} differ in shape")
    p = align.float()
    logs = attn.float().clamp_min(ALIGN_EPS).log()
    ce = -(p * logs).sum()
    return ce, (p.sum(-1) > 0).sum()


class Seq2Seq(nn.Module):
    """Encoder + decoder. With ``model.copy`` every entry point takes ``src_ext`` (B, S), the
    source in the extended vocabulary (``Batch.src_ext``), and targets are extended ids
    (``Batch.tgt_out_ext``); ``n_ext`` (extra words in the batch) is computed when omitted."""

    def __init__(self, encoder: Encoder, decoder: Decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    # -- capabilities: what a caller outside the model package may ask of a model -----------
    # (declared by every decoder, see attendo.model.interfaces.Decoder)
    @property
    def copies(self) -> bool:
        """Whether the decoder is a pointer-generator (needs src_ext)."""
        return self.decoder.copies

    @property
    def has_attention(self) -> bool:
        """Whether decoding attends over the source (False for ``model.attention: none``):
        only then are there attention weights to draw, align or replace unknown words with."""
        return self.decoder.has_attention

    @property
    def has_coverage(self) -> bool:
        """Whether the decoder keeps a coverage vector (``model.coverage``)."""
        return self.decoder.has_coverage

    @property
    def attention_heads(self) -> tuple[int, int] | None:
        """(layers, heads) of the decoder's multi-head cross-attention, whose weights come
        per layer and head (a Transformer decoder); None for one attention distribution per
        step (an RNN decoder)."""
        return self.decoder.cross_attention_heads()

    def coverage_parameters(self) -> list[nn.Parameter]:
        """The coverage weights (``w_c`` of the scorer; zero-initialised, so a model starts as
        if it had no coverage): See et al.'s phase two starts them at 0."""
        return coverage_parameters(self)

    @contextmanager
    def unfused(self) -> Iterator[Seq2Seq]:
        """The model with the fused recurrent passes of :mod:`attendo.model.fused_rnn`
        switched off while the block runs (the same function, computed by the plain modules):
        what tracing needs, e.g. ONNX export, where the packed ``nn.GRU`` exports as one ONNX
        GRU and the fused loop would not."""
        parts = [m for m in (self.encoder, self.decoder) if isinstance(m, RNNEncoder | RNNDecoder)]
        before = [m.fused for m in parts]
        for m in parts:
            m.fused = False
        try:
            yield self
        finally:
            for m, fused in zip(parts, before):
                m.fused = fused

    def start(
        self, src: Tensor, src_lens: Tensor, src_ext: Tensor | None = None, n_ext: int | None = None
    ):
        """Encode a batch and return the decoder's initial (reorderable) state."""
        enc = self.encoder(src, src_lens)
        if not self.copies:
            return self.decoder.init_state(enc)
        if src_ext is None:
            raise ValueError(
                "model.copy: this model copies from the source and needs src_ext, the source in "
                "the extended vocabulary (Batch.src_ext; collate(..., copy=...) builds it)"
            )
        if n_ext is None:
            n_ext = extra_words(src_ext, self.decoder.vocab_size)
        return self.decoder.init_state(enc, src_ext, n_ext)

    def forward(
        self, src: Tensor, src_lens: Tensor, tgt_in: Tensor, src_ext: Tensor | None = None
    ) -> tuple[Tensor, dict]:
        """Teacher-forced pass: features (B, T, O) and info ({"attn": (B, T, S)}, ...)."""
        return self.decoder(tgt_in, self.start(src, src_lens, src_ext, 0))

    def log_probs(
        self, src: Tensor, src_lens: Tensor, tgt_in: Tensor, src_ext: Tensor | None = None
    ) -> tuple[Tensor, dict]:
        """Full log-probabilities (B, T, V) for every target position (V + n_ext with copy),
        and info."""
        feats, info = self(src, src_lens, tgt_in, src_ext)
        return self.decoder.log_probs(feats, info), info

    def losses(
        self,
        src: Tensor,
        src_lens: Tensor,
        tgt_in: Tensor,
        tgt_out: Tensor,
        pad_id: int,
        label_smoothing: float = 0.0,
        coverage_weight: float = 0.0,
        src_ext: Tensor | None = None,
        align: Tensor | None = None,
        align_weight: float = 0.0,
        coverage_form: str = "min",
    ) -> LossParts:
        """Summed (label-smoothed) loss, NLL and coverage loss over non-pad targets, and their
        count. ``coverage_weight`` is train.coverage_loss (lambda, See et al. 2017, eq. 13);
        the coverage loss is measured whenever the decoder has coverage. ``coverage_form``
        "doubly_stochastic" (train.coverage_loss_form) measures Show, Attend and Tell's form
        instead, from the attention alone (see :mod:`attendo.model.coverage`).

        ``align`` (B, T, S) (``Batch.align``): guided-alignment targets for the supervised
        attention (the Transformer decoder's ``info["align_attn"]`` head, else ``info["attn"]``);
        :func:`alignment_loss` is then measured, and with ``align_weight`` (lambda) the loss
        gets lambda * CE / N_aligned * n_tokens: after the trainer divides the summed loss by
        the target-token count, that is lambda times the mean cross-entropy per aligned target
        piece, -lambda / N_aligned * sum_t sum_s p(t,s) log a(t,s).

        The output layer runs only on non-pad positions: with length-bucketed batches that is
        most of them, but it is still the most expensive matrix product of an RNN model.
        """
        state = self.start(src, src_lens, src_ext, 0)
        feats, info = self.decoder(tgt_in, state)
        keep = tgt_out != pad_id  # (B, T)
        loss, nll = self.decoder.token_loss(feats, info, tgt_out, keep, label_smoothing)
        cov = None
        if coverage_form == "doubly_stochastic" and info.get("attn") is not None:
            cov = doubly_stochastic_loss(info["attn"].float(), keep, state.src_pad_mask)
        elif "coverage" in info:
            cov = coverage_loss(info["attn"].float(), info["coverage"].float(), keep)
        if cov is not None:
            if coverage_weight:
                loss = loss + coverage_weight * cov
            cov = cov.detach()
        n_tokens = keep.sum()
        ce = n_aligned = None
        if align is not None:
            attn = info.get("align_attn", info["attn"])
            if attn is None:
                raise ValueError("guided alignment needs attention, and this model has none")
            ce, n_aligned = alignment_loss(attn, align)
            if align_weight:
                loss = loss + align_weight * ce * (n_tokens / n_aligned.clamp_min(1))
            ce = ce.detach()
        # the counts stay tensors: no host synchronisation inside a training step
        return LossParts(loss, nll.detach(), cov, n_tokens, ce, n_aligned)

    def loss(
        self,
        src: Tensor,
        src_lens: Tensor,
        tgt_in: Tensor,
        tgt_out: Tensor,
        pad_id: int,
        label_smoothing: float = 0.0,
        src_ext: Tensor | None = None,
        coverage_weight: float = 0.0,
    ) -> tuple[Tensor, Tensor, int]:
        """(loss, detached NLL, token count) of :meth:`losses`."""
        parts = self.losses(
            src, src_lens, tgt_in, tgt_out, pad_id, label_smoothing, coverage_weight, src_ext
        )
        return parts.loss, parts.nll, int(parts.n_tokens)


def assemble_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int,
                   pad_id: int = 0) -> Seq2Seq:
    """:func:`attendo.model.size.build_model` without its size check (the estimate builds
    with this on ``meta``)."""
    if cfg.tie_src_tgt and src_vocab_size != tgt_vocab_size:
        raise ConfigError(
            f"model.tie_src_tgt: needs one joint vocabulary (data.joint_vocab: true), but the "
            f"source vocabulary has {src_vocab_size} entries and the target {tgt_vocab_size}"
        )
    encoder = _build_encoder(cfg, src_vocab_size, pad_id)
    decoder = _build_decoder(cfg, tgt_vocab_size, encoder.out_dim, pad_id)
    for part in (encoder, decoder):
        if isinstance(part, RNNEncoder | RNNDecoder):
            _init_uniform(part, 0.1)
    if cfg.tie_src_tgt:
        encoder.embed = decoder.embed
    return Seq2Seq(encoder, decoder)


EncoderBuilder = Callable[[ModelConfig, int, int], Encoder]  # (cfg, vocab_size, pad_id)
DecoderBuilder = Callable[[ModelConfig, int, int, int], Decoder]  # (cfg, vocab, enc_dim, pad_id)

ENCODERS: dict[str, EncoderBuilder] = {}  # model.encoder -> builder
DECODERS: dict[str, DecoderBuilder] = {}  # model.decoder -> builder


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    def add(build: EncoderBuilder) -> EncoderBuilder:
        ENCODERS[name] = build
        return build
    return add


def register_decoder(name: str) -> Callable[[DecoderBuilder], DecoderBuilder]:
    def add(build: DecoderBuilder) -> DecoderBuilder:
        DECODERS[name] = build
        return build
    return add


def _build_encoder(cfg: ModelConfig, vocab_size: int, pad_id: int) -> Encoder:
    return ENCODERS[cfg.encoder](cfg, vocab_size, pad_id)


def _build_decoder(cfg: ModelConfig, vocab_size: int, enc_dim: int, pad_id: int) -> Decoder:
    return DECODERS[cfg.decoder](cfg, vocab_size, enc_dim, pad_id)


@register_encoder("rnn")
def _rnn_encoder(cfg: ModelConfig, vocab_size: int, pad_id: int) -> Encoder:
    return RNNEncoder(
        vocab_size, cfg.emb_dim, cfg.enc_hidden, layers=cfg.enc_layers,
        bidirectional=cfg.bidirectional, rnn_type=cfg.rnn_type, dropout=cfg.dropout, pad_id=pad_id,
    )


@register_encoder("cnn")
def _cnn_encoder(cfg: ModelConfig, vocab_size: int, pad_id: int) -> Encoder:
    return CNNEncoder(
        vocab_size, cfg.emb_dim, cfg.enc_hidden, layers=cfg.enc_layers, kernel=cfg.cnn_kernel,
        dropout=cfg.dropout, max_positions=cfg.max_positions, pad_id=pad_id,
    )


@register_encoder("transformer")
def _transformer_encoder(cfg: ModelConfig, vocab_size: int, pad_id: int) -> Encoder:
    return TransformerEncoder(
        vocab_size, cfg.d_model, cfg.heads, cfg.ff_dim, layers=cfg.enc_layers,
        dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, norm=cfg.norm,
        positions=cfg.positions, max_positions=cfg.max_positions, pad_id=pad_id,
        normalizer=cfg.attention_normalizer,
    )


@register_encoder("image")
def _image_encoder(cfg: ModelConfig, channels: int, pad_id: int) -> Encoder:
    # an image model's source "vocabulary size" is its number of channels (see ImageCodec)
    return ImageEncoder(channels, cfg.enc_hidden, cfg.enc_layers, cfg.image_pool, cfg.image_rnn,
                        cfg.dropout)


@register_decoder("rnn")
def _rnn_decoder(cfg: ModelConfig, vocab_size: int, enc_dim: int, pad_id: int) -> Decoder:
    return RNNDecoder(
        vocab_size, cfg.emb_dim, cfg.dec_hidden, enc_dim=enc_dim,
        enc_final_dim=enc_dim,  # RNN: last state per layer; CNN, Transformer: mean state
        layers=cfg.dec_layers, rnn_type=cfg.rnn_type, attention=cfg.attention,
        style=cfg.attention_style, input_feeding=cfg.input_feeding, bridge=cfg.bridge,
        out_dim=cfg.attn_vector_dim, tie_output=cfg.tie_output, dropout=cfg.dropout,
        location_max_len=cfg.location_max_len, pad_id=pad_id, coverage=cfg.coverage,
        copy=cfg.copy, normalizer=cfg.attention_normalizer, window=cfg.attention_window,
        local=cfg.local, context_gate=cfg.context_gate, coverage_window=cfg.coverage_window,
    )


@register_decoder("transformer")
def _transformer_decoder(cfg: ModelConfig, vocab_size: int, enc_dim: int, pad_id: int) -> Decoder:
    return TransformerDecoder(
        vocab_size, enc_dim, cfg.d_model, cfg.heads, cfg.ff_dim, layers=cfg.dec_layers,
        dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, norm=cfg.norm,
        positions=cfg.positions, max_positions=cfg.max_positions, tie_output=cfg.tie_output,
        attn_layer=cfg.attn_layer, pad_id=pad_id, copy=cfg.copy,
        normalizer=cfg.attention_normalizer,
    )


@torch.no_grad()
def _init_uniform(model: nn.Module, scale: float) -> None:
    """U(-0.1, 0.1) for every parameter, the classic RNN-NMT initialisation (OpenNMT's default)."""
    for p in model.parameters():
        p.uniform_(-scale, scale)
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            m.weight[m.padding_idx].zero_()
