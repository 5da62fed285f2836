"""Greedy and beam search over the decoder step interface: they only call
``decoder.step(y_prev, state, need_info) -> (log_probs, state, info)``,
``state.index_select(idx)`` and (beam expansion) ``state.repeat_rows(k)``. ``need_info=False``
(no attention asked for, no coverage penalty) lets a decoder skip what only ``info`` needs.
Finished sentences are pruned from the batch, so long tails do not cost the whole batch.

Two decode-time options work with any attention model, trained with coverage or not:

- ``coverage_penalty`` (GNMT beta, Wu et al. 2016, sec. 7): a finished hypothesis scores
  log P / lp(|Y|) + beta * sum_j log(min(sum_i a_ij, 1)) over the real source positions j,
  which favours outputs that attended to every source word.
- ``block_ngram_repeat`` n: a hypothesis may not contain the same n-gram twice (the next
  token that would repeat one gets probability 0; EOS is never blocked).

``rules`` (:class:`attendo.constraints.OutputRules`) force a target prefix and lexical
constraints in all three searches; :func:`sample_search` draws outputs instead of searching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .constraints import OutputRules
from .errors import UsageError
from .model.coverage import coverage_penalty


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids, without BOS, ending with EOS unless cut at max length
    score: float  # search score (log-probability, length-normalised if a penalty is set)
    log_prob: float  # sum of token log-probabilities
    attn: Tensor | None = None  # (len(tokens), S) attention of each output token
    info: dict[str, Tensor] = field(default_factory=dict)  # other per-step tensors, e.g. p_gen


@dataclass
class Sampling:
    """Draw each output token instead of searching: from softmax(logits / temperature),
    restricted to the ``top_k`` most probable tokens (0: all) and to the smallest set whose
    probability reaches ``top_p`` (nucleus sampling; 1: all); ``n`` samples per sentence,
    reproducible by ``seed`` for the same inputs and batch size."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"sampling temperature must be > 0, got {self.temperature}")
        if self.top_k < 0 or self.n < 1:
            raise UsageError(f"need top_k >= 0 and n >= 1, got {self.top_k} and {self.n}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")

    def filter(self, lp: Tensor) -> Tensor:
        """Log-probabilities lp (N, V) -> the logits to draw from (N, V): tempered, with -inf
        outside the top-k and outside the nucleus."""
        # the best token at 0 first: however small the temperature, it stays finite
        logits = (lp - lp.max(-1, keepdim=True).values) / self.temperature
        if self.top_k and self.top_k < logits.size(-1):
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]  # (N, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1:
            probs, order = logits.softmax(-1).sort(-1, descending=True)  # (N, V)
            before = probs.cumsum(-1) - probs  # mass of the more probable tokens
            drop = before >= self.top_p
            drop[:, 0] = False  # the most probable token always stays
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        return logits

    def draw(self, lp: Tensor, generator: torch.Generator) -> Tensor:
        """One token id per row (N,)."""
        probs = self.filter(lp).float().softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def length_penalty(length: int | Tensor, alpha: float):
    """GNMT length penalty ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, sec. 7); 1 when alpha = 0."""
    return ((5.0 + length) / 6.0) ** alpha


def block_repeats(lp: Tensor, hist: Tensor, n: int, eos: int) -> Tensor:
    """Forbid the tokens that would repeat an n-gram of each row's history: lp (N, V) next-token
    log-probabilities, hist (N, t) tokens so far. A token w is blocked in row r when hist[r]
    ends with n-1 tokens that were followed by w before; returns lp with -inf there (EOS never
    blocked)."""
    t = hist.size(1)
    if n < 1 or t < n:
        return lp
    windows = hist.unfold(1, n, 1)  # (N, t-n+1, n)
    last = hist[:, t - n + 1 :]  # (N, n-1)
    match = (windows[:, :, : n - 1] == last.unsqueeze(1)).all(-1)  # (N, t-n+1)
    blocked = torch.zeros_like(lp).scatter_reduce_(1, windows[:, :, n - 1], match.to(lp.dtype),
                                                   reduce="amax")  # (N, V) 1 where blocked
    blocked[:, eos] = 0
    return lp.masked_fill(blocked > 0, float("-inf"))


def impossible_if_invalid(lp: Tensor) -> Tensor:
    """``lp`` (N, V) with every NaN or +inf entry set to -inf (an impossible token), in place.

    A model with garbage but finite weights (a diverged training, a corrupted file) overflows
    and returns NaN or +inf, which ``max`` and ``topk`` rank above every real score (beam
    search then finished nothing). As impossible tokens both searches stay well defined: such
    a model gives garbage text scored -inf, never a crash. Valid values pass unchanged."""
    return lp.nan_to_num_(nan=-math.inf, posinf=-math.inf, neginf=-math.inf)


