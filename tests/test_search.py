"""Greedy and beam search: a fake decoder with known probabilities, and real small models."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import make_model, path_atol, random_batch
from torch import Tensor

from attendo.config import Config, DataConfig
from attendo.data.prepare import Codec
from attendo.data.tokenizers import WordTokenizer
from attendo.data.vocab import Vocab
from attendo.model.interfaces import DecoderState
from attendo.search import beam_search, greedy_search, length_penalty
from attendo.translator import Translator, max_output_lengths

BOS, EOS, A, B = Vocab.BOS, Vocab.EOS, 4, 5
V = 6


# --------------------------------------------------------------------------- fake decoder


def classic(prefix: tuple[int, ...]) -> dict[int, float]:
    """Greedy takes A (0.6) and then can only end with 0.4; B then EOS has 0.4 * 0.9 = 0.36."""
    if not prefix:
        return {A: 0.6, B: 0.4}
    if prefix == (A,):
        return {EOS: 0.4, A: 0.3, B: 0.3}
    if prefix == (B,):
        return {EOS: 0.9, A: 0.05, B: 0.05}
    return {EOS: 0.5, A: 0.25, B: 0.25}


def endless(prefix: tuple[int, ...]) -> dict[int, float]:
    """EOS is impossible: every hypothesis runs to its length cap."""
    return {A: 0.7, B: 0.3} if len(prefix) % 2 == 0 else {A: 0.2, B: 0.8}


@dataclass
class FakeState(DecoderState):
    table: Tensor  # (B,) which probability table each row follows
    prefix: Tensor  # (B, t) tokens fed so far, BOS included


class FakeDecoder:
    """Hand-written step probabilities; attention is a one-hot on the id of the previous token,
    so a hypothesis's attention rows can be predicted from its tokens."""

    def __init__(self, tables):
        self.tables = tables
        self.rows: list[int] = []  # batch rows seen at each step

    def init_state(self, table_ids: list[int]) -> FakeState:
        return FakeState(torch.tensor(table_ids), torch.empty(len(table_ids), 0, dtype=torch.long))

    def step(self, y_prev: Tensor, state: FakeState, need_info: bool = True):
        self.rows.append(len(y_prev))
        prefix = torch.cat([state.prefix, y_prev.unsqueeze(1)], 1)
        lp = torch.full((len(y_prev), V), float("-inf"))
        for r in range(len(y_prev)):
            toks = tuple(prefix[r, 1:].tolist())  # without BOS
            for tok, p in self.tables[int(state.table[r])](toks).items():
                lp[r, tok] = math.log(p)
        attn = torch.nn.functional.one_hot(y_prev, V).float()  # (B, S=V)
        return lp, FakeState(state.table, prefix), {"attn": attn}


def _expected_attn(tokens: list[int]) -> Tensor:
    prev = torch.tensor([BOS] + tokens[:-1])
    return torch.nn.functional.one_hot(prev, V).float()


def test_beam_finds_the_sequence_greedy_misses():
    dec = FakeDecoder([classic])
    (g,) = greedy_search(dec, dec.init_state([0]), 1, BOS, EOS, 10)
    assert g.tokens == [A, EOS]
    assert g.score == pytest.approx(math.log(0.6) + math.log(0.4))
    (beam,) = beam_search(dec, dec.init_state([0]), 1, BOS, EOS, 10, beam_size=2)
    (best,) = beam
    assert best.tokens == [B, EOS]
    assert best.log_prob == pytest.approx(math.log(0.4) + math.log(0.9))
    assert best.score == pytest.approx(best.log_prob)  # no length penalty
    torch.testing.assert_close(best.attn, _expected_attn(best.tokens))


def test_n_best_are_ordered_with_exact_scores():
    dec = FakeDecoder([classic])
    (hyps,) = beam_search(dec, dec.init_state([0]), 1, BOS, EOS, 10, beam_size=3, n_best=3)
    assert len(hyps) == 3
    assert [h.tokens for h in hyps[:2]] == [[B, EOS], [A, EOS]]
    assert hyps[2].tokens in ([A, A, EOS], [A, B, EOS])
    expected = [math.log(0.4 * 0.9), math.log(0.6 * 0.4), math.log(0.6 * 0.3 * 0.5)]
    assert [h.score for h in hyps] == pytest.approx(expected)
    assert [h.log_prob for h in hyps] == pytest.approx(expected)
    for h in hyps:
        torch.testing.assert_close(h.attn, _expected_attn(h.tokens))


