"""Decode-time ensembles: one member is the model bit for bit, two copies are the model, mixed
members (RNN, Transformer, copy) search well, and incompatible codecs are refused."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import make_model, random_batch

from attendo.config import Config, DataConfig
from attendo.data.prepare import Codec, ImageCodec
from attendo.data.tokenizers import CharTokenizer, WordTokenizer
from attendo.data.vocab import Vocab
from attendo.errors import UsageError
from attendo.model.ensemble import Ensemble, EnsembleState, check_compatible
from attendo.search import beam_search, greedy_search
from attendo.translator import Translator

BOS, EOS, UNK = Vocab.BOS, Vocab.EOS, Vocab.UNK
V = 15
LENS = [7, 3, 5, 1, 6, 2]
CAPS = [9, 4, 7, 2, 8, 3]
KINDS = {
    "rnn": {"attention": "additive"},
    "rnn-copy": {"attention": "general", "rnn_type": "lstm", "copy": True},
    "transformer": {"encoder": "transformer", "decoder": "transformer", "d_model": 16,
                    "heads": 4, "ff_dim": 32, "enc_layers": 2, "dec_layers": 2},
}


def _model(kind: str, seed: int = 0, eos_bias: float = 1.5):
    """A tiny random model, EOS made likely enough that some outputs end before their cap."""
    torch.manual_seed(seed)
    model = make_model(V, **KINDS[kind])
    with torch.no_grad():
        model.decoder.out.bias[EOS] += eos_bias
    return model


def _batch(seed: int = 1):
    """Sources of different lengths, with source-only words (<unk> in src, V and V+1 in
    src_ext) for copy members, and output caps."""
    src, lens = random_batch(LENS, V, torch.Generator().manual_seed(seed))
    src_ext = src.clone()
    for r, j, ext in [(0, 1, V), (0, 3, V + 1), (2, 0, V), (4, 5, V)]:
        src[r, j], src_ext[r, j] = UNK, ext
    return src, lens, src_ext, torch.tensor(CAPS)


def _start(model, src, lens, src_ext):
    return model.start(src, lens, src_ext) if model.copies else model.start(src, lens)


def _search(model, beam: int, batch, n_best: int = 1):
    src, lens, src_ext, caps = batch
    state = _start(model, src, lens, src_ext)
    if beam == 1:
        return [[h] for h in greedy_search(model.decoder, state, len(lens), BOS, EOS, caps)]
    return beam_search(model.decoder, state, len(lens), BOS, EOS, caps, beam_size=beam,
                       n_best=n_best)


@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("kind", list(KINDS))
def test_ensemble_of_one_is_the_model_bit_for_bit(kind, beam):
    model = _model(kind)
    batch = _batch()
    alone, ens = _search(model, beam, batch), _search(Ensemble([model]), beam, batch)
    ended = 0
    for hs, es in zip(alone, ens):
        for h, e in zip(hs, es, strict=True):
            assert h.tokens == e.tokens and h.score == e.score and h.log_prob == e.log_prob
            assert torch.equal(h.attn, e.attn)
            ended += h.tokens[-1] == EOS
    assert ended  # outputs that end with EOS are covered


@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("kind", ["rnn", "transformer"])
def test_ensemble_of_two_copies_is_the_model(kind, beam):
    model = _model(kind)
    batch = _batch()
    alone = _search(model, beam, batch, n_best=beam)
    ens = _search(Ensemble([model, copy.deepcopy(model)]), beam, batch, n_best=beam)
    for hs, es in zip(alone, ens):
        assert [h.tokens for h in hs] == [e.tokens for e in es]
        for h, e in zip(hs, es):
            assert e.score == pytest.approx(h.score, abs=1e-5)
            torch.testing.assert_close(e.attn, h.attn)
            assert "attn_heads" not in e.info  # no common heads across members


def _well_formed(results, batch, beam):
    src, lens, _, caps = batch
    for i, hyps in enumerate(results):
        assert 1 <= len(hyps) <= beam
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert 1 <= len(h.tokens) <= caps[i] and EOS not in h.tokens[:-1]
            assert h.tokens[-1] == EOS or len(h.tokens) == caps[i]
            assert math.isfinite(h.score)
            assert h.attn.shape == (len(h.tokens), src.size(1))
            torch.testing.assert_close(h.attn.sum(-1), torch.ones(len(h.tokens)))
            assert torch.all(h.attn[:, lens[i]:] == 0)


@pytest.mark.parametrize("kinds", [("rnn", "transformer"), ("rnn", "transformer", "rnn-copy")])
def test_mixed_members_beam_search(kinds):
    ens = Ensemble([_model(k, seed) for seed, k in enumerate(kinds)])
    assert ens.copies == ("rnn-copy" in kinds) and ens.has_attention and not ens.has_coverage
    assert ens.attention_heads is None and ens.encoder is ens.members[0].encoder
    batch = _batch()
    _well_formed(_search(ens, 4, batch, n_best=3), batch, 4)


def test_step_averages_probabilities():
    rnn, tf, cp = _model("rnn", 0), _model("transformer", 1), _model("rnn-copy", 2)
    src, lens, src_ext, _ = _batch()
    y = torch.randint(4, V, (len(LENS),))
    for members in ([rnn, tf], [rnn, cp]):
        ens = Ensemble(members)
        with torch.no_grad():
            lp, state, info = ens.decoder.step(y, ens.start(src, lens, src_ext))
            p = [m.decoder.step(y, _start(m, src, lens, src_ext))[0].exp() for m in members]
        assert isinstance(state, EnsembleState) and len(state.members) == 2
        width = max(q.size(-1) for q in p)  # a copy member: V + n_ext columns
        assert width == (V + 2 if cp in members else V)
        p = [torch.cat([q, q.new_zeros(len(y), width - q.size(-1))], -1) for q in p]
        assert lp.dtype == torch.float32 and lp.shape == (len(y), width)
        torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(len(y)), atol=1e-5, rtol=0)
        torch.testing.assert_close(lp.exp(), (p[0] + p[1]) / 2, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(info["attn"].sum(-1), torch.ones(len(y)))
    # a copied source-only word is fed back to the member that does not copy as <unk>
    with torch.no_grad():
        y_ext = torch.full((len(LENS),), V)
        lp, _, _ = ens.decoder.step(y_ext, ens.decoder.step(y, ens.start(src, lens, src_ext))[1])
    assert torch.isfinite(lp[:, :V]).all()


def test_state_reorder_through_pruned_beam_search():
    """Each sentence searched alone gives what the batch (different source lengths, pruned
    as sentences finish) gives: the members' states are reordered together."""
    ens = Ensemble([_model("rnn", 0, eos_bias=1.0), _model("transformer", 1, eos_bias=1.0)])
    src, lens, src_ext, caps = batch = _batch(2)
    together = _search(ens, 3, batch, n_best=2)
    for i, n in enumerate(LENS):
        one = (src[i:i + 1, :n], lens[i:i + 1], src_ext[i:i + 1, :n], caps[i:i + 1])
        (alone,) = _search(ens, 3, one, n_best=2)
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together[i]], abs=1e-4)
        for a, b in zip(alone, together[i]):
            torch.testing.assert_close(a.attn, b.attn[:, :n], atol=1e-5, rtol=0)