@torch.no_grad()
def greedy_search(decoder, state, batch_size: int, bos: int, eos: int, max_lens: Tensor | int,
                  return_info: bool = True, block_ngram_repeat: int = 0,
                  coverage_penalty: float = 0.0, rules: OutputRules | None = None,
                  pick=None) -> list[Hypothesis]:
    """Pick the most probable token at each step (or ``pick(lp (N, V)) -> (N,)``'s choice).
    max_lens: (B,) or int, output length caps.

    block_ngram_repeat and coverage_penalty: see the module docstring (the penalty does not
    change greedy choices, only the reported score)."""
    device = _device(state)
    max_lens = _caps(max_lens, batch_size)
    caps = torch.tensor(max_lens, device=device)
    need_info = return_info or bool(coverage_penalty)
    alive = list(range(batch_size))  # original sentence of each live row
    y = torch.full((batch_size,), bos, dtype=torch.long, device=device)
    hist = torch.empty(batch_size, 0, dtype=torch.long, device=device)  # (n, t)
    logp = torch.zeros(batch_size, device=device)
    hist_info: dict[str, Tensor] = {}  # name -> (n, t, ...)
    attn_sum: Tensor | None = None  # (n, S) attention received so far, for coverage_penalty
    out: list[Hypothesis | None] = [None] * batch_size
    for t in range(max(max_lens)):
        lp, state, info = decoder.step(y, state, need_info=need_info)
        rows = None if rules is None else torch.tensor(alive, device=device)
        lp = _filter(impossible_if_invalid(lp), hist, block_ngram_repeat, eos, rules, rows,
                     caps, t)  # (n, V)
        y = lp.argmax(-1) if pick is None else pick(lp)  # (n,)
        logp = logp + lp.gather(1, y.unsqueeze(1)).squeeze(1)
        hist = torch.cat([hist, y.unsqueeze(1)], 1)
        if return_info:
            hist_info = _append_info(hist_info, info)
        if coverage_penalty and "attn" in info:
            attn_sum = info["attn"] if attn_sum is None else attn_sum + info["attn"]
        ys = y.tolist()
        keep = []
        for r, s in enumerate(alive):
            if ys[r] != eos and t + 1 < max_lens[s]:
                keep.append(r)
                continue
            full = {name: v[r] for name, v in hist_info.items()}
            # alpha 0: no length penalty (lp = 1), the score is log P + the coverage penalty
            out[s] = _finished(hist[r].tolist(), float(logp[r]), 0.0,
                               _penalty(attn_sum, state, r, coverage_penalty), full)
        if not keep:
            break
        if len(keep) < len(alive):
            idx = torch.tensor(keep, device=device)
            state, y, hist, logp = state.index_select(idx), y[idx], hist[idx], logp[idx]
            hist_info = {name: v[idx] for name, v in hist_info.items()}
            attn_sum = None if attn_sum is None else attn_sum[idx]
            alive = [alive[r] for r in keep]
    return out  # type: ignore[return-value]


def _filter(lp: Tensor, hist: Tensor, ngram: int, eos: int, rules: OutputRules | None,
            row_sent: Tensor | None, caps: Tensor, t: int) -> Tensor:
    """The step's log-probabilities lp (N, V) less what n-gram blocking and ``rules`` forbid;
    row_sent (N,) is each row's sentence, caps (B,) the length caps."""
    blocked = block_repeats(lp, hist, ngram, eos) if ngram else lp
    if rules is None:
        return blocked
    return rules.apply(blocked, hist, row_sent, caps[row_sent] - t, eos, raw=lp)


@torch.no_grad()
def sample_search(decoder, state, batch_size: int, bos: int, eos: int, max_lens: Tensor | int,
                  sampling: Sampling, return_info: bool = True, block_ngram_repeat: int = 0,
                  rules: OutputRules | None = None) -> list[list[Hypothesis]]:
    """``sampling.n`` drawn outputs per sentence, most probable first; each scored by its
    log-probability under the model (not the tempered or truncated distribution)."""
    n = sampling.n
    device = _device(state)
    caps = torch.tensor(_caps(max_lens, batch_size), device=device).repeat_interleave(n)
    if rules is not None:
        rules = rules.repeat(n)
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    hyps = greedy_search(decoder, state.repeat_rows(n), batch_size * n, bos, eos, caps,
                         return_info, block_ngram_repeat, rules=rules,
                         pick=lambda lp: sampling.draw(lp, generator))
    return [sorted(hyps[b * n : (b + 1) * n], key=lambda h: -h.score) for b in range(batch_size)]