def test_length_penalty_values():
    assert length_penalty(1, 0.0) == 1.0
    assert length_penalty(1, 1.0) == pytest.approx(1.0)
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    assert length_penalty(13, 0.5) == pytest.approx(math.sqrt(3))
    assert length_penalty(10, 0.0) == 1.0
    t = length_penalty(torch.tensor([1.0, 7.0]), 2.0)
    torch.testing.assert_close(t, torch.tensor([1.0, 4.0]))
    # monotone in length for alpha > 0
    vals = [length_penalty(n, 0.6) for n in range(1, 30)]
    assert vals == sorted(vals)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_scores_are_length_normalised_log_probs(alpha):
    dec = FakeDecoder([classic])
    (hyps,) = beam_search(
        dec, dec.init_state([0]), 1, BOS, EOS, 10, beam_size=3, n_best=3, alpha=alpha
    )
    for h in hyps:
        assert h.score == pytest.approx(h.log_prob / length_penalty(len(h.tokens), alpha))
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_length_penalty_can_prefer_longer_outputs():
    # A is certain first; then EOS has 0.4 (log .4 = -0.92 for 2 tokens) while A A EOS has
    # log .3 * .5 = -1.90 for 3 tokens. With a huge alpha a longer one wins on score.
    dec = FakeDecoder([lambda p: {A: 1.0} if not p else classic((A,)) if p == (A,) else classic(p)])
    (short,) = beam_search(dec, dec.init_state([0]), 1, BOS, EOS, 10, beam_size=3, alpha=0.0)
    (long,) = beam_search(dec, dec.init_state([0]), 1, BOS, EOS, 10, beam_size=3, alpha=8.0)
    assert len(short[0].tokens) == 2
    assert len(long[0].tokens) > 2


