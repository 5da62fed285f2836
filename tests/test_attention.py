"""Attention scorers: masking, normalisation, gradients (Principle 11)."""

from __future__ import annotations

import math

import pytest
import torch

from attendo.model.attention import SCORERS, Attention, build_scorer, masked_softmax

DIMS = [(8, 8), (6, 10)]  # (query_dim, key_dim): equal, and different (bidirectional encoder)


def _inputs(B=3, Tq=4, S=7, Dq=8, Dk=8, lens=(7, 4, 1), dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, Tq, Dq, generator=g, dtype=dtype)
    keys = torch.randn(B, S, Dk, generator=g, dtype=dtype)
    mask = torch.arange(S)[None, :] >= torch.tensor(lens)[:, None]  # (B, S) True at padding
    return q, keys, mask


def _attention(name, Dq, Dk, max_len=16, dtype=torch.float32):
    torch.manual_seed(0)
    return Attention(build_scorer(name, Dq, Dk, location_max_len=max_len)).to(dtype)


def test_registry_has_the_documented_scorers():
    assert set(SCORERS) == {"dot", "scaled_dot", "general", "additive", "location"}
    with pytest.raises(ValueError, match="unknown attention scorer"):
        build_scorer("bilinear", 4, 4)


@pytest.mark.parametrize("Dq,Dk", DIMS)
@pytest.mark.parametrize("name", sorted(SCORERS))
def test_masked_positions_get_zero_weight_and_rows_sum_to_one(name, Dq, Dk):
    attn = _attention(name, Dq, Dk)
    q, keys, mask = _inputs(Dq=Dq, Dk=Dk)
    values = torch.randn(3, 7, 5)
    ctx, w = attn(q, attn.prepare(keys), values, mask)
    assert ctx.shape == (3, 4, 5) and w.shape == (3, 4, 7)
    assert torch.all(w.masked_select(mask.unsqueeze(1).expand_as(w)) == 0)  # exactly zero
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4))
    torch.testing.assert_close(ctx, torch.bmm(w, values))


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_padding_content_does_not_leak(name):
    """Whatever the encoder leaves at padded positions changes neither weights nor context."""
    attn = _attention(name, 6, 10)
    q, keys, mask = _inputs(Dq=6, Dk=10)
    values = torch.randn(3, 7, 5)
    ctx, w = attn(q, attn.prepare(keys), values, mask)
    pad = mask.unsqueeze(-1)
    keys2 = torch.where(pad, 1e3 * torch.randn_like(keys), keys)
    values2 = torch.where(pad, 1e3 * torch.randn_like(values), values)
    ctx2, w2 = attn(q, attn.prepare(keys2), values2, mask)
    torch.testing.assert_close(w2, w)
    torch.testing.assert_close(ctx2, ctx)


@pytest.mark.parametrize("Dq,Dk", DIMS)
@pytest.mark.parametrize("name", sorted(SCORERS))
def test_gradcheck_float64(name, Dq, Dk):
    attn = _attention(name, Dq, Dk, max_len=8, dtype=torch.float64)
    q, keys, mask = _inputs(B=2, Tq=2, S=5, Dq=Dq, Dk=Dk, lens=(5, 3), dtype=torch.float64)
    values = torch.randn(2, 5, 3, dtype=torch.float64)
    q.requires_grad_(True)
    keys.requires_grad_(True)
    values.requires_grad_(True)

    def f(q, keys, values):
        return attn(q, attn.prepare(keys), values, mask)

    assert torch.autograd.gradcheck(f, (q, keys, values), eps=1e-6, atol=1e-5)
    # and through the scorer's own parameters (W_a, v_a, ...), prepare included
    full = _Full(attn)
    names = [n for n, _ in full.named_parameters()]
    if not names:  # dot with equal sizes has no parameters
        assert name in ("dot", "scaled_dot") and Dq == Dk
        return
    ps = tuple(p.detach().clone().requires_grad_(True) for p in full.parameters())
    args = (q.detach(), keys.detach(), values.detach(), mask)

    def g(*ps):
        return torch.func.functional_call(full, dict(zip(names, ps)), args)

    assert torch.autograd.gradcheck(g, ps, eps=1e-6, atol=1e-5)


class _Full(torch.nn.Module):
    """prepare + forward in one call, so functional_call swaps parameters in both."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.attn = attn

    def forward(self, q, keys, values, mask):
        return self.attn(q, self.attn.prepare(keys), values, mask)


def test_location_scorer_puts_no_weight_past_max_len():
    attn = _attention("location", 6, 10, max_len=4)
    q, keys, mask = _inputs(Dq=6, Dk=10, lens=(7, 7, 5))  # every source longer than max_len
    ctx, w = attn(q, attn.prepare(keys), torch.randn(3, 7, 5), mask)
    assert torch.all(w[..., 4:] == 0)
    torch.testing.assert_close(w[..., :4].sum(-1), torch.ones(3, 4))
    # shorter sources use only their own positions
    q, keys, mask = _inputs(Dq=6, Dk=10, S=3, lens=(3, 2, 1))
    _, w = attn(q, attn.prepare(keys), torch.randn(3, 3, 5), mask)
    assert w.shape == (3, 4, 3)
    assert torch.all(w[2, :, 1:] == 0) and torch.all(w[2, :, 0] == 1)


def test_scaled_dot_is_dot_divided_by_sqrt_d():
    dot, scaled = build_scorer("dot", 6, 10), build_scorer("scaled_dot", 6, 10)
    scaled.load_state_dict(dot.state_dict())
    q, keys, _ = _inputs(Dq=6, Dk=10)
    torch.testing.assert_close(
        scaled.score(q, scaled.prepare(keys)), dot.score(q, dot.prepare(keys)) / math.sqrt(6)
    )


def test_masked_softmax_single_real_position_gets_all_weight():
    scores = torch.randn(2, 3, 4)
    mask = torch.tensor([[False, True, True, True], [True, True, False, True]])
    w = masked_softmax(scores, mask)
    assert torch.all(w[0, :, 0] == 1) and torch.all(w[1, :, 2] == 1)
