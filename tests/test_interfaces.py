"""The model package's contracts: registries, declared capabilities, one home per mechanism,
and the public methods export uses (issue 30)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model

import attendo.search as search
from attendo.model import coverage as cov_
from attendo.model.attention import scaled_dot
from attendo.model.copy import extra_words, p_gen_info, unk_extended
from attendo.model.decoders import RNNDecoder
from attendo.model.encoders import RNNEncoder
from attendo.model.interfaces import Decoder, Encoder
from attendo.model.multihead import MultiHeadAttention
from attendo.model.seq2seq import DECODERS, ENCODERS
from attendo.model.transformer import TransformerDecoder, TransformerEncoder


def test_registries_hold_every_encoder_and_decoder_the_config_names():
    assert set(ENCODERS) == {"rnn", "cnn", "transformer", "image"}
    assert set(DECODERS) == {"rnn", "transformer"}
    for encoder in ENCODERS:
        for decoder in DECODERS:
            kw = dict(encoder=encoder, decoder=decoder, d_model=16, heads=2, ff_dim=16,
                      enc_layers=1, dec_layers=1, image_pool=1)
            model = make_model(**kw)
            assert isinstance(model.encoder, Encoder) and isinstance(model.decoder, Decoder)


@pytest.mark.parametrize("kw, caps", [
    ({}, (True, False, False, None)),
    ({"attention": "none"}, (False, False, False, None)),
    ({"coverage": True, "copy": True}, (True, True, True, None)),
    ({"encoder": "transformer", "decoder": "transformer", "d_model": 16, "heads": 2,
      "ff_dim": 16, "enc_layers": 1, "dec_layers": 3, "copy": True}, (True, True, False, (3, 2))),
])
def test_capabilities_are_declared_by_the_decoder(kw, caps):
    model = make_model(**kw)
    assert (model.has_attention, model.copies, model.has_coverage, model.attention_heads) == caps
    assert bool(model.coverage_parameters()) == model.has_coverage
    if model.copies:  # the p_gen head keeps the name its saved weights have
        assert {"decoder.W_gen.weight", "decoder.W_gen.bias"} <= set(model.state_dict())


def test_unfused_switches_the_fused_passes_off_and_back():
    model = make_model(attention_style="luong")
    assert isinstance(model.encoder, RNNEncoder) and isinstance(model.decoder, RNNDecoder)
    assert model.encoder.fusable() and model.decoder.fusable()
    with pytest.raises(RuntimeError), model.unfused():
        assert not model.encoder.fusable() and not model.decoder.fusable()
        raise RuntimeError
    assert model.encoder.fusable() and model.decoder.fusable()
    transformer = make_model(encoder="transformer", decoder="transformer", d_model=16, heads=2,
                             ff_dim=16, enc_layers=1, dec_layers=1)
    with transformer.unfused() as m:  # nothing to switch off
        assert m is transformer and isinstance(m.encoder, TransformerEncoder)


def test_transformer_top_is_the_output_layers_input():
    dec = make_model(encoder="transformer", decoder="transformer", d_model=16, heads=2,
                     ff_dim=16, enc_layers=1, dec_layers=1, norm="pre").decoder
    assert isinstance(dec, TransformerDecoder)
    x = torch.randn(2, 16)
    torch.testing.assert_close(dec.top(x), dec.final_norm(x), rtol=0, atol=0)


def test_search_penalty_is_coverage_modules():
    assert search.coverage_penalty is cov_.coverage_penalty


def test_coverage_hook_and_state():
    scores, cov = torch.randn(2, 1, 4), torch.rand(2, 1, 4)
    assert cov_.add_to_scores(scores, None, cov) is scores
    w = cov_.coverage_weight()
    assert w.shape == () and float(w.detach()) == 0.0
    torch.testing.assert_close(cov_.add_to_scores(scores, w + 2, cov), scores + 2 * cov)
    info: dict = {}
    a = torch.softmax(torch.randn(2, 4), -1)
    new = cov_.advance(cov[:, 0], a, info)
    assert info["coverage"] is not None and torch.equal(new, cov[:, 0] + a)


def test_copy_helpers():
    ids = torch.tensor([1, 5, 13, 14])
    assert unk_extended(ids, 13, 1).tolist() == [1, 5, 1, 1]
    assert extra_words(torch.tensor([[4, 15], [13, 0]]), 13) == 3
    assert extra_words(torch.zeros(0, 0, dtype=torch.long), 13) == 0
    W = torch.nn.Linear(6, 1)
    parts = torch.randn(3, 2), torch.randn(3, 3), torch.randn(3, 1)
    info = p_gen_info(W, *parts)
    assert list(info) == ["p_gen", "p_gen_logit"]
    torch.testing.assert_close(info["p_gen"], torch.sigmoid(W(torch.cat(parts, -1)).squeeze(-1)))


def test_scaled_dot_is_the_multihead_score():
    q, k = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 5, 8)
    assert torch.equal(scaled_dot(q, k), q @ k.transpose(-2, -1) / math.sqrt(8))
    mha = MultiHeadAttention(16, 2)
    v = torch.randn(2, 2, 5, 8)
    _, w = mha.attend(q[:, :2], k[:, :2], v, need_weights=True)
    torch.testing.assert_close(w, torch.softmax(scaled_dot(q[:, :2], k[:, :2]), -1))

