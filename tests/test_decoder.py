"""Decoders: step-by-step decoding equals the teacher-forced pass; states reorder (Principle 11)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import ATTENTIONS, make_model, path_atol, random_batch

from attendo.data.vocab import Vocab
from attendo.model.decoders import RNNDecoderState
from attendo.model.interfaces import DecoderState

V = 13
GRID = list(itertools.product(ATTENTIONS, ("bahdanau", "luong"), ("gru", "lstm")))


def _ids(grid):
    return [f"{a}-{s}-{r}" for a, s, r in grid]


def _data(B_lens=(5, 3, 1, 4), T=4, seed=0, device="cpu"):
    """src, src_lens, tgt_in: drawn on the CPU (a torch.Generator belongs to one device), then
    moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    src, src_lens = random_batch(list(B_lens), V, g)
    tgt_in = torch.randint(4, V, (len(B_lens), T), generator=g)
    tgt_in[:, 0] = Vocab.BOS
    return src.to(device), src_lens.to(device), tgt_in.to(device)


def _step_all(model, src, src_lens, tgt_in, state=None):
    """Decode tgt_in token by token; returns log-probs (B, T, V) and attention (B, T, S) or None."""
    state = model.start(src, src_lens) if state is None else state
    lps, attns = [], []
    for t in range(tgt_in.size(1)):
        lp, state, info = model.decoder.step(tgt_in[:, t], state)
        lps.append(lp)
        if "attn" in info:
            attns.append(info["attn"])
    return torch.stack(lps, 1), (torch.stack(attns, 1) if attns else None)


def _check_step_equals_teacher_forcing(model, src, src_lens, tgt_in):
    """On the inputs' device; results are compared on the CPU. The teacher-forced pass of a
    fusable decoder (one GRU layer, Luong additive attention) is the fused pass on every
    device (attendo.model.fused_rnn), the steps are GRUCell's; on CUDA an LSTM encoder is
    cuDNN's."""
    atol = path_atol(src.device, 1e-5)
    with torch.no_grad():
        lp_tf, info = model.log_probs(src, src_lens, tgt_in)
        lp_step, attn_step = _step_all(model, src, src_lens, tgt_in)
    assert lp_tf.device == lp_step.device == src.device
    lp_tf, lp_step = lp_tf.cpu(), lp_step.cpu()
    torch.testing.assert_close(lp_step, lp_tf, atol=atol, rtol=0)
    torch.testing.assert_close(lp_tf.exp().sum(-1), torch.ones(lp_tf.shape[:2]))
    if attn_step is None:
        assert "attn" not in info
    else:
        attn_step, attn_tf = attn_step.cpu(), info["attn"].cpu()
        torch.testing.assert_close(attn_step, attn_tf, atol=atol, rtol=0)
        torch.testing.assert_close(attn_tf.sum(-1), torch.ones(lp_tf.shape[:2]))
        pad = (torch.arange(src.size(1))[None, :] >= src_lens.cpu()[:, None]).unsqueeze(1)
        assert torch.all(attn_tf.masked_select(pad.expand_as(attn_tf)) == 0)


@pytest.mark.parametrize("attention,style,rnn", GRID, ids=_ids(GRID))
def test_step_equals_teacher_forced(attention, style, rnn, device):
    model = make_model(V, attention=attention, attention_style=style, rnn_type=rnn, dropout=0.3)
    model.to(device)
    assert not model.training  # dropout must be off in eval mode
    _check_step_equals_teacher_forcing(model, *_data(device=device))


@pytest.mark.parametrize("attention,style,rnn", GRID, ids=_ids(GRID))
def test_state_index_select_reorders_consistently(attention, style, rnn, device):
    model = make_model(V, attention=attention, attention_style=style, rnn_type=rnn).to(device)
    src, src_lens, tgt_in = _data(device=device)
    # reorder, duplicate (beam expansion) and keep all; on the state's device, as search does
    idx = torch.tensor([2, 0, 0, 3, 1], device=device)
    atol = path_atol(device, 1e-5)  # 5 rows vs 4: CUDA kernels may round differently
    with torch.no_grad():
        lp, attn = _step_all(model, src, src_lens, tgt_in)
        state = model.start(src, src_lens).index_select(idx)
        assert isinstance(state, DecoderState)
        assert state.src_pad_mask.device == state.h.device == device
        lp_perm, attn_perm = _step_all(model, src, src_lens, tgt_in[idx], state=state)
    torch.testing.assert_close(lp_perm.cpu(), lp[idx].cpu(), atol=atol, rtol=0)
    if attn is not None:
        torch.testing.assert_close(attn_perm.cpu(), attn[idx].cpu(), atol=atol, rtol=0)


