"""Batches of padded id tensors, length-bucketed batch plans, and a resumable training stream.

Everything is batch-first. Masks are named for their polarity: ``src_pad_mask`` is True at
padding.

For copy models (pointer-generator, See et al. 2017) each example also comes with its
:class:`CopyIds`: source and target ids in the target vocabulary extended with the example's
source-only words, so a batch carries ``src_ext``, ``tgt_out_ext`` and the words themselves.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch
from torch import Tensor

from attendo.data.vocab import Vocab

BATCH_TYPES = ("sentences", "tokens")

# Sorting by length only inside chunks of this many batches keeps batches tight (little padding)
# while still letting every epoch mix different sentences into each batch.
CHUNK_BATCHES = 100


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


@dataclass
class Batch:
    """A padded batch of examples.

    Attributes:
        src: ``(B, S)`` source ids, padded; no BOS/EOS added.
        src_lens: ``(B,)`` source lengths.
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
        """``(B, S)`` bool, True at padding positions of ``src``."""
        positions = torch.arange(self.src.size(1), device=self.src.device)  # (S,)
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

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(
            src=self.src.to(device, non_blocking=non_blocking),
            src_lens=self.src_lens.to(device, non_blocking=non_blocking),
            tgt_in=move(self.tgt_in),
            tgt_out=move(self.tgt_out),
            indices=list(self.indices),
            tgt_lens=move(self.tgt_lens),
            _n_tgt_tokens=self.n_tgt_tokens,
            src_ext=move(self.src_ext),
            tgt_out_ext=move(self.tgt_out_ext),
            src_oovs=self.src_oovs,
            align=move(self.align),
        )

    def pin_memory(self) -> Batch:
        """Page-locked copy (DataLoader(pin_memory=True) calls this) for async GPU copies."""

        def pin(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.pin_memory()

        return Batch(
            src=self.src.pin_memory(),
            src_lens=self.src_lens.pin_memory(),
            tgt_in=pin(self.tgt_in),
            tgt_out=pin(self.tgt_out),
            indices=list(self.indices),
            tgt_lens=pin(self.tgt_lens),
            _n_tgt_tokens=self.n_tgt_tokens,
            src_ext=pin(self.src_ext),
            tgt_out_ext=pin(self.tgt_out_ext),
            src_oovs=self.src_oovs,
            align=pin(self.align),
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
    src = _pad(src_ids, src_lens, S, pad)
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


def _cut(
    order: np.ndarray, cost_len: np.ndarray, batch_size: int, batch_type: str
) -> list[list[int]]:
    """Cut ``order`` (example indices) into consecutive batches.

    For ``"tokens"`` a batch is grown while ``n * max(len) <= batch_size``, i.e. the size of
    the padded tensor, which is what memory use follows; a single longer example still gets a
    batch of its own.
    """
    ids = order.tolist()
    if batch_type == "sentences":
        return [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i, c in zip(ids, cost_len[order].tolist()):
        new_max = max(cur_max, c)
        if cur and new_max * (len(cur) + 1) > batch_size:
            batches.append(cur)
            cur, new_max = [], c
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def _rng(seed: int, epoch: int) -> random.Random:
    """A generator seeded by the pair (seed, epoch), distinct for every pair.

    Python's ``random.Random`` is used rather than ``torch.Generator``: torch's CPU generator
    keeps only the low 32 bits of its seed, so (seed, epoch) pairs packed into one integer would
    collide, and Python's seeding and shuffle are stable across releases, which exact resume
    relies on.
    """
    if seed < 0 or not 0 <= epoch < 2**32:
        raise ValueError(f"expected seed >= 0 and 0 <= epoch < 2**32, got {seed} and {epoch}")
    return random.Random((seed << 32) | epoch)


def make_batches(
    src_lens: list[int],
    tgt_lens: list[int] | None,
    *,
    batch_size: int,
    batch_type: str,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
) -> list[list[int]]:
    """Group example indices into length-bucketed batches.

    Args:
        src_lens, tgt_lens: token lengths (without BOS/EOS); ``tgt_lens`` None at inference.
        batch_size: sentences per batch, or the token budget ``n * max(len)`` per batch, where
            ``len`` is the larger of the source length and the target length + 1.
        batch_type: ``"sentences"`` or ``"tokens"``.
        shuffle: training order: examples are permuted by a ``random.Random`` seeded with
            ``(seed, epoch)``, sorted by length within chunks of about
            :data:`CHUNK_BATCHES` batches, cut, and the batch order is permuted again.
            Without shuffle (inference), everything is sorted longest first and cut; callers
            restore the input order with ``Batch.indices``.

    Returns:
        Lists of example indices; every index appears exactly once.
    """
    if batch_type not in BATCH_TYPES:
        raise ValueError(f"batch_type must be one of {list(BATCH_TYPES)}, got {batch_type!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(src_lens)
    if tgt_lens is not None and len(tgt_lens) != n:
        raise ValueError(f"got {n} source lengths but {len(tgt_lens)} target lengths")
    if n == 0:
        return []
    # numpy for the O(n) work (millions of examples); the result is the same as sorting
    # Python lists, since every sort here is stable
    sl = np.asarray(src_lens, dtype=np.int64)
    tl = np.zeros(n, np.int64) if tgt_lens is None else np.asarray(tgt_lens, dtype=np.int64)
    cost_len = np.maximum(sl, tl + 1) if tgt_lens is not None else sl
    cost_len = np.maximum(cost_len, 1)

    if not shuffle:
        # Longest first: an out-of-memory error shows up on the first batch, not the last;
        # the sort is stable, so equal lengths keep their input order.
        return _cut(np.lexsort((-tl, -sl)), cost_len, batch_size, batch_type)

    rng = _rng(seed, epoch)
    perm_list = list(range(n))
    rng.shuffle(perm_list)  # Python's shuffle: stable across releases (exact resume)
    perm = np.array(perm_list, dtype=np.int64)
    del perm_list
    if batch_type == "sentences":
        per_batch = batch_size
    else:
        per_batch = max(1, batch_size * n // int(cost_len.sum()))  # sentences of average length
    chunk = CHUNK_BATCHES * per_batch
    key = sl * (int(tl.max()) + 1) + tl  # orders like the pair (source length, target length)
    batches: list[list[int]] = []
    for start in range(0, n, chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(key[part], kind="stable")]
        batches.extend(_cut(part, cost_len, batch_size, batch_type))
    rng.shuffle(batches)
    return batches


class BatchStream:
    """An endless, exactly resumable iterator over training batches.

    Epoch ``e`` yields the batches of ``make_batches(..., shuffle=True, seed=seed, epoch=e)`` in
    order. ``epoch`` and ``offset`` always name the batch that comes next, so a stream rebuilt
    with ``BatchStream(..., epoch=s.epoch, offset=s.offset)`` (or from :meth:`state_dict`)
    continues with exactly the batch ``s`` would have yielded. After the last batch of an epoch,
    ``epoch`` has already moved on and ``offset`` is 0.
    """

    def __init__(
        self,
        src_ids: list[list[int]],
        tgt_ids: list[list[int]],
        batch_size: int,
        batch_type: str,
        seed: int,
        epoch: int = 0,
        offset: int = 0,
        rank: int = 0,
        world_size: int = 1,
        copy: list[CopyIds] | None = None,
        align: list[np.ndarray] | None = None,
    ) -> None:
        if not src_ids:
            raise ValueError("cannot stream batches from an empty dataset")
        if len(src_ids) != len(tgt_ids):
            raise ValueError(f"got {len(src_ids)} sources but {len(tgt_ids)} targets")
        if copy is not None and len(copy) != len(src_ids):
            raise ValueError(f"got {len(src_ids)} sources but {len(copy)} copy entries")
        self.src_ids = src_ids
        self.tgt_ids = tgt_ids
        self.copy = copy  # per-example extended-vocabulary ids (copy models), else None
        if align is not None and len(align) != len(src_ids):
            raise ValueError(f"got {len(src_ids)} sources but {len(align)} alignment entries")
        self.align = align  # per-example (target piece, source piece) links, else None
        self.batch_size = batch_size
        self.batch_type = batch_type
        self.seed = seed
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.rank, self.world_size = rank, world_size
        self._src_lens = _lengths(src_ids)
        self._tgt_lens = _lengths(tgt_ids)
        self.epoch = epoch
        self.offset = offset
        self._plan_epoch: int | None = None
        self._plan: list[list[int]] = []
        if not 0 <= offset <= len(self.batches()):
            raise ValueError(
                f"offset {offset} is outside epoch {epoch}, which has {len(self._plan)} batches"
            )
        if offset == len(self._plan):  # a state saved at an epoch's end by another convention
            self.epoch, self.offset = epoch + 1, 0

    def batches(self) -> list[list[int]]:
        """The batch plan (lists of example indices) of the current epoch."""
        if self._plan_epoch != self.epoch:
            self._plan = make_batches(
                self._src_lens,
                self._tgt_lens,
                batch_size=self.batch_size,
                batch_type=self.batch_type,
                shuffle=True,
                seed=self.seed,
                epoch=self.epoch,
            )
            if self.world_size > 1:
                # every rank plans the same epoch, then takes every world_size-th batch; the tail
                # that does not divide evenly is dropped so all ranks take equally many steps
                n = len(self._plan) // self.world_size * self.world_size
                if n == 0:
                    raise ValueError(
                        f"{len(self._plan)} batches per epoch cannot feed {self.world_size} ranks"
                    )
                self._plan = self._plan[:n][self.rank :: self.world_size]
            self._plan_epoch = self.epoch
        return self._plan

    def __len__(self) -> int:
        """Number of batches in the current epoch."""
        return len(self.batches())

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        idx = self.batches()[self.offset]
        self.offset += 1
        if self.offset == len(self._plan):
            self.epoch, self.offset = self.epoch + 1, 0
        return _collate_plan(idx, self.src_ids, self.tgt_ids, self.copy, self.align)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": ..., "offset": ...}`` of the next batch (plain ints, JSON-safe)."""
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict` (same data, batch size and seed assumed)."""
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])
        if not 0 <= self.offset < len(self.batches()):
            raise ValueError(
                f"offset {self.offset} is outside epoch {self.epoch} ({len(self._plan)} batches)"
            )


def _lengths(seqs) -> list[int] | np.ndarray:
    """Lengths of ``seqs``: their ``lengths`` array when they have one (memory-mapped
    corpora, see :mod:`attendo.data.binarized`), else ``len`` of each."""
    lengths = getattr(seqs, "lengths", None)
    return lengths if lengths is not None else [len(s) for s in seqs]


def _collate_plan(
    idx: list[int],
    src_ids: list[list[int]],
    tgt_ids: list[list[int]],
    copy: list[CopyIds] | None,
    align: list[np.ndarray] | None = None,
) -> Batch:
    return collate(
        [src_ids[i] for i in idx],
        [tgt_ids[i] for i in idx],
        idx,
        copy=None if copy is None else [copy[i] for i in idx],
        align=None if align is None else [align[i] for i in idx],
    )


class _PlanDataset(torch.utils.data.Dataset):
    """One item per planned batch, collated in the worker process."""

    def __init__(
        self,
        plan: list[list[int]],
        src_ids: list[list[int]],
        tgt_ids: list[list[int]],
        copy: list[CopyIds] | None = None,
        align: list[np.ndarray] | None = None,
    ):
        self.plan, self.src_ids, self.tgt_ids, self.copy = plan, src_ids, tgt_ids, copy
        self.align = align

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> Batch:
        return _collate_plan(self.plan[i], self.src_ids, self.tgt_ids, self.copy, self.align)


def iterate_batches(
    stream: BatchStream, num_workers: int = 0, pin_memory: bool = False
) -> Iterator[Batch]:
    """Yield the stream's batches forever, collated by ``num_workers`` worker processes
    (0 = in this process) and optionally pinned for fast host-to-GPU copies.

    ``stream.epoch``/``stream.offset`` advance as batches are *consumed*, not as workers
    prefetch them, so a checkpoint taken between two batches resumes exactly.
    """
    while True:
        plan, start = stream.batches(), stream.offset
        loader = torch.utils.data.DataLoader(
            _PlanDataset(plan[start:], stream.src_ids, stream.tgt_ids, stream.copy,
                         stream.align),
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=pin_memory,
            # its own generator: a DataLoader draws a base seed for its workers whenever an
            # iterator starts (every epoch, and on resume mid-epoch); from the global generator
            # that draw would shift the dropout stream and break exact resume
            generator=torch.Generator().manual_seed(stream.seed * 1_000_003 + stream.epoch),
        )
        for batch in loader:
            stream.offset += 1
            if stream.offset == len(plan):
                stream.epoch, stream.offset = stream.epoch + 1, 0
            yield batch