@pytest.mark.parametrize("beam", [1, 2, 3])
def test_max_length_cap_is_respected_per_sentence(beam):
    caps = torch.tensor([1, 4, 2, 7])
    dec = FakeDecoder([endless])
    state = dec.init_state([0, 0, 0, 0])
    results = beam_search(dec, state, 4, BOS, EOS, caps, beam_size=beam, n_best=beam)
    for hyps, cap in zip(results, caps.tolist()):
        assert 1 <= len(hyps) <= beam
        for h in hyps:
            assert len(h.tokens) == cap and EOS not in h.tokens
            assert h.attn.shape == (cap, V)
    # greedy follows the most probable token at each step
    greedy = greedy_search(dec, dec.init_state([0, 0, 0, 0]), 4, BOS, EOS, caps)
    for h, cap in zip(greedy, caps.tolist()):
        assert h.tokens == [A, B] * (cap // 2) + [A] * (cap % 2)
        assert h.score == pytest.approx(
            sum(math.log(max(endless(tuple(h.tokens[:i])).values())) for i in range(cap))
        )
    # an int cap applies to every sentence
    for h in greedy_search(dec, dec.init_state([0, 0]), 2, BOS, EOS, 3):
        assert len(h.tokens) == 3


def test_mixed_batch_is_pruned_and_routed_to_the_right_sentence():
    """Sentence 0 finishes after two steps; 1 and 2 run to different caps; 3 is like 0."""
    dec = FakeDecoder([classic, endless])
    caps = torch.tensor([10, 3, 6, 10])
    results = beam_search(dec, dec.init_state([0, 1, 1, 0]), 4, BOS, EOS, caps, beam_size=2)
    assert results[0][0].tokens == [B, EOS] == results[3][0].tokens
    assert len(results[1][0].tokens) == 3 and len(results[2][0].tokens) == 6
    for hyps in results:
        torch.testing.assert_close(hyps[0].attn, _expected_attn(hyps[0].tokens))
    # each sentence alone gives the same result
    for i, (table, cap) in enumerate(zip([0, 1, 1, 0], caps.tolist())):
        (alone,) = beam_search(dec, dec.init_state([table]), 1, BOS, EOS, cap, beam_size=2)
        assert alone[0].tokens == results[i][0].tokens
        assert alone[0].score == pytest.approx(results[i][0].score)
    # finished sentences leave the batch: no steps are spent on them
    dec.rows = []
    beam_search(dec, dec.init_state([0, 1]), 2, BOS, EOS, torch.tensor([10, 10]), beam_size=2)
    assert dec.rows == [4, 4] + [2] * 8
    dec.rows = []
    greedy_search(dec, dec.init_state([0, 1, 0]), 3, BOS, EOS, torch.tensor([10, 6, 10]))
    assert dec.rows == [3, 3] + [1] * 4


# --------------------------------------------------------------------------- real models

LENS = [7, 3, 5, 1, 6, 2]
VOCAB = 15


def _model(attention, eos_bias=1.5, device="cpu", **kw):
    """A tiny model on ``device``: initialised (from the global CPU generator) and biased on
    the CPU, then moved, so it has the same weights on every device."""
    model = make_model(VOCAB, attention=attention, **kw)
    with torch.no_grad():  # make EOS likely enough that some outputs end before their cap
        model.decoder.out.bias[EOS] += eos_bias
    return model.to(device)


def _batch(seed, device, caps):
    """random_batch drawn on the CPU (a torch.Generator belongs to one device) and moved to
    the model's device, with the output caps there too."""
    src, lens = random_batch(LENS, VOCAB, torch.Generator().manual_seed(seed))
    return src.to(device), lens.to(device), torch.tensor(caps, device=device)


@pytest.mark.parametrize(
    "attention,rnn", [("additive", "gru"), ("dot", "lstm"), ("location", "gru"), ("none", "lstm")]
)
def test_beam_one_equals_greedy(attention, rnn, device):
    model = _model(attention, rnn_type=rnn, device=device)
    src, lens, caps = _batch(1, device, [9, 4, 6, 2, 8, 3])
    g = greedy_search(model.decoder, model.start(src, lens), len(LENS), BOS, EOS, caps)
    b = beam_search(model.decoder, model.start(src, lens), len(LENS), BOS, EOS, caps, beam_size=1)
    ended = 0
    for gh, (bh,) in zip(g, b):
        assert gh.tokens == bh.tokens
        assert gh.score == pytest.approx(bh.score, abs=1e-4)
        assert gh.log_prob == pytest.approx(bh.log_prob, abs=1e-4)
        ended += gh.tokens[-1] == EOS
        if attention != "none":
            assert gh.attn.device == bh.attn.device == device  # search stays on the device
            torch.testing.assert_close(gh.attn.cpu(), bh.attn.cpu())
    assert 0 < ended  # the test covers outputs that end with EOS


@pytest.mark.parametrize("attention", ["additive", "general", "location"])
def test_beam_results_do_not_depend_on_the_batch(attention, device):
    model = _model(attention, eos_bias=1.0, device=device)
    src, lens, caps = _batch(2, device, [12, 5, 8, 3, 10, 4])
    atol = path_atol(device, 1e-5)  # one sentence vs six: CUDA kernels round differently
    batch = beam_search(
        model.decoder, model.start(src, lens), len(LENS), BOS, EOS, caps, beam_size=3, n_best=2
    )
    for i, n in enumerate(LENS):
        s_src, s_len = src[i : i + 1, :n], lens[i : i + 1]
        (alone,) = beam_search(
            model.decoder,
            model.start(s_src, s_len),
            1,
            BOS,
            EOS,
            caps[i : i + 1],
            beam_size=3,
            n_best=2,
        )
        assert [h.tokens for h in alone] == [h.tokens for h in batch[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batch[i]], abs=1e-4)
        for ha, hb in zip(alone, batch[i]):
            torch.testing.assert_close(ha.attn.cpu(), hb.attn[:, :n].cpu(), atol=atol, rtol=0)
            assert torch.all(hb.attn[:, n:] == 0)


@pytest.mark.parametrize("beam", [2, 4])
def test_beam_attention_per_hypothesis(beam, device):
    model = _model("additive", eos_bias=0.5, device=device)
    src, lens, caps = _batch(3, device, [2, 9, 1, 5, 7, 3])
    results = beam_search(
        model.decoder,
        model.start(src, lens),
        len(LENS),
        BOS,
        EOS,
        caps,
        beam_size=beam,
        n_best=beam,
    )
    S = src.size(1)
    for i, hyps in enumerate(results):
        assert 1 <= len(hyps) <= beam
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert 1 <= len(h.tokens) <= caps[i]
            assert EOS not in h.tokens[:-1]
            assert h.attn.shape == (len(h.tokens), S)
            torch.testing.assert_close(h.attn.sum(-1).cpu(), torch.ones(len(h.tokens)))
            assert torch.all(h.attn[:, LENS[i] :] == 0)
            # the score is the model's log-probability of the hypothesis
            with torch.no_grad():
                toks = torch.tensor([[BOS] + h.tokens[:-1]], device=device)
                lp, _ = model.log_probs(src[i : i + 1, : LENS[i]], lens[i : i + 1], toks)
            ref = lp[0].gather(1, torch.tensor(h.tokens, device=device).unsqueeze(1)).sum()
            assert h.log_prob == pytest.approx(float(ref), abs=1e-4)


def test_return_info_false_gives_no_attention(device):
    model = _model("dot", device=device)
    src, lens, _ = _batch(0, device, [4] * len(LENS))
    for h in greedy_search(
        model.decoder, model.start(src, lens), len(LENS), BOS, EOS, 4, return_info=False
    ):
        assert h.attn is None
    for (h,) in beam_search(
        model.decoder,
        model.start(src, lens),
        len(LENS),
        BOS,
        EOS,
        4,
        beam_size=2,
        return_info=False,
    ):
        assert h.attn is None


# --------------------------------------------------------------------------- translator


def _translator(attention="additive"):
    symbols = [f"w{i}" for i in range(VOCAB - 4)]
    vocab = Vocab(list(Vocab.SPECIALS) + symbols)
    codec = Codec(WordTokenizer(), vocab)
    cfg = Config(data=DataConfig(toy="copy", tokenizer="word"))
    cfg.decode.batch_size = 3  # several batches, sorted by length
    return Translator(_model(attention, eos_bias=1.0), codec, codec, cfg), symbols


SEARCH_MODELS = {
    "gru-additive": {"attention": "additive"},
    "lstm-luong-general": {"attention": "general", "rnn_type": "lstm", "attention_style": "luong"},
    "gru-copy": {"attention": "additive", "copy": True},
    "transformer": {"attention": "additive", "encoder": "transformer", "decoder": "transformer",
                    "d_model": 16, "heads": 4,
                    "ff_dim": 32, "enc_layers": 2, "dec_layers": 2},
}


@pytest.mark.parametrize("kind", list(SEARCH_MODELS))
def test_int8_search_uses_a_cached_quantized_copy(kind):
    """decode.precision=int8 searches with a copy whose linear layers are int8 (the model
    itself stays fp32), made once and again only after the weights change; outputs stay
    valid, and bf16/fp32 search with the model itself."""
    tr, sym = _translator()
    tr.model = _model(eos_bias=1.0, **SEARCH_MODELS[kind])
    texts = ["w1 w2 w3 w4", "w5", "w2 w2 w6 w1 w3 w7"]
    for precision in ("int8", "bf16"):
        tr.cfg.decode.precision = precision
        for beam in (1, 3):
            for t in tr.translate(texts, beam=beam, return_attention=True):
                assert np.isfinite(t.score) and t.tgt_tokens
                assert t.attention.sum(1) == pytest.approx(1.0, abs=0.02)
    q = tr.search_model("int8")
    int8_linear = torch.ao.nn.quantized.dynamic.Linear
    assert any(isinstance(m, int8_linear) for m in q.modules())
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    # one scale per output row (as CTranslate2 quantizes its weights), not one per matrix
    for m in q.modules():
        if isinstance(m, int8_linear):
            assert m.weight().qscheme() == torch.per_channel_affine
            assert m.weight().q_per_channel_scales().numel() == m.out_features
    assert not any(isinstance(m, int8_linear) for m in tr.model.modules())
    assert tr.search_model("int8") is q
    assert tr.search_model("bf16") is tr.model and tr.search_model("fp32") is tr.model
    with torch.no_grad():  # an in-place update (as an optimizer step makes) is seen
        next(tr.model.parameters()).add_(1.0)
    assert tr.search_model("int8") is not q


def test_translator_batch_equals_one_by_one():
    tr, sym = _translator()
    g = torch.Generator().manual_seed(4)
    texts = [
        " ".join(sym[j] for j in torch.randint(0, len(sym), (n,), generator=g).tolist())
        for n in [5, 1, 8, 3, 2, 6, 4]
    ]
    texts.insert(2, "")  # empty input gives empty output and does not shift the others
    texts.append("w1 unknown-word w2")
    for beam in (1, 3):
        together = tr.translate(texts, beam=beam, return_attention=True)
        assert len(together) == len(texts)
        assert together[2].text == "" and together[2].tgt_tokens == []
        for text, t in zip(texts, together):
            (alone,) = tr.translate([text], beam=beam, return_attention=True)
            assert alone.tgt_tokens == t.tgt_tokens
            assert alone.score == pytest.approx(t.score, abs=1e-4)
            if text:
                assert t.attention.shape == (len(t.tgt_tokens), len(text.split()))
                assert t.attention.sum(1) == pytest.approx(1.0, abs=1e-5)


def test_translator_n_best_and_caps():
    tr, sym = _translator("general")
    texts = ["w1 w2 w3", "w4"]
    out = tr.translate(texts, beam=4, n_best=3)
    for t in out:
        assert 1 <= len(t.nbest) <= 3 and t.nbest[0] is t
        assert [h.score for h in t.nbest] == sorted((h.score for h in t.nbest), reverse=True)
    caps = max_output_lengths(torch.tensor([3, 1, 500]), tr.cfg.decode)
    assert caps.tolist() == [16, 12, tr.cfg.decode.max_len]
    with pytest.raises(ValueError, match="n_best"):
        tr.translate(texts, beam=2, n_best=3)


@pytest.mark.parametrize(
    "kw",
    [
        {"attention": "additive"},
        {"encoder": "transformer", "decoder": "transformer", "d_model": 16, "heads": 2,
         "ff_dim": 32, "enc_layers": 2, "dec_layers": 2},
    ],
    ids=["rnn", "transformer"],
)
def test_beam_reorder_keeps_per_source_fields(monkeypatch, kw):
    """Beam search skips re-selecting per-source state fields (encoder memory, cross K/V)
    when it reorders within a sentence's beam; the hypotheses must be exactly those of a
    search that copies every field."""
    torch.manual_seed(0)
    model = make_model(vocab=17, **kw)
    src = torch.randint(4, 17, (3, 7))
    lens = torch.tensor([7, 5, 3])

    def run():
        with torch.no_grad():
            state = model.start(src, lens)
            return beam_search(model.decoder, state, 3, BOS, EOS, 12, beam_size=4, n_best=4)

    fast = run()
    state_cls = type(model.start(src, lens))
    assert state_cls.PER_SOURCE, "the decoder state declares its per-source fields"
    monkeypatch.setattr(state_cls, "PER_SOURCE", frozenset())
    slow = run()
    for a, b in zip(fast, slow):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b])