def _codec(tokens, tokenizer=None):
    return Codec(tokenizer or WordTokenizer(), Vocab(list(Vocab.SPECIALS) + tokens))


def test_check_compatible():
    a = _codec(["the", "a", "cat"])
    check_compatible(["runs/a", "runs/b"], [(a, a), (_codec(["the", "a", "cat"]), a)])
    with pytest.raises(UsageError, match=r"runs/b: its target vocabulary differs from "
                                         r"runs/a's at id 5 \('dog' vs 'a'\)"):
        check_compatible(["runs/a", "runs/b"], [(a, a), (a, _codec(["the", "dog", "cat"]))])
    with pytest.raises(UsageError, match="runs/c: its target vocabulary has 6 entries, runs/a's 7"):
        check_compatible(["runs/a", "runs/b", "runs/c"], [(a, a), (a, a), (a, _codec(["the", "a"]))])
    with pytest.raises(UsageError, match="runs/b: its source tokenizer is 'char', runs/a's 'word'"):
        check_compatible(["runs/a", "runs/b"], [(a, a), (_codec(["the", "a", "cat"],
                                                                 CharTokenizer()), a)])
    with pytest.raises(UsageError, match="runs/b: its source is images, runs/a's text"):
        check_compatible(["runs/a", "runs/b"], [(a, a), (ImageCodec(32, 1), a)])
    check_compatible(["i", "j"], [(ImageCodec(32, 1), a), (ImageCodec(32, 1), a)])
    with pytest.raises(UsageError, match="j: its images have 3 channels, i's 1"):
        check_compatible(["i", "j"], [(ImageCodec(32, 1), a), (ImageCodec(32, 3), a)])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_translator_decodes_with_an_ensemble(precision):
    """The Translator's path (start, decoder, copies) and int8's deep copy work."""
    codec = _codec([f"w{i}" for i in range(V - 4)])
    cfg = Config(data=DataConfig(toy="copy", tokenizer="word"))
    cfg.decode.precision = precision
    ens = Ensemble([_model("rnn", 0, 1.0), _model("transformer", 1, 1.0), _model("rnn-copy", 2)])
    tr = Translator(ens, codec, codec, cfg)
    for beam in (1, 3):
        for t in tr.translate(["w1 w2 zz w4", "w5", "w2 w6 w1 qq w7"], beam=beam,
                              return_attention=True):
            assert np.isfinite(t.score) and t.tgt_tokens
            assert t.attention.sum(1) == pytest.approx(1.0, abs=1e-3)
