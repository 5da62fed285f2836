"""Dropout with a cheaper mask on the CPU.

``nn.Dropout`` draws one Bernoulli sample per element; on the CPU that costs a
random-number-generator call per element and was the second-largest cost of a bf16
Transformer training step on 2 threads (after the matrix products; torch.profiler on
bench/train_throughput.py). This module draws one 64-bit random integer per *four* elements
and compares each 16-bit slice with a threshold: the same distribution up to a drop
probability rounded to a multiple of 1/65536, from the same ``torch`` generator (so
``torch.manual_seed`` still makes runs repeatable). ``bench/dropout_speed.py`` times both.
On CUDA (and for p == 0 or in eval mode) it is exactly ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOW, _HIGH = -(2**63), 2**63 - 1  # random_ over (almost) all int64: every 16-bit slice uniform


def keep_multiplier(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device
                    ) -> Tensor:
    """A tensor of ``shape`` that is 0 with probability ~p and 1 / (1 - p) otherwise.

    Built with arithmetic only: on the CPU, comparisons that produce ``bool`` tensors (and
    ``masked_fill`` with them) are several times slower than a float multiply.
    """
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(_LOW, _HIGH)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform over the integers [-32768, 32767]
    threshold = -32768 + round(p * 65536)  # P(bits < threshold) = p (to 1/65536)
    # integers: bits - threshold + 1 >= 1 when kept, <= 0 when dropped; clamp to {0, 1}
    keep = bits.to(torch.float32).sub_(threshold - 1).clamp_(0.0, 1.0)
    return keep.mul_(1.0 / (1.0 - p)).to(dtype)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    if p >= 1.0:
        return x * 0.0
    # autograd saves only the multiplier (it does not require grad): backward is grad * m
    return x * keep_multiplier(x.shape, p, x.dtype, x.device)


class Dropout(nn.Module):
    """Drop-in replacement for ``nn.Dropout`` (see the module docstring)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