def _finished(tokens: list[int], log_prob: float, alpha: float, cov: float,
              full: dict[str, Tensor]) -> Hypothesis:
    """A finished hypothesis scored log P / lp(|Y|) + the coverage penalty ``cov``; ``full``
    holds its per-step info, attention included."""
    score = log_prob / length_penalty(len(tokens), alpha) + cov
    return Hypothesis(tokens, score, log_prob, attn=full.pop("attn", None), info=full)


def _penalty(attn_sum: Tensor | None, state, r: int, beta: float) -> float:
    """Coverage penalty of live row r (0 when off or without attention)."""
    if not beta or attn_sum is None:
        return 0.0
    mask = getattr(state, "src_pad_mask", None)
    mask = None if mask is None else mask[r : r + 1]
    return float(coverage_penalty(attn_sum[r : r + 1], mask, beta))


def _device(state) -> torch.device:
    mask = getattr(state, "src_pad_mask", None)
    return mask.device if mask is not None else torch.device("cpu")


def _caps(max_lens: Tensor | int, batch_size: int) -> list[int]:
    if isinstance(max_lens, int):
        return [max_lens] * batch_size
    return [max(1, int(m)) for m in max_lens.tolist()]


def _append_info(hist: dict[str, Tensor], info: dict[str, Tensor]) -> dict[str, Tensor]:
    """Append one step of {name: (n, ...)} to the history {name: (n, t, ...)}."""
    return {name: v.unsqueeze(1) if name not in hist else torch.cat([hist[name], v.unsqueeze(1)], 1)
            for name, v in info.items()}


STOP_RULES = ("first_k", "exact")  # decode.stop_rule


