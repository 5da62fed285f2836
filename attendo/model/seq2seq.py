"""The encoder-decoder, built from a validated :class:`~attendo.config.ModelConfig`.

Only :func:`build_model` reads the config; modules take explicit arguments.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ConfigError, ModelConfig
from .cnn import CNNEncoder
from .decoders import RNNDecoder
from .encoders import RNNEncoder
from .transformer import TransformerDecoder, TransformerEncoder


class Seq2Seq(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def start(self, src: Tensor, src_lens: Tensor):
        """Encode a batch and return the decoder's initial (reorderable) state."""
        return self.decoder.init_state(self.encoder(src, src_lens))

    def forward(self, src: Tensor, src_lens: Tensor, tgt_in: Tensor) -> tuple[Tensor, dict]:
        """Teacher-forced pass: features (B, T, O) and info ({"attn": (B, T, S)})."""
        return self.decoder(tgt_in, self.start(src, src_lens))

    def log_probs(self, src: Tensor, src_lens: Tensor, tgt_in: Tensor) -> tuple[Tensor, dict]:
        """Full log-probabilities (B, T, V) for every target position, and info."""
        feats, info = self(src, src_lens, tgt_in)
        return self.decoder.log_probs(feats, info), info

    def loss(
        self,
        src: Tensor,
        src_lens: Tensor,
        tgt_in: Tensor,
        tgt_out: Tensor,
        pad_id: int,
        label_smoothing: float = 0.0,
    ) -> tuple[Tensor, Tensor, int]:
        """Summed (label-smoothed) loss and summed NLL over non-pad targets, and their count.

        The output layer runs only on non-pad positions: with length-bucketed batches that is
        most of them, but it is still the most expensive matrix product of an RNN model.
        """
        feats, info = self(src, src_lens, tgt_in)
        keep = tgt_out != pad_id  # (B, T)
        loss, nll = self.decoder.token_loss(feats, info, tgt_out, keep, label_smoothing)
        return loss, nll.detach(), int(keep.sum())


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0) -> Seq2Seq:
    """Encoder (rnn | cnn | transformer) + decoder (rnn | transformer), any mix.

    RNN parts start from U(-0.1, 0.1); CNN and Transformer parts initialise themselves
    (``reset_parameters``). ``tie_src_tgt`` makes the encoder use the decoder's embeddings.
    """
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


def _build_encoder(cfg: ModelConfig, vocab_size: int, pad_id: int) -> nn.Module:
    if cfg.encoder == "transformer":
        return TransformerEncoder(
            vocab_size, cfg.d_model, cfg.heads, cfg.ff_dim, layers=cfg.enc_layers,
            dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, norm=cfg.norm,
            positions=cfg.positions, max_positions=cfg.max_positions, pad_id=pad_id,
        )
    if cfg.encoder == "cnn":
        return CNNEncoder(
            vocab_size, cfg.emb_dim, cfg.enc_hidden, layers=cfg.enc_layers, kernel=cfg.cnn_kernel,
            dropout=cfg.dropout, max_positions=cfg.max_positions, pad_id=pad_id,
        )
    return RNNEncoder(
        vocab_size,
        cfg.emb_dim,
        cfg.enc_hidden,
        layers=cfg.enc_layers,
        bidirectional=cfg.bidirectional,
        rnn_type=cfg.rnn_type,
        dropout=cfg.dropout,
        pad_id=pad_id,
    )


def _build_decoder(cfg: ModelConfig, vocab_size: int, enc_dim: int, pad_id: int) -> nn.Module:
    if cfg.decoder == "transformer":
        return TransformerDecoder(
            vocab_size, enc_dim, cfg.d_model, cfg.heads, cfg.ff_dim, layers=cfg.dec_layers,
            dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, norm=cfg.norm,
            positions=cfg.positions, max_positions=cfg.max_positions, tie_output=cfg.tie_output,
            attn_layer=cfg.attn_layer, pad_id=pad_id,
        )
    return RNNDecoder(
        vocab_size,
        cfg.emb_dim,
        cfg.dec_hidden,
        enc_dim=enc_dim,
        enc_final_dim=enc_dim,  # RNN: last state per layer; CNN, Transformer: mean state
        layers=cfg.dec_layers,
        rnn_type=cfg.rnn_type,
        attention=cfg.attention,
        style=cfg.attention_style,
        input_feeding=cfg.input_feeding,
        bridge=cfg.bridge,
        out_dim=cfg.attn_vector_dim,
        tie_output=cfg.tie_output,
        dropout=cfg.dropout,
        location_max_len=cfg.location_max_len,
        pad_id=pad_id,
    )


@torch.no_grad()
def _init_uniform(model: nn.Module, scale: float) -> None:
    """U(-0.1, 0.1) for every parameter, the classic RNN-NMT initialisation (OpenNMT's default)."""
    for p in model.parameters():
        p.uniform_(-scale, scale)
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            m.weight[m.padding_idx].zero_()
