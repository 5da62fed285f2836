"""Two directions' links into one (symmetrisation, Koehn et al. 2003), and links scored
against gold ones (AER, precision, recall)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import diagnostics as dg
from ..errors import UsageError
from .links import SYMMETRIZE, Links, pick_links

_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def symmetrize(fwd: Links, rev: Links, how: str = "grow-diag") -> Links:
    """Combine forward and reverse links, both as (source word, target word).

    grow-diag (Koehn's Moses): start from the intersection; repeatedly, for each link and
    each of its 8 neighbours (horizontal, vertical, diagonal) that is in the union, add the
    neighbour when its source or its target word is still unaligned, until nothing is added.
    grow-diag-final: then add each union link (forward links first, then reverse, in order)
    whose source or target word is still unaligned."""
    fwd, rev = set(fwd), set(rev)
    if how == "intersect":
        return fwd & rev
    if how == "union":
        return fwd | rev
    if how not in SYMMETRIZE:
        raise UsageError(f"symmetrisation {how!r}: expected one of {', '.join(SYMMETRIZE)}")
    union, a = fwd | rev, fwd & rev
    src_done, tgt_done = {i for i, _ in a}, {j for _, j in a}

    def add(i: int, j: int) -> None:
        a.add((i, j))
        src_done.add(i)
        tgt_done.add(j)

    added = True
    while added:
        added = False
        for i, j in sorted(a):
            for di, dj in _NEIGHBOURS:
                n = (i + di, j + dj)
                if n in union and n not in a and (n[0] not in src_done or n[1] not in tgt_done):
                    add(*n)
                    added = True
    if how == "grow-diag-final":
        for links in (fwd, rev):
            for i, j in sorted(links):
                if (i, j) not in a and (i not in src_done or j not in tgt_done):
                    add(i, j)
    return a


def average(fwd: np.ndarray, rev: np.ndarray, method: str = "threshold",
            threshold: float = 0.5) -> Links:
    """Soft symmetrisation: (source word, target word) links picked by ``method``'s rule
    (argmax of each target word's row, or every weight >= ``threshold``) from the mean of the
    forward word weights (target words, source words) and the transposed reverse ones
    (source words, target words), both from :func:`word_rows`. A link both directions
    half-believe can pass where a hard intersection or union of their links would drop or
    add it."""
    f, r = np.asarray(fwd, dtype=np.float64), np.asarray(rev, dtype=np.float64).T
    if f.shape != r.shape:
        raise ValueError(f"forward word weights {f.shape} and reverse ones transposed "
                         f"{r.shape} differ: not the same sentence pair")
    return pick_links((f + r) / 2, method, threshold) if f.size else set()


def transpose(links: Links | None) -> Links | None:
    return None if links is None else {(j, i) for i, j in links}


def score(links: Sequence[Links | None], gold: Sequence[dg.GoldAlignment]) -> dict[str, Any]:
    """AER, precision and recall over the sentences with links (None: skipped)."""
    counts = [dg.aer_counts(a, g) for a, g in zip(links, gold) if a is not None]
    totals = [sum(c[k] for c in counts) for k in range(4)]  # |A|, |S|, |A & S|, |A & P|
    p, r = dg.precision_recall(*totals)
    return {"aer": dg.aer(*totals), "precision": p, "recall": r, "sentences": len(counts),
            "skipped": len(links) - len(counts), "links": totals[0], "sure": totals[1]}
