"""Copy: the pointer-generator (See et al. 2017, sec. 2.2; Gu et al. 2016), in one place.

At step i a copy decoder gives p_gen = sigmoid(w_c . c_i + w_s . s_i + w_x . x_i + b)
(:func:`p_gen_layer`, :func:`p_gen_info`; c_i the attention context, s_i the decoder state,
x_i the embedded y_{i-1}), and the output is

    P(w) = p_gen P_vocab(w) + (1 - p_gen) sum_{j: x_j = w} a_ij

over the target vocabulary extended with the sentence's source-only words (ids V, V+1, ...;
``src_ext``, the source in that vocabulary, comes with the batch and sits in the decoder
state), in log space: :func:`copy_log_probs` for decoding, :func:`copy_token_loss` for
training. An extended id fed back as y_{i-1} is embedded as <unk> (:func:`unk_extended`).
Both decoders use it: the RNN decoder with its attention, the Transformer decoder with the
cross-attention of ``attn_layer`` (mean over heads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# log(0) stand-in where a gradient must flow: log(TINY) = -87.3 (float32's smallest normal)
TINY = torch.finfo(torch.float32).tiny


def p_gen_layer(ctx_dim: int, state_dim: int, emb_dim: int) -> nn.Linear:
    """The p_gen head W_gen [c_i; s_i; x_i] + b: one linear layer to one logit (a decoder keeps
    it as ``W_gen``, the name its saved weights have)."""
    return nn.Linear(ctx_dim + state_dim + emb_dim, 1)  # [w_c; w_s; w_x], b_ptr


def p_gen_info(W_gen: nn.Module, *parts: Tensor) -> dict[str, Tensor]:
    """p_gen = sigmoid(W_gen [c_i; s_i; x_i]) and its logit, from the parts (..., *) in that
    order (one step or all steps at once) -> {"p_gen": (...), "p_gen_logit": (...)}."""
    logit = W_gen(torch.cat(parts, -1)).squeeze(-1)  # (...)
    return {"p_gen": torch.sigmoid(logit), "p_gen_logit": logit}


def unk_extended(ids: Tensor, vocab_size: int, unk_id: int) -> Tensor:
    """Extended ids (a copied source-only word, >= vocab_size) become <unk> before embedding."""
    return ids.masked_fill(ids >= vocab_size, unk_id)


def extra_words(src_ext: Tensor, vocab_size: int) -> int:
    """n_ext, the source-only words in the extended vocabulary of a batch's ``src_ext``."""
    return max(0, int(src_ext.max()) + 1 - vocab_size) if src_ext.numel() else 0


def check_src_ext(src_ext: Tensor | None) -> None:
    if src_ext is None:
        raise ValueError("a copy decoder needs src_ext, the source in the extended vocabulary")


def copy_log_probs(lp_vocab: Tensor, p_gen_logit: Tensor, attn: Tensor, src_ext: Tensor,
                   n_ext: int) -> Tensor:
    """The pointer-generator distribution in log space (See et al. 2017, eq. 9).

    log P(w) = log(p_gen P_vocab(w) + (1 - p_gen) sum_{j: src_ext_j = w} a_j) over the extended
    vocabulary V + n_ext. lp_vocab (..., V), p_gen_logit (...), attn and src_ext (..., S)
    -> (..., V + n_ext). Words neither in the vocabulary nor in the source get exactly -inf.
    log p_gen and log(1 - p_gen) come from logsigmoid of the logit, so they stay finite when
    p_gen saturates. For decoding and inspection; the training loss uses
    :func:`copy_token_loss`, whose gradients stay finite everywhere.
    """
    width = lp_vocab.size(-1) + n_ext
    p_gen_logit, attn = p_gen_logit.float(), attn.float()  # bf16 under autocast: sum in fp32
    gen = F.logsigmoid(p_gen_logit).unsqueeze(-1) + lp_vocab  # (..., V)
    gen = F.pad(gen, (0, n_ext), value=float("-inf"))  # (..., V + n_ext)
    mass = attn.new_zeros(*attn.shape[:-1], width).scatter_add_(-1, src_ext, attn)
    copy = F.logsigmoid(-p_gen_logit).unsqueeze(-1) + mass.log()  # -inf where no mass
    return torch.logaddexp(gen, copy)


def copy_token_loss(logits: Tensor, info: dict, target: Tensor, keep: Tensor,
                    label_smoothing: float) -> tuple[Tensor, Tensor]:
    """Summed (label-smoothed) loss and summed NLL of the pointer-generator over the positions
    where keep (B, T) is True: logits (N, V) of the kept positions, target (B, T) extended ids
    (Batch.tgt_out_ext), info from the decoder's forward ("attn" (B, T, S), "src_ext" (B, S),
    "p_gen_logit" (B, T)).

    Only the gold word's probability is mixed: log P(y) = logaddexp(log p_gen +
    log P_vocab(y), log(1 - p_gen) + log copy(y)), with copy(y) clamped at TINY so no
    gradient meets log(0). Label smoothing spreads its mass over the fixed target
    vocabulary of the final (mixed) distribution: -mean_{w < V} log P(w); the
    sentence's extra source-only words get none. The (N, V) mixture is never built: a
    word no source position holds has no copy mass, so its log P(w) is log p_gen +
    log P_vocab(w), summed over the whole vocabulary in one pass; only the source's own
    words (each once) are mixed. (Building it took most of a training step with a
    20,000-word vocabulary.)
    """
    V = logits.size(-1)
    lp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    gold = target[keep]  # (N,) extended ids
    attn = info["attn"][keep].float()  # (N, S)
    src_ext = info["src_ext"].unsqueeze(1).expand(-1, keep.size(1), -1)[keep]  # (N, S)
    logit = info["p_gen_logit"][keep].float()  # (N,)
    log_gen, log_cp = F.logsigmoid(logit), F.logsigmoid(-logit)  # log p_gen, log(1 - p_gen)
    gen_gold = lp.gather(1, gold.clamp(max=V - 1).unsqueeze(1)).squeeze(1)
    gen_gold = torch.where(gold < V, gen_gold, float("-inf")) + log_gen
    copy_gold = (attn * (src_ext == gold.unsqueeze(1))).sum(-1)  # (N,)
    nll = -torch.logaddexp(gen_gold, log_cp + copy_gold.clamp_min(TINY).log()).sum()
    if label_smoothing == 0:
        return nll, nll
    ids = src_ext.clamp(max=V)  # (N, S); source-only (extended) words all become V
    same = ids.unsqueeze(2) == ids.unsqueeze(1)  # (N, S, S): positions j, k hold one word
    mass = (same * attn.unsqueeze(1)).sum(-1)  # (N, S): copy mass of the word at j
    earlier = torch.ones_like(same[0]).tril(-1)  # (S, S): k < j
    use = ~(same & earlier).any(-1) & (ids < V) & (mass > 0)  # first position, in V, mass
    gen = lp.gather(1, ids.clamp(max=V - 1)) + log_gen.unsqueeze(1)  # (N, S)
    mix = torch.logaddexp(gen, log_cp.unsqueeze(1) + torch.where(use, mass, 1.0).log())
    total = V * log_gen + lp.sum(-1) + torch.where(use, mix - gen, 0.0).sum(-1)  # (N,)
    loss = (1 - label_smoothing) * nll - label_smoothing * (total / V).sum()
    return loss, nll
