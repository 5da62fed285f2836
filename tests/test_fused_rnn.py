"""The fused recurrent passes (attendo.model.fused_rnn) compute the same function and the same
gradients as the step-by-step modules they replace, in float64."""

from __future__ import annotations

import pytest
import torch

from attendo.model.decoders import RNNDecoder
from attendo.model.encoders import RNNEncoder


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([6, 3, 4, 1])
    src = torch.randint(2, 50, (4, 6), generator=g)
    for b, n in enumerate(lens.tolist()):
        src[b, n:] = 0
    tgt = torch.randint(2, 40, (4, 5), generator=g)
    return src, lens, tgt


def _grads(*modules):
    return {
        f"{i}.{n}": p.grad.clone()
        for i, m in enumerate(modules)
        for n, p in m.named_parameters()
        if p.grad is not None
    }


@pytest.mark.parametrize("bidirectional", [True, False])
def test_fused_encoder_equals_packed_gru(bidirectional):
    torch.manual_seed(0)
    enc = RNNEncoder(50, 8, 6, bidirectional=bidirectional).double()
    assert enc.fusable()
    src, lens, _ = _batch()
    res = {}
    for fused in (False, True):
        enc.zero_grad()
        enc.fused = fused
        out = enc(src, lens)
        g = torch.Generator().manual_seed(1)
        w, wf = torch.randn(out.out.shape, generator=g), torch.randn(out.final_h.shape, generator=g)
        ((out.out * w).sum() + (out.final_h * wf).sum()).backward()
        res[fused] = out, _grads(enc)
    (ref, g_ref), (got, g_got) = res[False], res[True]
    torch.testing.assert_close(got.out, ref.out, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.final_h, ref.final_h, rtol=0, atol=1e-12)
    assert torch.equal(got.src_pad_mask, ref.src_pad_mask)
    assert torch.all(got.out[got.src_pad_mask] == 0)  # zero at padding
    assert g_got.keys() == g_ref.keys() and len(g_ref) == (9 if bidirectional else 5)  # GRU + embeddings
    for name in g_ref:
        torch.testing.assert_close(g_got[name], g_ref[name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("copy", [False, True], ids=["plain", "copy"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_fused_decoder_equals_step_by_step(input_feeding, copy):
    """With copy, the fused pass also returns [c_i; s_i], from which p_gen is computed; its
    gradient (through p_gen) must reach the contexts, the states and every weight."""
    torch.manual_seed(0)
    enc = RNNEncoder(50, 8, 6).double()
    dec = RNNDecoder(40, 8, 7, 12, 12, attention="additive", style="luong",
                     input_feeding=input_feeding, out_dim=9, copy=copy).double()
    assert dec.fusable()
    src, lens, tgt = _batch()
    src_ext = src.clone()
    src_ext[0, 1] = 41  # a source-only word in the extended vocabulary
    res = {}
    for fused in (False, True):
        enc.zero_grad()
        dec.zero_grad()
        enc.fused = dec.fused = fused
        state = dec.init_state(enc(src, lens), src_ext=src_ext if copy else None,
                               n_ext=2 if copy else 0)
        feats, info = dec(tgt, state)
        g = torch.Generator().manual_seed(1)
        w, wa = torch.randn(feats.shape, generator=g), torch.randn(info["attn"].shape, generator=g)
        loss = (feats * w).sum() + (info["attn"] * wa).sum()  # attention gets a gradient too
        if copy:
            loss = loss + (info["p_gen_logit"] * torch.randn(tgt.shape, generator=g)).sum()
            assert torch.equal(info["src_ext"], src_ext)
            torch.testing.assert_close(info["p_gen"], torch.sigmoid(info["p_gen_logit"]))
        loss.backward()
        res[fused] = feats, info, _grads(enc, dec)
    (f_ref, i_ref, g_ref), (f_got, i_got, g_got) = res[False], res[True]
    assert i_got.keys() == i_ref.keys()
    torch.testing.assert_close(f_got, f_ref, rtol=0, atol=1e-12)
    for name in i_ref:
        torch.testing.assert_close(i_got[name], i_ref[name], rtol=0, atol=1e-12, msg=name)
    assert g_got.keys() == g_ref.keys()
    assert any(k.endswith("W_2.weight") for k in g_ref)  # the keys' gradient reaches W_2
    assert any(k.endswith("W_gen.weight") for k in g_ref) == copy
    for name in g_ref:
        torch.testing.assert_close(g_got[name], g_ref[name], rtol=0, atol=1e-10, msg=name)


def test_fused_passes_under_bf16_autocast_match_fp32(device):
    """Under autocast the fused passes run in bfloat16: close to fp32, gradients in fp32.

    ``fusable()`` does not look at the device: the fused passes are plain tensor operations
    and run on CUDA too (under CUDA autocast, in its dtype), so on CUDA this tests them there.
    """
    torch.manual_seed(0)
    enc = RNNEncoder(50, 16, 16).to(device)
    dec = RNNDecoder(40, 16, 16, 32, 32, attention="additive", style="luong").to(device)
    assert enc.fusable() and dec.fusable()  # what runs below is the fused passes
    src, lens, tgt = (t.to(device) for t in _batch())

    def run(low):
        enc.zero_grad()
        dec.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low):
            feats, info = dec(tgt, dec.init_state(enc(src, lens)))
        assert feats.dtype == (torch.bfloat16 if low else torch.float32)
        feats.float().pow(2).sum().backward()
        return feats.float().cpu(), info["attn"].cpu(), _grads(enc, dec)

    f32, a32, g32 = run(False)
    f16, a16, g16 = run(True)
    torch.testing.assert_close(f16, f32, rtol=0, atol=3e-2)
    torch.testing.assert_close(a16, a32, rtol=0, atol=3e-2)
    assert g16.keys() == g32.keys()
    for name, g in g16.items():
        assert g.dtype == torch.float32 and g.device == device, name
        rel = (g - g32[name]).norm() / g32[name].norm().clamp_min(1e-6)
        assert rel < 0.1, (name, float(rel))


@pytest.mark.parametrize(
    "kwargs",
    [dict(style="bahdanau"), dict(rnn_type="lstm"), dict(layers=2), dict(attention="general"),
     dict(coverage=True)],
    ids=lambda k: next(iter(k)),
)
def test_other_decoders_take_the_step_by_step_path(kwargs):
    args = dict(attention="additive", style="luong") | kwargs
    assert not RNNDecoder(40, 8, 7, 12, 12, **args).fusable()
    assert not RNNEncoder(50, 8, 6, rnn_type="lstm").fusable()
    assert not RNNEncoder(50, 8, 6, layers=2).fusable()
