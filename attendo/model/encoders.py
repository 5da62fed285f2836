"""The recurrent encoder: source ids -> states h_1..h_n, the memory attention looks at."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .dropout import Dropout
from .fused_rnn import fused_gru_encode
from .interfaces import Encoder, EncoderOutput, padding_mask


class RNNEncoder(Encoder):
    """Embedding -> (bi)GRU/LSTM over packed sequences (Bahdanau et al. 2015, sec. 3.2)."""

    def __init__(self, vocab_size: int, emb_dim: int, hidden: int, layers: int = 1,
                 bidirectional: bool = True, rnn_type: str = "gru", dropout: float = 0.0,
                 pad_id: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        rnn_cls = nn.LSTM if rnn_type == "lstm" else nn.GRU
        self.rnn = rnn_cls(emb_dim, hidden, num_layers=layers, batch_first=True,
                           bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.dropout = Dropout(dropout)
        self.layers = layers
        self.num_dirs = 2 if bidirectional else 1
        self.out_dim = hidden * self.num_dirs

    def forward(self, src: Tensor, src_lens: Tensor) -> EncoderOutput:
        """src: (B, S) ids; src_lens: (B,) true lengths (>= 1)."""
        B, S = src.shape
        emb = self.dropout(self.embed(src))  # (B, S, E)
        # on CUDA the packed nn.GRU below runs cuDNN's fused recurrent kernels, which the
        # hand-written pass (a Python loop over time steps) cannot beat
        if self.fusable() and src.device.type == "cpu":
            out, h = fused_gru_encode(emb, src_lens, self.rnn)  # (B, S, dirs*H), (dirs, B, H)
            c = None
        else:
            packed = pack_padded_sequence(emb, src_lens.cpu(), batch_first=True,
                                          enforce_sorted=False)
            out, final = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, dirs*H)
            h, c = final if isinstance(final, tuple) else (final, None)
        return EncoderOutput(self.dropout(out), padding_mask(src_lens, S, src.device),
                             self._merge_dirs(h), None if c is None else self._merge_dirs(c))

    fused: bool = True  # use attendo.model.fused_rnn where it applies (set False to compare)

    def fusable(self) -> bool:
        """Whether :meth:`forward` can run the GRU as one fused autograd node (one GRU layer
        with biases; see :mod:`attendo.model.fused_rnn`)."""
        return self.fused and isinstance(self.rnn, nn.GRU) and self.layers == 1 and self.rnn.bias

    def _merge_dirs(self, state: Tensor) -> Tensor:
        """(L*dirs, B, H) -> (B, L, dirs*H), concatenating directions per layer."""
        LD, B, H = state.shape
        state = state.view(self.layers, self.num_dirs, B, H)  # (L, dirs, B, H)
        return state.permute(2, 0, 1, 3).reshape(B, self.layers, self.num_dirs * H)
