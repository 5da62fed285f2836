"""Attention over regions of an image: the encoder of Show, Attend and Tell (Xu et al. 2015)
and of im2markup (Deng et al. 2017), on the same model path as the text encoders.

A convolutional network without fully connected layers turns an image (B, C, H, W), padded
to the batch's widest, into a grid of region vectors (B, H', W', D): each block is a 3x3
convolution and a ReLU, the first ``pools`` of them followed by 2x2 max pooling, so a region
covers 2^pools x 2^pools pixels (H' = H / 2^pools). Then, by ``model.image_rnn``:

- ``none``: each region gets its 2-D position (the sinusoids of its row and of its column,
  Vaswani et al. 2017, sec. 3.5, half the width each); the memory is the whole grid;
- ``rows``: im2markup's row encoder, a BiLSTM along each row of the grid, so a region's
  vector also knows what lies left and right of it;
- ``columns``: a bidirectional GRU over the columns (each column read as its H' regions
  max-pooled to 4 rows, stacked, as CRNN collapses the height), one state per column. With
  ``model.attention: none`` its final state is all the decoder gets: the classic bottleneck,
  the fair no-attention baseline for images;
- ``conv``: the same columns, each read by two 1-D convolutions over its neighbours instead
  of a recurrence, and no positions: a column's vector depends only on the pixels around it,
  not on how far it is from the start, so nothing the model learns is tied to the lengths it
  was trained on (with ``model.coverage_window``, attention can read on, column by column,
  past them).

The grid is flattened **column by column** (region k = column k // H', row k % H'), so the
padding of narrower images is a suffix and the memory + ``src_pad_mask`` are exactly what a
text encoder gives: every scorer, coverage, the Transformer's cross-attention, beam search
and the diagnostics work unchanged. ``final_h`` is the mean region (Show, Attend and Tell's
initial LSTM state, through the RNN decoder's bridge; for ``columns`` the mean column), or
the column GRU's last states.

Pixels are uint8; the encoder reads x = 1 - p / 255, so a white background is 0, like the
padding, and padded columns are zeroed after every block: a region's vector does not depend
on how wide the other images of its batch are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .interfaces import Encoder, EncoderOutput
from .positions import SinusoidalPositions, mean_pool


class ImageEncoder(Encoder):
    """CNN (+ 2-D positions, or a row RNN, a column RNN or convolution) -> regions (B, R, D)."""

    COLUMN_ROWS = 4  # ``columns``, ``conv``: a column is read as this many rows (max-pooled)

    def __init__(self, channels: int, hidden: int, layers: int = 4, pools: int = 2,
                 rnn: str = "none", dropout: float = 0.1):
        super().__init__()
        widths = [min(hidden, 32 * 2**k) for k in range(layers - 1)] + [hidden]
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c, 3, padding=1) for c_in, c in zip([channels] + widths, widths))
        for conv in self.convs:  # He et al. 2015: keeps the signal's scale through the ReLUs
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self.pools, self.rnn_kind = pools, rnn
        self.pos = SinusoidalPositions(hidden // 2)
        self.drop = nn.Dropout(dropout)
        self.rnn: nn.Module | None = None
        if rnn == "rows":
            self.rnn = nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True)
        elif rnn == "columns":
            self.rnn = nn.GRU(hidden * self.COLUMN_ROWS, hidden // 2, batch_first=True,
                              bidirectional=True)
        elif rnn == "conv":
            self.rnn = nn.ModuleList([nn.Conv1d(hidden * self.COLUMN_ROWS, hidden, 3, padding=1),
                                      nn.Conv1d(hidden, hidden, 3, padding=1)])
        self.out_dim = hidden

    def region_lengths(self, widths: Tensor) -> Tensor:
        """(B,) image widths in pixels -> (B,) widths W'_b = ceil(W_b / 2^pools) of their grids."""
        return (-(-widths // 2**self.pools)).clamp(min=1)

    def grid(self, src: Tensor, src_lens: Tensor) -> tuple[Tensor, Tensor]:
        """The CNN: src (B, C, H, W) uint8 -> regions (B, H', W', D) and column mask (B, W')."""
        x = 1.0 - src.float() / 255.0  # (B, C, H, W): background 0
        lens = src_lens
        for k, conv in enumerate(self.convs):
            x = conv(self.drop(x) if k else x)  # (B, C, H, W)
            x = torch.relu(x)
            keep = torch.arange(x.size(-1), device=x.device)[None, :] < lens[:, None]  # (B, W)
            x = x * keep[:, None, None, :].to(x.dtype)  # zero padded columns (x >= 0, so a
            if k < self.pools:  # pooling window half in the padding keeps its valid maximum)
                x = nn.functional.max_pool2d(x, 2, ceil_mode=True)
                lens = (lens + 1) // 2
        pad = torch.arange(x.size(-1), device=x.device)[None, :] >= lens[:, None]  # (B, W')
        return x.permute(0, 2, 3, 1), pad  # (B, H', W', D)

    def forward(self, src: Tensor, src_lens: Tensor) -> EncoderOutput:
        g, col_pad = self.grid(src, src_lens)  # (B, H', W', D), (B, W')
        B, H, W, D = g.shape
        if self.rnn is None:  # the recurrent passes know where a region is by themselves
            rows = self.pos(H).to(g.dtype)  # (H', D/2)
            cols = self.pos(W).to(g.dtype)  # (W', D/2)
            g = g + torch.cat([rows[:, None, :].expand(H, W, -1), cols[None].expand(H, W, -1)], -1)
        g = self.drop(g)
        lens = self.region_lengths(src_lens)  # (B,) W'_b
        if self.rnn_kind == "rows":  # BiLSTM along each row: (B*H', W', D)
            seq = g.reshape(B * H, W, D)
            packed = pack_padded_sequence(seq, lens.repeat_interleave(H).cpu(), batch_first=True,
                                          enforce_sorted=False)
            g = pad_packed_sequence(self.rnn(packed)[0], batch_first=True,
                                    total_length=W)[0].reshape(B, H, W, D)
        if self.rnn_kind in ("columns", "conv"):  # one vector per column
            rows4 = nn.functional.adaptive_max_pool2d(g.permute(0, 3, 1, 2), (self.COLUMN_ROWS, W))
            seq = rows4.permute(0, 3, 1, 2).reshape(B, W, D * self.COLUMN_ROWS)  # (B, W', 4D)
            if self.rnn_kind == "conv":  # padded columns are 0 after each convolution
                keep = (~col_pad).unsqueeze(1).to(seq.dtype)  # (B, 1, W')
                x = torch.relu(self.rnn[0](seq.transpose(1, 2))) * keep  # (B, D, W')
                out = (self.rnn[1](x) * keep).transpose(1, 2)  # (B, W', D)
                return EncoderOutput(out, col_pad, final_h=mean_pool(out, col_pad))
            packed = pack_padded_sequence(seq, lens.cpu(), batch_first=True, enforce_sorted=False)
            out, h = self.rnn(packed)
            out = pad_packed_sequence(out, batch_first=True, total_length=W)[0]  # (B, W', D)
            final = torch.cat([h[0], h[1]], -1).unsqueeze(1)  # (B, 1, D) both directions
            return EncoderOutput(out, col_pad, final_h=final)
        out = g.permute(0, 2, 1, 3).reshape(B, W * H, D)  # column by column
        pad = col_pad.repeat_interleave(H, dim=1)  # (B, W'·H')
        return EncoderOutput(out, pad, final_h=mean_pool(out, pad))

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of the region grid of an image ``height`` x ``width`` pixels: the
        memory of that image has rows * columns positions (columns only for ``columns``,
        ``conv``)."""
        rows = 1 if self.rnn_kind in ("columns", "conv") else -(-height // 2**self.pools)
        return rows, int(self.region_lengths(torch.tensor(width)))

    def region_centres(self, height: int, width: int) -> Tensor:
        """(R, 2) pixel (x, y) of the centre of each region of an image ``height`` x
        ``width``, in the memory's order (column by column): for pictures and localization."""
        rows, cols = self.grid_shape(height, width)
        s = 2**self.pools
        x = (torch.arange(cols) + 0.5) * s
        y = torch.tensor([height / 2]) if rows == 1 else (
            torch.arange(rows) + 0.5) * s
        return torch.stack([x.repeat_interleave(rows), y.repeat(cols)], -1).clamp(
            max=torch.tensor([width - 0.5, height - 0.5]))
