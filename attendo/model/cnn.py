"""A convolutional encoder: ConvS2S (Gehring et al. 2017, "Convolutional Sequence to Sequence
Learning"), the third contextualizer beside recurrence and self-attention.

Each state sees a window of ``kernel`` positions per layer, so N layers see N * (kernel - 1) + 1
source tokens: context grows with depth, not with time steps, and all positions are computed
in parallel. Shapes: B batch, S source length, E embedding size, C channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout
from .interfaces import Encoder, EncoderOutput, padding_mask
from .positions import LearnedPositions, mean_pool

SQRT_HALF = math.sqrt(0.5)


class CNNEncoder(Encoder):
    """ConvS2S encoder (Gehring et al. 2017, sec. 3.1-3.3).

    e_j = w_j + p_j (token + learned position embeddings), mapped to C channels; then each
    of ``layers`` blocks computes h = (GLU(conv(dropout(h))) + h) * sqrt(0.5): a 1-D
    convolution to 2C channels, gated by the gated linear unit A * sigmoid(B) (sec. 3.2),
    with a residual connection scaled by sqrt(0.5) to keep the variance (sec. 3.4). Padding
    positions are zeroed before every convolution, so a sentence's states do not depend on
    how much padding its batch has. The top states are mapped back to E as z_j.

    ConvS2S attends with keys z_j and values z_j + e_j (sec. 3.3). attendo's encoders return
    one memory for both, so ``out`` is (z_j + e_j) * sqrt(0.5), zero at padding, of size
    ``out_dim`` = E; ``final_h`` is its mean over the sentence (B, 1, E), for an RNN decoder's
    bridge. The paper's weight normalisation is left out.
    """

    def __init__(self, vocab_size: int, emb_dim: int, channels: int, layers: int = 4,
                 kernel: int = 3, dropout: float = 0.1, max_positions: int = 512, pad_id: int = 0):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (outputs aligned with inputs), got {kernel}")
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        self.pos = LearnedPositions(emb_dim, max_positions)
        self.W_in = nn.Linear(emb_dim, channels)
        self.convs = nn.ModuleList([nn.Conv1d(channels, 2 * channels, kernel, padding=kernel // 2)
                                    for _ in range(layers)])
        self.W_out = nn.Linear(channels, emb_dim)
        self.dropout = Dropout(dropout)
        self.out_dim = emb_dim
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, 0.1) embeddings; layers scaled to keep activation variance, accounting for
        dropout: std sqrt((1 - p) / n_in) for linear layers and sqrt(4 (1 - p) / (k n_in)) for
        convolutions followed by a GLU (Gehring et al. 2017, sec. 3.5). Zero biases."""
        for emb in (self.embed.weight, self.pos.weight):
            nn.init.normal_(emb, std=0.1)
        self.embed.weight[self.embed.padding_idx].zero_()
        keep = 1.0 - self.dropout.p
        for lin in (self.W_in, self.W_out):
            nn.init.normal_(lin.weight, std=math.sqrt(keep / lin.in_features))
            nn.init.zeros_(lin.bias)
        for conv in self.convs:
            k, n_in = conv.kernel_size[0], conv.in_channels
            nn.init.normal_(conv.weight, std=math.sqrt(4 * keep / (k * n_in)))
            nn.init.zeros_(conv.bias)

    def forward(self, src: Tensor, src_lens: Tensor) -> EncoderOutput:
        """src (B, S) ids, src_lens (B,) -> EncoderOutput(out (B, S, E), src_pad_mask (B, S))."""
        S = src.size(1)
        src_pad_mask = padding_mask(src_lens, S, src.device)
        pad = src_pad_mask.unsqueeze(-1)  # (B, S, 1)
        e = self.dropout(self.embed(src) + self.pos(S))  # (B, S, E)
        h = self.W_in(e)  # (B, S, C)
        for conv in self.convs:
            x = self.dropout(h).masked_fill(pad, 0.0)
            x = F.glu(conv(x.transpose(1, 2)), dim=1).transpose(1, 2)  # (B, 2C, S) -> (B, S, C)
            h = (x + h) * SQRT_HALF
        z = self.W_out(h)  # (B, S, E)
        out = ((z + e) * SQRT_HALF).masked_fill(pad, 0.0)
        return EncoderOutput(out, src_pad_mask, final_h=mean_pool(out, src_pad_mask))
