"""What search may output, per sentence: a forced target prefix and lexical constraints.

- A **prefix** (ids) is kept verbatim: at step t < len(prefix) only prefix[t] is allowed (its
  log-probability still counts), then decoding continues freely (interactive translation).
- **Constraints** are id sequences (a word, a phrase, its subword pieces) that must each
  appear in the output. The progress of every hypothesis is read off its history, so nothing
  has to be reordered with the beam: a constraint is *met* once it occurs in the history, and
  *in progress* by j when the history ends with its first j ids. EOS is forbidden until all
  are met, and when the steps left are no more than the ids still missing, only the next
  missing id may come, so every output holds every constraint (the length cap grows by the
  constraints' length). Beam search widens its candidates with each hypothesis's next
  constraint ids and keeps them by dynamic beam allocation (Post & Vilar 2018; the round-robin
  over banks of Hu et al. 2019): a bank is the number of constraint ids met, and the beam takes
  the best of each bank in turn, fuller banks first. With subword pieces, a constraint is a
  whole word: right after its last piece, pieces that would continue the word (``continuation``,
  e.g. "s" after "▁informal") are forbidden.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .data.corpus import clean_texts
from .errors import UsageError

NO = -1  # padding of prefix and constraint id tensors


def _pad(rows: list[list[int]], width: int, device) -> Tensor:
    out = torch.full((len(rows), max(width, 1)), NO, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def encode_rules(tgt, n: int, prefixes: list[str | None] | None,
                 constraints: list[list[str] | None] | None) -> tuple[list | None, list | None]:
    """Target ids (with the target codec ``tgt``) of each of ``n`` sentences' prefix and
    constraints (None: none given). A constraint piece outside the target vocabulary is an
    error, since no search can produce it."""
    for name, given in (("prefixes", prefixes), ("constraints", constraints)):
        if given is not None and len(given) != n:
            raise UsageError(f"{len(given)} {name} for {n} texts: give one per text "
                             "(None for none)")
    pre = None if prefixes is None else [
        tgt.encode(clean_texts([p], f"prefixes[{i}]")[0]) if p else []
        for i, p in enumerate(prefixes)]
    if constraints is None:
        return pre, None
    cons = []
    for i, cs in enumerate(constraints):
        ids = []
        for c in clean_texts(cs or [], f"constraints[{i}]"):
            pieces = tgt.pieces(c)
            if not pieces:
                raise UsageError(f"constraints[{i}]: an empty constraint ({c!r})")
            unknown = [p for p in pieces if p not in tgt.vocab.stoi]
            if unknown:
                raise UsageError(f"constraints[{i}]: {c!r} has pieces outside the target "
                                 f"vocabulary ({', '.join(map(repr, unknown))}); the model "
                                 "cannot write it")
            ids.append(tgt.vocab.encode(pieces))
        cons.append(ids)
    return pre, cons


def continuation_pieces(tgt) -> Tensor | None:
    """(V,) True at the target pieces that continue a word (sentencepiece pieces without the
    word-start mark that begin with a letter or digit); None for word and char vocabularies."""
    if tgt.tokenizer.kind not in ("bpe", "unigram"):
        return None
    return torch.tensor([p[:1].isalnum() for p in tgt.vocab.itos])


class OutputRules:
    """Prefixes (B, P) and constraints (B, C, L) of a batch, padded with -1; sentences are
    addressed by their index b in the batch (``row_sent`` maps search rows to b)."""

    def __init__(self, prefixes: list[list[int]] | None, constraints: list[list[list[int]]] | None,
                 batch_size: int, device: torch.device | str = "cpu",
                 continuation: Tensor | None = None):
        prefixes = prefixes or [[] for _ in range(batch_size)]
        constraints = constraints or [[] for _ in range(batch_size)]
        if len(prefixes) != batch_size or len(constraints) != batch_size:
            raise ValueError(f"{len(prefixes)} prefixes and {len(constraints)} constraint lists "
                             f"for {batch_size} sentences")
        self.prefix = _pad(prefixes, max(map(len, prefixes)), device)  # (B, P)
        self.plen = torch.tensor([len(p) for p in prefixes], device=device)  # (B,)
        C = max(map(len, constraints))
        L = max((len(c) for cs in constraints for c in cs), default=1)
        self.cons = torch.full((batch_size, max(C, 1), L), NO, dtype=torch.long, device=device)
        for b, cs in enumerate(constraints):
            for c, ids in enumerate(cs):
                if not ids:
                    raise ValueError(f"sentence {b}: constraint {c + 1} is empty")
                self.cons[b, c, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.clen = (self.cons != NO).sum(-1)  # (B, C) 0 for no constraint
        self.has_constraints = bool(C)
        self.continuation = continuation  # (V,) True: a piece that continues a word

    def repeat(self, n: int) -> OutputRules:
        """Each sentence's rules n times in a row (for n samples per sentence)."""
        out = OutputRules.__new__(OutputRules)
        out.prefix, out.plen = self.prefix.repeat_interleave(n, 0), self.plen.repeat_interleave(n)
        out.cons, out.clen = self.cons.repeat_interleave(n, 0), self.clen.repeat_interleave(n, 0)
        out.has_constraints, out.continuation = self.has_constraints, self.continuation
        return out

    def extra_length(self) -> Tensor:
        """(B,) ids the rules add to what the output needs: prefix plus constraints."""
        return self.plen + self.clen.sum(-1)

    def progress(self, hist: Tensor, row_sent: Tensor, ends: bool = False):
        """For each row of ``hist`` (N, t): ``met`` (N, C) bool, ``prog`` (N, C) ids of each
        unmet constraint already at the end of the history, ``next_id`` (N, C) its next id;
        with ``ends``, also (N,) whether the history ends with a whole constraint."""
        cons, clen = self.cons[row_sent], self.clen[row_sent]  # (N, C, L), (N, C)
        N, t = hist.shape
        L = cons.size(-1)
        valid = torch.arange(L, device=hist.device) < clen.unsqueeze(-1)  # (N, C, L)
        met = clen == 0
        if t:
            padded = torch.cat([hist, hist.new_full((N, L), NO - 1)], 1)  # (N, t + L)
            windows = padded.unfold(1, L, 1)[:, :t]  # (N, t, L) every start position
            eq = windows.unsqueeze(2) == cons.unsqueeze(1)  # (N, t, C, L)
            met = met | (eq | ~valid.unsqueeze(1)).all(-1).any(1)
        prog = torch.zeros_like(clen)
        done = torch.zeros(N, dtype=torch.bool, device=hist.device)
        for j in range(1, min(L, t) + 1):
            at_end = (hist[:, t - j :].unsqueeze(1) == cons[:, :, :j]).all(-1)  # (N, C)
            prog = torch.where(at_end & (j < clen), torch.full_like(prog, j), prog)
            done |= (at_end & (j == clen)).any(-1)
        prog = prog.masked_fill(met, 0)
        next_id = cons.gather(2, prog.unsqueeze(-1)).squeeze(-1)  # (N, C)
        return (met, prog, next_id, done) if ends else (met, prog, next_id)

    def met_count(self, hist: Tensor, row_sent: Tensor) -> Tensor:
        """(N,) the bank of each row: constraint ids met (partly met ones by their progress)."""
        met, prog, _ = self.progress(hist, row_sent)
        return (self.clen[row_sent] * met).sum(-1) + prog.max(-1).values

    def apply(self, lp: Tensor, hist: Tensor, row_sent: Tensor, steps_left: Tensor,
              eos: int, raw: Tensor | None = None) -> Tensor:
        """Mask the next-token log-probabilities ``lp`` (N, V) of rows with history ``hist``
        (N, t): prefix ids forced, EOS forbidden until the constraints are met, the next
        constraint id forced when the steps left (N,) leave no room for anything else. A forced
        id keeps its value in ``raw`` (lp before n-gram blocking), so blocking cannot kill it."""
        t = hist.size(1)
        force = torch.zeros_like(lp, dtype=torch.bool)  # (N, V) True: the only allowed ids
        forced = torch.zeros(lp.size(0), dtype=torch.bool, device=lp.device)
        if self.has_constraints:
            met, prog, next_id, done = self.progress(hist, row_sent, ends=True)
            if self.continuation is not None and done.any():  # a constraint stays a word
                cont = self.continuation.to(lp.device)
                lp[:, : cont.numel()] = lp[:, : cont.numel()].masked_fill(
                    done.unsqueeze(1) & cont, float("-inf"))
            unmet = ~met
            lp[:, eos] = lp[:, eos].masked_fill(unmet.any(-1), float("-inf"))
            # ids of the unmet constraints, in full: a phrase in progress that is broken off
            # starts again, so this is what the output may still need
            left = (self.clen[row_sent] * unmet).sum(-1)  # (N,)
            tight = unmet.any(-1) & (left >= steps_left)  # (N,)
            if tight.any():
                busy = prog.max(-1, keepdim=True)  # one in progress must go on
                ok = unmet & ((busy.values == 0) | (prog == busy.values))  # (N, C)
                ids = next_id.masked_fill(~ok, 0)
                force[tight] = force[tight].scatter(1, ids[tight], ok[tight])
                forced |= tight
        in_prefix = t < self.plen[row_sent]  # (N,)
        if in_prefix.any():
            ids = self.prefix[row_sent, min(t, self.prefix.size(1) - 1)].clamp_min(0)  # (N,)
            force[in_prefix] = False
            force[in_prefix, ids[in_prefix]] = True
            forced |= in_prefix
        if forced.any():
            lp = torch.where(force, lp if raw is None else raw, lp)
            lp = torch.where(force | ~forced.unsqueeze(1), lp, torch.full_like(lp, float("-inf")))
        return lp

    def widen(self, cand: Tensor, top_scores: Tensor, top_idx: Tensor, hist: Tensor,
              row_sent: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Beam candidates (n, M) = the top ones (n, 2k) plus, for each of the k live rows of a
        sentence, its next constraint ids and its best id. ``cand`` (n, k*V) scores every
        continuation; duplicates are scored -inf."""
        n, kV = cand.shape
        V = kV // k
        _, _, next_id = self.progress(hist, row_sent)  # (n*k, C)
        beam = torch.arange(k, device=cand.device).repeat(n).unsqueeze(1)  # (n*k, 1)
        extra = (beam * V + next_id.clamp_min(0)).view(n, -1)  # (n, k*C)
        best = (torch.arange(k, device=cand.device) * V).unsqueeze(0) + \
            cand.view(n, k, V).argmax(-1)  # (n, k)
        idx = torch.cat([top_idx, extra, best], 1)  # (n, M)
        scores = cand.gather(1, idx)
        M = idx.size(1)
        earlier = torch.ones(M, M, dtype=torch.bool, device=idx.device).tril(-1)  # j < i
        dup = ((idx.unsqueeze(2) == idx.unsqueeze(1)) & earlier).any(-1)  # (n, M)
        return scores.masked_fill(dup, float("-inf")), idx

    def allocate(self, scores: Tensor, idx: Tensor, hist: Tensor, row_sent: Tensor, k: int,
                 V: int, is_eos: Tensor) -> Tensor:
        """Which k of the candidates (n, M) stay live: round robin over banks (best of each
        bank, fuller banks first, then the second best of each, ...). Returns (n, k)."""
        n, M = idx.shape
        rows = ((torch.arange(n, device=idx.device) * k).unsqueeze(1) + idx // V).view(-1)
        tok = (idx % V).view(-1, 1)
        bank = self.met_count(torch.cat([hist[rows], tok], 1),
                              row_sent[rows]).view(n, M).float()  # (n, M)
        scores = scores.masked_fill(is_eos, float("-inf"))
        same = bank.unsqueeze(2) == bank.unsqueeze(1)  # (n, M, M) [i, j]
        better = (scores.unsqueeze(1) > scores.unsqueeze(2)) | (
            (scores.unsqueeze(1) == scores.unsqueeze(2))
            & torch.ones(M, M, dtype=torch.bool, device=idx.device).tril(-1))
        rank = (same & better).sum(-1).float()  # (n, M) place within its bank
        key = rank * (bank.max() + 2) + (bank.max() + 1 - bank)
        key = key.masked_fill(~torch.isfinite(scores), float("inf"))
        return key.topk(k, dim=-1, largest=False).indices