class _CountingDecoder:
    """Wraps a decoder and counts the batch rows of every step."""

    def __init__(self, decoder):
        self.decoder, self.rows = decoder, 0

    def step(self, y, state, need_info=True):
        self.rows += y.numel()
        return self.decoder.step(y, state, need_info)


@pytest.mark.parametrize("alpha,beta,n_best", [(0.0, 0.0, 1), (0.0, 0.0, 2), (0.6, 0.0, 1),
                                               (0.0, 0.3, 1), (1.0, 0.2, 2)])
def test_beam_early_stop_is_exact(alpha, beta, n_best, device):
    """Stopping a sentence once no live hypothesis can beat its n-best finished ones gives the
    same hypotheses as waiting for beam_size of them, and (without a length penalty) fewer
    decoder rows."""
    model = _model("additive", eos_bias=0.8, device=device)
    src, lens, caps = _batch(7, device, [14, 9, 12, 6, 13, 8])
    # the two runs prune the batch at different steps, so later steps run other batch sizes:
    # on CUDA the kernels then round differently (see conftest.path_atol)
    atol = path_atol(device, 1e-5)
    runs = {}
    for early in (True, False):
        dec = _CountingDecoder(model.decoder)
        res = beam_search(dec, model.start(src, lens), len(LENS), BOS, EOS, caps, beam_size=4,
                          n_best=n_best, alpha=alpha, coverage_penalty=beta, early_stop=early)
        runs[early] = (res, dec.rows)
    (fast, fast_rows), (slow, slow_rows) = runs[True], runs[False]
    for a, b in zip(fast, slow):
        assert len(a) == len(b) == n_best
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=atol)
    assert fast_rows <= slow_rows
    if alpha == 0.0 and beta == 0.0 and n_best == 1:
        assert fast_rows < slow_rows


