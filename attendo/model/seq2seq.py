"""The encoder-decoder, built from a validated :class:`~attendo.config.ModelConfig`.

Only :func:`build_model` reads the config; modules take explicit arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .decoders import RNNDecoder
from .encoders import RNNEncoder


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
        feats, _ = self(src, src_lens, tgt_in)
        keep = tgt_out != pad_id  # (B, T)
        logits = self.decoder.logits(feats[keep])  # (N, V)
        target = tgt_out[keep]  # (N,)
        nll = F.cross_entropy(logits, target, reduction="sum")
        if label_smoothing > 0:
            loss = F.cross_entropy(logits, target, reduction="sum", label_smoothing=label_smoothing)
        else:
            loss = nll
        return loss, nll.detach(), int(target.numel())


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0) -> Seq2Seq:
    encoder = RNNEncoder(
        src_vocab_size,
        cfg.emb_dim,
        cfg.enc_hidden,
        layers=cfg.enc_layers,
        bidirectional=cfg.bidirectional,
        rnn_type=cfg.rnn_type,
        dropout=cfg.dropout,
        pad_id=pad_id,
    )
    decoder = RNNDecoder(
        tgt_vocab_size,
        cfg.emb_dim,
        cfg.dec_hidden,
        enc_dim=encoder.out_dim,
        enc_final_dim=encoder.out_dim,
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
    model = Seq2Seq(encoder, decoder)
    _init_uniform(model, 0.1)
    return model


@torch.no_grad()
def _init_uniform(model: nn.Module, scale: float) -> None:
    """U(-0.1, 0.1) for every parameter, the classic RNN-NMT initialisation (OpenNMT's default)."""
    for p in model.parameters():
        p.uniform_(-scale, scale)
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            m.weight[m.padding_idx].zero_()
