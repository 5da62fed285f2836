"""One padded batch: :class:`Batch` and :func:`collate`, which builds it from id lists.

Everything is batch-first. Masks are named for their polarity: ``src_pad_mask`` is True at
padding.

For copy models (pointer-generator, See et al. 2017) each example also comes with its
:class:`CopyIds`: source and target ids in the target vocabulary extended with the example's
source-only words, so a batch carries ``src_ext``, ``tgt_out_ext`` and the words themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch
from torch import Tensor

from attendo.data.vocab import Vocab


@dataclass(slots=True)
class CopyIds:
    """One example in the extended (copy) vocabulary of a target vocabulary of size V.

    ``oovs`` are the example's source words missing from the target vocabulary, in order of
    first appearance; word ``oovs[k]`` has id V + k. ``src_ext``: every source token as a target
    id, or its extended id. ``tgt_ext``: the target ``y`` (no BOS/EOS) as target ids, where an
    unknown word that also occurs in the source gets its extended id (else <unk>); None at
    inference.
    """

    src_ext: list[int]
    tgt_ext: list[int] | None
    oovs: list[str]


@dataclass(slots=True)
class Image:
    """One source image as an image encoder reads it: uint8 pixels (C, H, W), every image of a
    model the same height H. Its length, for batching by length, is its width W."""

    pixels: np.ndarray

    def __len__(self) -> int:
        return self.pixels.shape[-1]


@dataclass
class Batch:
    """A padded batch of examples.

    Attributes:
        src: what the encoder reads: ``(B, S)`` source ids, padded, no BOS/EOS added; or, for
            an image model, ``(B, C, H, W)`` uint8 pixels padded with white on the right.
        src_lens: ``(B,)`` source lengths (tokens, or image widths in pixels).
        tgt_in: ``(B, T)`` decoder input ``BOS y``, padded; None at inference.
        tgt_out: ``(B, T)`` decoder target ``y EOS``, padded; None at inference.
        indices: position of each example in the dataset, to put outputs back in order.
        tgt_lens: ``(B,)`` lengths of ``tgt_out`` (``len(y) + 1``); None at inference.
        src_ext: ``(B, S)`` source ids in the extended vocabulary (copy models), padded; else None.
        tgt_out_ext: ``(B, T)`` ``tgt_out`` in the extended vocabulary (copy models), else None.
        src_oovs: per example, the source-only words with extended ids V, V+1, ... (copy models).
        align: ``(B, T, S)`` float guided-alignment targets (``train.guided_alignment``), else
            None: row t is p(t, .), uniform over the source pieces linked to target piece t
            (the piece ``tgt_out[:, t]`` that attention row t predicts), all zero when piece t
            has no links.
    """

    src: Tensor
    src_lens: Tensor
    tgt_in: Tensor | None
    tgt_out: Tensor | None
    indices: list[int]
    tgt_lens: Tensor | None = None
    # Computed while the lengths are still on the CPU, so reading it never waits on a GPU.
    _n_tgt_tokens: int | None = field(default=None, repr=False, compare=False)
    src_ext: Tensor | None = None
    tgt_out_ext: Tensor | None = None
    src_oovs: list[list[str]] | None = None
    align: Tensor | None = None

    @property
    def n_ext(self) -> int:
        """Size of the batch's vocabulary extension: the most source-only words of any example."""
        return max((len(o) for o in self.src_oovs), default=0) if self.src_oovs else 0

    @property
    def loss_target(self) -> Tensor | None:
        """The training target: ``tgt_out_ext`` for copy batches, else ``tgt_out``."""
        return self.tgt_out_ext if self.tgt_out_ext is not None else self.tgt_out

    @property
    def size(self) -> int:
        """Number of examples B."""
        return self.src.size(0)

    @property
    def src_pad_mask(self) -> Tensor:
        """``(B, S)`` bool, True at padding positions of ``src`` (pixel columns of images)."""
        positions = torch.arange(self.src.size(-1), device=self.src.device)  # (S,)
        return positions[None, :] >= self.src_lens[:, None]  # (B, S)

    @property
    def tgt_pad_mask(self) -> Tensor:
        """``(B, T)`` bool, True at padding positions of ``tgt_in``/``tgt_out``."""
        if self.tgt_out is None:
            raise ValueError("this batch has no target side (inference batch)")
        if self.tgt_lens is None:
            return self.tgt_out == Vocab.PAD
        positions = torch.arange(self.tgt_out.size(1), device=self.tgt_out.device)  # (T,)
        return positions[None, :] >= self.tgt_lens[:, None]  # (B, T)

    @property
    def n_tgt_tokens(self) -> int:
        """Number of non-pad tokens in ``tgt_out`` (EOS included): the loss normalizer."""
        if self._n_tgt_tokens is not None:
            return self._n_tgt_tokens
        if self.tgt_out is None:
            return 0
        return int((~self.tgt_pad_mask).sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy of this batch with its tensors on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copy (DataLoader(pin_memory=True) calls this) for async GPU copies."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        def opt(t: Tensor | None) -> Tensor | None:
            return None if t is None else fn(t)

        return Batch(
            src=fn(self.src),
            src_lens=fn(self.src_lens),
            tgt_in=opt(self.tgt_in),
            tgt_out=opt(self.tgt_out),
            indices=list(self.indices),
            tgt_lens=opt(self.tgt_lens),
            _n_tgt_tokens=self.n_tgt_tokens,
            src_ext=opt(self.src_ext),
            tgt_out_ext=opt(self.tgt_out_ext),
            src_oovs=self.src_oovs,
            align=opt(self.align),
        )


def _pad(seqs: list[list[int]], lens: Tensor, width: int, pad: int) -> Tensor:
    """``(B, width)`` tensor holding ``seqs`` left-aligned, padded with ``pad``.

    One flat tensor scattered through a boolean mask is much faster than one small tensor per
    sequence.
    """
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.arange(width)[None, :] < lens[:, None]  # (B, width)
    out[mask] = torch.tensor(list(chain.from_iterable(seqs)), dtype=torch.long)
    return out


def _pad_images(images: list[Image], width: int) -> Tensor:
    """``(B, C, H, width)`` uint8: the images left-aligned on white (255, read as 0)."""
    C, H, _ = images[0].pixels.shape
    out = torch.full((len(images), C, H, width), 255, dtype=torch.uint8)
    for b, im in enumerate(images):
        out[b, :, :, : len(im)] = torch.tensor(im.pixels)
    return out


def collate(
    src_ids: list[list[int]],
    tgt_ids: list[list[int]] | None,
    indices: list[int],
    pad: int = Vocab.PAD,
    bos: int = Vocab.BOS,
    eos: int = Vocab.EOS,
    copy: list[CopyIds] | None = None,
    align: list[np.ndarray] | None = None,
) -> Batch:
    """Pad a list of examples into a :class:`Batch`.

    The source is used as given. The target ``y`` becomes ``tgt_in = BOS y`` and
    ``tgt_out = y EOS`` (teacher forcing: position t of ``tgt_in`` predicts position t of
    ``tgt_out``). An empty source gives a row of padding with length 0; models must cope with it
    or callers must avoid it. With ``copy`` (one :class:`CopyIds` per example) the batch also
    gets ``src_ext``, ``tgt_out_ext`` (``tgt_ext`` then EOS) and ``src_oovs``. With ``align``
    (per example an int array (K, 2) of linked (target piece, source piece) pairs, see
    :func:`attendo.align.guided_targets`) the batch gets ``align`` (B, T, S): each linked row
    normalised to sum to 1.
    """
    if not src_ids:
        raise ValueError("cannot collate an empty batch")
    if len(indices) != len(src_ids) or (tgt_ids is not None and len(tgt_ids) != len(src_ids)):
        raise ValueError(
            f"collate got {len(src_ids)} sources, "
            f"{'no' if tgt_ids is None else len(tgt_ids)} targets and {len(indices)} indices"
        )
    if copy is not None and len(copy) != len(src_ids):
        raise ValueError(f"collate got {len(src_ids)} sources but {len(copy)} copy entries")
    src_lens = torch.tensor([len(s) for s in src_ids], dtype=torch.long)
    # At least one column, so that shapes stay valid even if every source is empty.
    S = max(1, int(src_lens.max()))
    src = _pad_images(src_ids, S) if isinstance(src_ids[0], Image) else _pad(src_ids, src_lens, S, pad)
    ext: dict = {}
    if copy is not None:
        ext["src_ext"] = _pad([c.src_ext for c in copy], src_lens, S, pad)
        ext["src_oovs"] = [list(c.oovs) for c in copy]
    if tgt_ids is None:
        return Batch(src, src_lens, None, None, list(indices), **ext)
    y_lens = torch.tensor([len(t) for t in tgt_ids], dtype=torch.long)
    width = int(y_lens.max()) + 1  # room for BOS (in tgt_in) / EOS (in tgt_out)
    y = _pad(tgt_ids, y_lens, width, pad)  # (B, T): y, then padding
    rows = torch.arange(len(tgt_ids))
    tgt_out = y.clone()
    tgt_out[rows, y_lens] = eos
    tgt_in = torch.full_like(y, pad)
    tgt_in[:, 0] = bos
    tgt_in[:, 1:] = y[:, :-1]
    tgt_lens = y_lens + 1
    if copy is not None:
        if any(c.tgt_ext is None or len(c.tgt_ext) != n for c, n in zip(copy, y_lens.tolist())):
            raise ValueError("collate: each copy entry needs tgt_ext as long as its target")
        tgt_out_ext = _pad([c.tgt_ext for c in copy], y_lens, width, pad)  # type: ignore[misc]
        tgt_out_ext[rows, y_lens] = eos
        ext["tgt_out_ext"] = tgt_out_ext
    if align is not None:
        ext["align"] = _align_targets(align, width, S)
    return Batch(
        src,
        src_lens,
        tgt_in,
        tgt_out,
        list(indices),
        tgt_lens=tgt_lens,
        _n_tgt_tokens=int(tgt_lens.sum()),
        **ext,
    )


def _align_targets(links: list[np.ndarray], T: int, S: int) -> Tensor:
    """(B, T, S) float: 1 at each (target piece, source piece) link of each example, rows
    then divided by their sums (rows without links stay 0)."""
    if len(links) == 0:
        raise ValueError("cannot collate guided-alignment targets of an empty batch")
    out = torch.zeros(len(links), T, S)
    rows = [np.full(len(a), b, dtype=np.int64) for b, a in enumerate(links)]
    pairs = np.concatenate([np.asarray(a, dtype=np.int64).reshape(-1, 2) for a in links])
    if len(pairs):
        b = torch.from_numpy(np.concatenate(rows))
        t, s = torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])
        out[b, t, s] = 1.0
    return out / out.sum(-1, keepdim=True).clamp_min(1.0)
