"""Length-bucketed batch plans and a resumable training stream over them; a batch itself
(:class:`Batch`, :func:`collate`, copy ids) is :mod:`attendo.data.batch`'s, re-exported here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch

from attendo.data.batch import Batch, CopyIds, collate

BATCH_TYPES = ("sentences", "tokens")

# Sorting by length only inside chunks of this many batches keeps batches tight (little padding)
# while still letting every epoch mix different sentences into each batch.
CHUNK_BATCHES = 100


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