def test_index_select_mid_sequence_and_prune():
    """Reordering after some steps (what beam search does) continues each row unchanged."""
    model = make_model(V, attention="additive", rnn_type="lstm")
    src, src_lens, tgt_in = _data()
    with torch.no_grad():
        state = model.start(src, src_lens)
        for t in range(2):
            _, state, _ = model.decoder.step(tgt_in[:, t], state)
        full, _ = _step_all(model, src, src_lens, tgt_in[:, 2:], state=state)
        keep = torch.tensor([3, 1])  # prune rows 0 and 2
        pruned, _ = _step_all(
            model, src, src_lens, tgt_in[keep, 2:], state=state.index_select(keep)
        )
    torch.testing.assert_close(pruned, full[keep], atol=1e-5, rtol=0)


def test_index_select_keeps_none_fields():
    model = make_model(V, attention="none", rnn_type="gru")
    src, src_lens, _ = _data()
    state = model.start(src, src_lens)
    assert isinstance(state, RNNDecoderState) and state.c is None and state.keys is None
    s2 = state.index_select(torch.tensor([1, 1]))
    assert s2.c is None and s2.keys is None and s2.h.shape[0] == 2 and s2.memory.shape[0] == 2


@pytest.mark.parametrize("attention", ["additive", "dot", "none"])
def test_tie_output_shares_the_embedding(attention):
    model = make_model(V, attention=attention, emb_dim=12, dec_hidden=12, tie_output=True)
    dec = model.decoder
    assert dec.out.weight is dec.embed.weight
    assert sum(p is dec.embed.weight for p in model.parameters()) == 1  # counted once
    _check_step_equals_teacher_forcing(model, *_data())


@pytest.mark.parametrize(
    "enc_layers,dec_layers,bidirectional,rnn",
    [(2, 2, True, "lstm"), (2, 3, True, "gru"), (3, 2, False, "lstm"), (1, 2, False, "gru")],
)
def test_multi_layer_with_bridge(enc_layers, dec_layers, bidirectional, rnn):
    model = make_model(
        V,
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        bidirectional=bidirectional,
        rnn_type=rnn,
        attention="general",
        dropout=0.2,
    )
    src, src_lens, tgt_in = _data()
    state = model.start(src, src_lens)
    assert state.h.shape == (4, dec_layers, 12)
    if rnn == "lstm":
        assert state.c.shape == (4, dec_layers, 12)
    _check_step_equals_teacher_forcing(model, src, src_lens, tgt_in)
    # the bridge makes the initial state depend on the source
    src2 = src.clone()
    src2[0, 0] = 4 if src[0, 0] != 4 else 5
    assert not torch.allclose(model.start(src2, src_lens).h[0], state.h[0])
    # gradients reach every parameter
    model.train()
    loss, _, _ = model.loss(src, src_lens, tgt_in, tgt_in.roll(-1, 1), Vocab.PAD)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_without_bridge_initial_state_is_zero():
    model = make_model(V, bridge=False, rnn_type="lstm", dec_layers=2)
    src, src_lens, tgt_in = _data()
    state = model.start(src, src_lens)
    assert torch.all(state.h == 0) and torch.all(state.c == 0)
    _check_step_equals_teacher_forcing(model, src, src_lens, tgt_in)


@pytest.mark.parametrize("style", ["bahdanau", "luong"])
def test_without_input_feeding(style):
    model = make_model(V, input_feeding=False, attention_style=style, attention="dot", out_dim=6)
    assert model.decoder.out.in_features == 6
    _check_step_equals_teacher_forcing(model, *_data())


def test_loss_counts_only_non_pad_targets():
    model = make_model(V)
    src, src_lens, tgt_in = _data()
    tgt_out = tgt_in.roll(-1, 1)
    tgt_out[0, 2:] = Vocab.PAD
    loss, nll, n = model.loss(src, src_lens, tgt_in, tgt_out, Vocab.PAD)
    assert n == int((tgt_out != Vocab.PAD).sum())
    with torch.no_grad():
        lp, _ = model.log_probs(src, src_lens, tgt_in)
    keep = tgt_out != Vocab.PAD
    expected = -lp[keep].gather(1, tgt_out[keep].unsqueeze(1)).sum()
    torch.testing.assert_close(nll, expected, atol=1e-4, rtol=1e-5)
    ls, _, _ = model.loss(src, src_lens, tgt_in, tgt_out, Vocab.PAD, label_smoothing=0.1)
    assert float(ls.detach()) != float(loss.detach())