@pytest.mark.parametrize("alpha,beta,n_best", [(0.0, 0.0, 1), (0.0, 0.0, 2), (0.6, 0.0, 1),
                                               (1.0, 0.2, 2)])
def test_beam_stop_exact_finds_the_best_its_beam_can_reach(alpha, beta, n_best, device):
    """stop_rule="exact" (no stop at beam_size finished hypotheses) gives the same n-best as
    running every sentence to its length cap, and never a lower score than "first_k"."""
    model = _model("additive", eos_bias=0.8, device=device)
    src, lens, caps = _batch(7, device, [14, 9, 12, 6, 13, 8])
    atol = path_atol(device, 1e-5)

    def run(stop, early=True):
        return beam_search(model.decoder, model.start(src, lens), len(LENS), BOS, EOS, caps,
                           beam_size=4, n_best=n_best, alpha=alpha, coverage_penalty=beta,
                           early_stop=early, stop_rule=stop)

    exact, to_cap, first_k = run("exact"), run("exact", early=False), run("first_k")
    for a, b, c in zip(exact, to_cap, first_k):
        assert len(a) == len(b) == len(c) == n_best
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=atol)
        assert a[0].score >= c[0].score - atol
    with pytest.raises(ValueError, match="beam stop rule"):
        run("sometimes")