@torch.no_grad()
def beam_search(decoder, state, batch_size: int, bos: int, eos: int, max_lens: Tensor | int,
                beam_size: int = 5, n_best: int = 1, alpha: float = 0.0, return_info: bool = True,
                block_ngram_repeat: int = 0, coverage_penalty: float = 0.0,
                early_stop: bool = True, stop_rule: str = "first_k",
                rules: OutputRules | None = None) -> list[list[Hypothesis]]:
    """Batched beam search keeping ``beam_size`` live hypotheses per sentence; returns the
    ``n_best`` best finished ones per sentence, best first.

    Each step ranks the 2k best continuations; those ending in EOS among the top k are
    finished (scored with the length penalty, plus the coverage penalty when set), the best k
    others stay live. A sentence is done at its length cap (its live hypotheses finished as
    they are), with ``stop_rule="first_k"`` (the default, as in OpenNMT-py, fairseq and Joey
    NMT) once ``beam_size`` hypotheses have finished, and, unless ``early_stop=False`` (same
    results, only slower), once no live hypothesis can beat its ``n_best``-th finished one.
    That bound is exact: a live score (a sum of log-probabilities) only falls as it grows, the
    length penalty divides it by at most lp(length cap) and the coverage penalty is <= 0, so
    the best it can still reach is its score / lp(cap). ``stop_rule="exact"`` stops only by
    the bound (or the cap), so the result is never worse by model score (without penalties,
    CTranslate2's rule); with ``early_stop=False`` too, every sentence runs to its cap (a slow
    reference). ``alpha`` must be finite and >= 0, else lp shrinks with length and the bound
    fails. block_ngram_repeat and coverage_penalty: see the module docstring. With lexical
    constraints in ``rules`` the live beam is chosen by dynamic beam allocation (see
    :mod:`attendo.constraints`).
    """
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"length penalty (alpha) must be a finite number >= 0, got {alpha}: "
                         "beam search's exact early stop assumes lp(length) = "
                         "((5 + length) / 6) ** alpha never shrinks")
    if stop_rule not in STOP_RULES:
        raise ValueError(f"beam stop rule {stop_rule!r} is not one of {list(STOP_RULES)}")
    k, at_k = beam_size, stop_rule == "first_k"
    device = _device(state)
    max_lens = _caps(max_lens, batch_size)
    caps = torch.tensor(max_lens, device=device)
    need_info = return_info or bool(coverage_penalty)
    state = state.repeat_rows(k)  # row b * k + j: beam j of sentence b
    # live rows are (sentence, beam) pairs; only beam 0 starts alive so the k copies don't tie
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    y = torch.full((batch_size * k,), bos, dtype=torch.long, device=device)
    hist = torch.empty(batch_size * k, 0, dtype=torch.long, device=device)  # (N, t) tokens
    hist_info: dict[str, Tensor] = {}  # name -> (N, t, ...)
    sent = list(range(batch_size))  # original sentence of each live group
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    attn_sum: Tensor | None = None  # (N, S) attention received so far, for coverage_penalty

    for t in range(max(max_lens)):
        lp, state, info = decoder.step(y, state, need_info=need_info)  # (n*k, V)
        rows = None if rules is None else torch.tensor(sent, device=device).repeat_interleave(k)
        lp = _filter(impossible_if_invalid(lp), hist, block_ngram_repeat, eos, rules, rows,
                     caps, t)
        step_sum = None
        if coverage_penalty and "attn" in info:
            step_sum = info["attn"] if attn_sum is None else attn_sum + info["attn"]  # (N, S)
        n, V = len(sent), lp.size(-1)
        cand = lp.view(n, k, V).add_(scores.unsqueeze(-1)).view(n, k * V)  # lp is step's own
        top_scores, top_idx = cand.topk(min(2 * k, k * V), dim=-1)  # (n, 2k)
        dba = rules is not None and rules.has_constraints
        if dba:  # (n, M) with each row's next constraint ids and best id
            top_scores, top_idx = rules.widen(cand, top_scores, top_idx, hist, rows, k)
        top_beam, top_tok = top_idx // V, top_idx % V
        is_eos = top_tok == eos
        # finish EOS candidates ranked within the first k (and not from a dead beam)
        fin = is_eos[:, :k] & torch.isfinite(top_scores[:, :k])
        # (n, 2k) flat row each candidate continues
        src_rows = (torch.arange(n, device=device) * k).unsqueeze(1) + top_beam
        step_info = info if return_info else {}
        for g, j in fin.nonzero().tolist():
            r = int(src_rows[g, j])
            full = {name: torch.cat([hist_info[name][r], v[r].unsqueeze(0)], 0)
                    if name in hist_info else v[r].unsqueeze(0) for name, v in step_info.items()}
            finished[sent[g]].append(_finished(
                hist[r].tolist() + [eos], float(top_scores[g, j]), alpha,
                _penalty(step_sum, state, r, coverage_penalty), full))
        # the best k non-EOS candidates stay alive
        if dba:
            pick = rules.allocate(top_scores, top_idx, hist, rows, k, V, is_eos)  # (n, k)
            scores = top_scores.masked_fill(is_eos, float("-inf")).gather(1, pick)
        else:
            scores, pick = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=-1)
        new_rows = src_rows.gather(1, pick).view(-1)  # (n*k,)
        y = top_tok.gather(1, pick).view(-1)
        hist = torch.cat([hist.index_select(0, new_rows), y.unsqueeze(1)], 1)
        hist_info = _append_info(
            {name: v.index_select(0, new_rows) for name, v in hist_info.items()},
            {name: v.index_select(0, new_rows) for name, v in step_info.items()})
        state = state.index_select(new_rows, same_source=True)  # rows stay in their sentence
        if step_sum is not None:
            attn_sum = step_sum.index_select(0, new_rows)

        # done: enough finished, no live hypothesis can still win, or at the length cap
        done = []
        best_live = scores.max(-1).values.tolist()  # (n,) raw log-probabilities
        for g, s in enumerate(sent):
            beaten = early_stop and len(finished[s]) >= n_best and (
                best_live[g] / length_penalty(max_lens[s], alpha)
                <= sorted((h.score for h in finished[s]), reverse=True)[n_best - 1])
            if (at_k and len(finished[s]) >= k) or beaten:
                done.append(g)
            elif t + 1 >= max_lens[s]:
                for b in range(k):
                    r = g * k + b
                    # a dead beam (-inf) is no hypothesis, unless all are and nothing finished:
                    # then beam 0 (as good as any) is the garbage model's answer, scored -inf
                    if not torch.isfinite(scores[g, b]) and (b or finished[s]):
                        continue
                    full = {name: v[r] for name, v in hist_info.items()}
                    finished[s].append(_finished(hist[r].tolist(), float(scores[g, b]), alpha,
                                                 _penalty(attn_sum, state, r, coverage_penalty),
                                                 full))
                done.append(g)
        if len(done) == n:
            break
        if done:
            keep_groups = [g for g in range(n) if g not in done]
            gidx = torch.tensor(keep_groups, device=device)
            ridx = (gidx.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            state, y = state.index_select(ridx), y.index_select(0, ridx)
            hist = hist.index_select(0, ridx)
            hist_info = {name: v.index_select(0, ridx) for name, v in hist_info.items()}
            attn_sum = None if attn_sum is None else attn_sum.index_select(0, ridx)
            scores = scores.index_select(0, gidx)
            sent = [sent[g] for g in keep_groups]
    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]
