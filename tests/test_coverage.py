"""Coverage (Tu et al. 2016; See et al. 2017) and the decode-time coverage penalty and n-gram
blocking (Wu et al. 2016): invariants on tiny models and fake decoders with known outputs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from conftest import ATTENTIONS, make_model, random_batch
from torch import Tensor

from attendo import cli
from attendo.checkpoint import ModelFileError
from attendo.config import ConfigError
from attendo.data.batching import collate
from attendo.data.vocab import Vocab
from attendo.model.coverage import coverage_loss
from attendo.model.interfaces import DecoderState
from attendo.search import beam_search, block_repeats, coverage_penalty, greedy_search
from attendo.train import Trainer
from attendo.translator import Translator

V = 13
BOS, EOS = Vocab.BOS, Vocab.EOS
SCORERS = [a for a in ATTENTIONS if a != "none"]


def _data(lens=(5, 3, 1, 4), T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    src, src_lens = random_batch(list(lens), V, g)
    tgt_in = torch.randint(4, V, (len(lens), T), generator=g)
    tgt_in[:, 0] = BOS
    return src, src_lens, tgt_in


def _cov_model(attention="additive", **kw):
    model = make_model(V, attention=attention, coverage=True, **kw)
    with torch.no_grad():  # a clearly non-zero coverage weight, so coverage changes the scores
        model.decoder.attention.scorer.w_c.fill_(-2.0)
    return model


def _step_all(model, tgt_in, state):
    lps, attns, covs = [], [], []
    for t in range(tgt_in.size(1)):
        lp, state, info = model.decoder.step(tgt_in[:, t], state)
        lps.append(lp)
        attns.append(info["attn"])
        covs.append(info["coverage"])
    return torch.stack(lps, 1), torch.stack(attns, 1), torch.stack(covs, 1), state


# --------------------------------------------------------------------------- the vector


@pytest.mark.parametrize("style", ["bahdanau", "luong"])
@pytest.mark.parametrize("attention", SCORERS)
def test_coverage_is_the_running_sum_and_forward_equals_stepping(attention, style):
    model = _cov_model(attention, attention_style=style, rnn_type="lstm", dropout=0.3)
    src, src_lens, tgt_in = _data()
    with torch.no_grad():
        lp_step, attn, cov, state = _step_all(model, tgt_in, model.start(src, src_lens))
        lp_tf, info = model.log_probs(src, src_lens, tgt_in)
    # coverage before step i is the sum of the attention of steps < i; the state holds all
    expected = torch.cumsum(attn, 1) - attn
    torch.testing.assert_close(cov, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(state.cov, attn.sum(1), atol=1e-6, rtol=0)
    assert torch.all(cov[:, 0] == 0)
    pad = (torch.arange(src.size(1))[None, :] >= src_lens[:, None]).unsqueeze(1).expand_as(cov)
    assert torch.all(cov[pad] == 0)
    # the teacher-forced pass gives the same coverage, attention and distribution
    torch.testing.assert_close(info["coverage"], cov, atol=1e-5, rtol=0)
    torch.testing.assert_close(info["attn"], attn, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp_tf, lp_step, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ["additive", "dot"])
def test_a_coverage_window_sees_the_neighbours_coverage(attention):
    """model.coverage_window k: position j's score moves with the coverage of j-r..j+r only
    (a filter over the coverage vector), and stepping still equals teacher forcing."""
    from attendo.model.coverage import add_to_features, add_to_scores

    cov = torch.zeros(1, 1, 7)
    cov[0, 0, 3] = 1.0  # only position 3 has been attended
    w = torch.arange(1.0, 4.0)  # (k=3,): weights of cov_{j-1}, cov_j, cov_{j+1}
    e = add_to_scores(torch.zeros(1, 1, 7), w, cov)[0, 0]
    # j=2 sees it as its right neighbour (w[2]); j=0's left neighbour, before the start,
    # counts as read (w[0]): where a monotonic reader begins
    assert e.tolist() == [1, 0, 3, 2, 1, 0, 0]
    f = add_to_features(torch.zeros(1, 1, 7, 2), torch.stack([w, -w]), cov)[0, 0]
    assert f[:, 0].tolist() == [1, 0, 3, 2, 1, 0, 0] and f[:, 1].tolist() == [-1, 0, -3, -2, -1, 0, 0]
    model = _cov_model(attention, coverage_window=5, dropout=0.0)
    assert model.decoder.attention.scorer.w_c.shape[-1] == 5
    src, src_lens, tgt_in = _data()
    with torch.no_grad():
        lp_step, attn, cov, _ = _step_all(model, tgt_in, model.start(src, src_lens))
        lp_tf, info = model.log_probs(src, src_lens, tgt_in)
    torch.testing.assert_close(info["attn"], attn, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp_tf, lp_step, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="odd width"):
        make_model(V, attention=attention, coverage=True, coverage_window=4)


@pytest.mark.parametrize("attention", SCORERS)
def test_coverage_enters_the_scorer(attention):
    """Changing w_c changes the attention from the second step on (not the first: cov = 0)."""
    model = _cov_model(attention)
    src, src_lens, tgt_in = _data()
    with torch.no_grad():
        for p in model.parameters():  # U(-0.1, 0.1) gives near-uniform dot-product attention
            p.mul_(8.0)
        _, a1, _, _ = _step_all(model, tgt_in, model.start(src, src_lens))
        model.decoder.attention.scorer.w_c.fill_(0.0)
        _, a0, _, _ = _step_all(model, tgt_in, model.start(src, src_lens))
    torch.testing.assert_close(a1[:, 0], a0[:, 0])
    assert not torch.allclose(a1[:, 1:], a0[:, 1:], atol=1e-4)
    # and its weight learns from the coverage loss
    model.train()
    parts = model.losses(src, src_lens, tgt_in, tgt_in.roll(-1, 1), Vocab.PAD, coverage_weight=1.0)
    parts.loss.backward()
    assert model.decoder.attention.scorer.w_c.grad is not None
    assert torch.any(model.decoder.attention.scorer.w_c.grad != 0)


def test_coverage_reorders_with_beams():
    """index_select mid-sequence (what beam search does) carries each row's coverage along."""
    model = _cov_model("additive", rnn_type="gru")
    src, src_lens, tgt_in = _data()
    idx = torch.tensor([3, 1, 1, 0])
    with torch.no_grad():
        state = model.start(src, src_lens)
        for t in range(2):
            _, state, _ = model.decoder.step(tgt_in[:, t], state)
        lp, attn, cov, _ = _step_all(model, tgt_in[:, 2:], state)
        moved = state.index_select(idx)
        torch.testing.assert_close(moved.cov, state.cov[idx])
        lp2, attn2, cov2, _ = _step_all(model, tgt_in[idx, 2:], moved)
    torch.testing.assert_close(cov2, cov[idx], atol=1e-6, rtol=0)
    torch.testing.assert_close(lp2, lp[idx], atol=1e-5, rtol=0)
    # beam search keeps coverage per hypothesis: rows are the running sums of its attention
    with torch.no_grad():
        results = beam_search(model.decoder, model.start(src, src_lens), 4, BOS, EOS, 6,
                              beam_size=3, n_best=2)
    for hyps in results:
        for h in hyps:
            torch.testing.assert_close(h.info["coverage"], torch.cumsum(h.attn, 0) - h.attn,
                                       atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- the loss


def test_coverage_loss_is_zero_without_overlap_and_hand_computed_with_it():
    # attention that moves one position per step never overlaps its own past
    attn = torch.eye(4).unsqueeze(0)  # (1, T=4, S=4)
    cov = torch.cumsum(attn, 1) - attn
    keep = torch.ones(1, 4, dtype=torch.bool)
    assert float(coverage_loss(attn, cov, keep)) == 0.0
    # attending to the same spread twice: step 2 overlaps step 1 fully
    attn = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8]]])
    cov = torch.cumsum(attn, 1) - attn
    keep = torch.ones(1, 3, dtype=torch.bool)
    # step 0: 0; step 1: min(.5,.5)+min(.5,.5) = 1; step 2: min(.2, 1.0) = 0.2
    assert float(coverage_loss(attn, cov, keep)) == pytest.approx(1.2)
    keep[0, 2] = False  # padding positions do not count
    assert float(coverage_loss(attn, cov, keep)) == pytest.approx(1.0)


def test_losses_add_lambda_times_coverage_loss():
    model = _cov_model("general")
    src, src_lens, tgt_in = _data()
    tgt_out = tgt_in.roll(-1, 1)
    tgt_out[1, 3:] = Vocab.PAD
    with torch.no_grad():
        p0 = model.losses(src, src_lens, tgt_in, tgt_out, Vocab.PAD)
        p2 = model.losses(src, src_lens, tgt_in, tgt_out, Vocab.PAD, coverage_weight=2.0)
        _, info = model(src, src_lens, tgt_in)
    assert float(p0.cov) > 0 and float(p0.cov) == pytest.approx(float(p2.cov))
    assert float(p2.loss) == pytest.approx(float(p0.loss) + 2.0 * float(p0.cov), rel=1e-6)
    keep = tgt_out != Vocab.PAD
    assert float(p0.cov) == pytest.approx(float(coverage_loss(info["attn"], info["coverage"], keep)))
    # no coverage, no coverage loss
    plain = make_model(V, attention="general")
    assert plain.losses(src, src_lens, tgt_in, tgt_out, Vocab.PAD).cov is None


def test_doubly_stochastic_form_is_hand_computed_and_needs_no_coverage_vector():
    """Show, Attend and Tell's form of the coverage loss: sum over real source positions of
    (1 - total attention)^2, measured from the attention of any attention model."""
    src, src_lens, tgt_in = _data()
    tgt_out = tgt_in.roll(-1, 1)
    tgt_out[1, 3:] = Vocab.PAD
    for model in (make_model(V, attention="general"), _cov_model("additive")):
        with torch.no_grad():
            p = model.losses(src, src_lens, tgt_in, tgt_out, Vocab.PAD, coverage_weight=0.5,
                             coverage_form="doubly_stochastic")
            p0 = model.losses(src, src_lens, tgt_in, tgt_out, Vocab.PAD,
                              coverage_form="doubly_stochastic")
            _, info = model(src, src_lens, tgt_in)
        keep = tgt_out != Vocab.PAD
        want = 0.0
        for b in range(len(src_lens)):
            total = info["attn"][b][keep[b]].sum(0)[: int(src_lens[b])]  # (S_b,)
            want += float(((1 - total) ** 2).sum())
        assert float(p.cov) == pytest.approx(want, rel=1e-5)
        assert float(p.loss) == pytest.approx(float(p0.loss) + 0.5 * want, rel=1e-5)


def test_doubly_stochastic_loss_is_zero_when_each_position_is_seen_once():
    from attendo.model.coverage import doubly_stochastic_loss

    attn = torch.eye(3).unsqueeze(0)  # (1, T=3, S=3): step i looks at position i only
    keep = torch.ones(1, 3, dtype=torch.bool)
    assert float(doubly_stochastic_loss(attn, keep, torch.zeros(1, 3, dtype=torch.bool))) == 0
    pad = torch.tensor([[False, False, True]])  # position 2 is padding: not counted
    assert float(doubly_stochastic_loss(attn[:, :2], keep[:, :2], pad)) == 0
    assert float(doubly_stochastic_loss(attn[:, :1], keep[:, :1], pad)) == 1.0  # j=1 unseen


@pytest.mark.parametrize("style", ["bahdanau", "luong"])
def test_an_open_context_gate_is_the_model_without_one(style):
    """model.context_gate: beta = sigmoid(w . query + b) scales the context; fully open it is
    the model without the gate, closed the decoder sees no context."""
    src, src_lens, tgt_in = _data()
    torch.manual_seed(0)
    plain = make_model(V, attention="additive", attention_style=style)
    gated = make_model(V, attention="additive", attention_style=style, context_gate=True)
    missing = gated.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["decoder.gate.bias", "decoder.gate.weight"]
    with torch.no_grad():
        gated.decoder.gate.weight.zero_()
        gated.decoder.gate.bias.fill_(50.0)  # beta = 1
        a, _ = plain(src, src_lens, tgt_in)
        b, _ = gated(src, src_lens, tgt_in)
        torch.testing.assert_close(a, b)
        gated.decoder.gate.bias.fill_(-50.0)  # beta = 0: the context is gone
        state = gated.start(src, src_lens)
        ctx, _ = gated.decoder._attend(state.h[:, -1], state)
    assert float(ctx.abs().max()) < 1e-20


# --------------------------------------------------------------------------- decoding


@dataclass
class TableState(DecoderState):
    prefix: Tensor  # (B, t) tokens fed so far, BOS included
    src_pad_mask: Tensor  # (B, S)


A, B = 4, 5


class TableDecoder:
    """Step probabilities and attention (over S = 3 positions, the last one padding) from a
    table keyed by the prefix: prefix -> ({token: prob}, attention row)."""

    def __init__(self, table, S=3):
        self.table, self.S = table, S

    def init_state(self, n: int) -> TableState:
        mask = torch.tensor([[False, False, True]]).expand(n, -1)
        return TableState(torch.empty(n, 0, dtype=torch.long), mask)

    def step(self, y_prev, state, need_info=True):
        prefix = torch.cat([state.prefix, y_prev.unsqueeze(1)], 1)
        lp = torch.full((len(y_prev), 6), float("-inf"))
        attn = torch.zeros(len(y_prev), self.S)
        for r in range(len(y_prev)):
            probs, row = self.table(tuple(prefix[r, 1:].tolist()))
            for tok, p in probs.items():
                lp[r, tok] = math.log(p)
            attn[r] = torch.tensor(row)
        return lp, TableState(prefix, state.src_pad_mask), {"attn": attn}


def looking_twice(prefix):
    """A then EOS is likelier (0.54) but attends to position 0 twice; B then EOS (0.36) covers
    both real positions."""
    if not prefix:
        return {A: 0.6, B: 0.4}, [1.0, 0.0, 0.0]
    if prefix == (A,):
        return {EOS: 0.9, B: 0.1}, [1.0, 0.0, 0.0]
    if prefix == (B,):
        return {EOS: 0.9, A: 0.1}, [0.0, 1.0, 0.0]
    return {EOS: 1.0}, [0.5, 0.5, 0.0]


def test_coverage_penalty_values():
    attn_sum = torch.tensor([[1.0, 0.5, 0.0], [3.0, 2.0, 0.0]])
    mask = torch.tensor([[False, False, True], [False, False, True]])
    pen = coverage_penalty(attn_sum, mask, 0.4)
    assert pen.tolist() == pytest.approx([0.4 * math.log(0.5), 0.0])  # min(., 1) caps at 0
    unmasked = coverage_penalty(attn_sum, None, 0.4)  # an unattended real position costs a lot
    assert float(unmasked[1]) == pytest.approx(0.4 * math.log(1e-10))


@pytest.mark.parametrize("beam", [2, 3])
def test_coverage_penalty_changes_the_ranking(beam):
    dec = TableDecoder(looking_twice)
    (plain,) = beam_search(dec, dec.init_state(1), 1, BOS, EOS, 5, beam_size=beam, n_best=2)
    assert plain[0].tokens == [A, EOS]
    (pen,) = beam_search(dec, dec.init_state(1), 1, BOS, EOS, 5, beam_size=beam, n_best=beam,
                         coverage_penalty=0.2)
    assert pen[0].tokens == [B, EOS]
    # the score is log P plus the penalty; log P itself is unchanged
    assert pen[0].score == pytest.approx(math.log(0.36))  # full coverage: no penalty
    assert [h.score for h in pen] == sorted((h.score for h in pen), reverse=True)
    penalised = math.log(0.54) + 0.2 * math.log(1e-10)  # position 1 never attended
    if beam == 2:  # A then EOS is the runner-up, log P unchanged, the penalty in its score
        assert [h.tokens for h in pen] == [[B, EOS], [A, EOS]]
        assert pen[1].log_prob == pytest.approx(math.log(0.54))
        assert pen[1].score == pytest.approx(penalised)
    else:  # room for the three-token outputs: both attend every position and outrank it
        assert [h.tokens for h in pen] == [[B, EOS], [A, B, EOS], [B, A, EOS]]
        assert pen[-1].score > penalised
    # greedy reports the penalised score of its (unchanged) choice
    (g,) = greedy_search(dec, dec.init_state(1), 1, BOS, EOS, 5, coverage_penalty=0.2)
    assert g.tokens == [A, EOS] and g.score == pytest.approx(penalised)
    assert g.log_prob == pytest.approx(math.log(0.54))


def _has_repeat(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def test_block_repeats_masks_exactly_the_repeating_tokens():
    hist = torch.tensor([[4, 5, 4, 6, 4], [7, 7, 7, 7, 7]])
    lp = torch.zeros(2, 9)
    out = block_repeats(lp, hist, 2, EOS)  # row 0 ends with 4: 4 5 and 4 6 were seen
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [5, 6]
    assert torch.isinf(out[1]).nonzero().flatten().tolist() == [7]
    out = block_repeats(lp, hist, 1, EOS)  # unigrams: everything seen
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [4, 5, 6]
    out = block_repeats(lp, hist, 3, EOS)  # row 0 ends with 6 4: never followed by anything
    assert not torch.isinf(out[0]).any() and torch.isinf(out[1]).nonzero().flatten().tolist() == [7]
    hist_eos = torch.tensor([[EOS, 4, EOS, 4]])
    assert not torch.isinf(block_repeats(torch.zeros(1, 6), hist_eos, 2, EOS)).any()
    assert block_repeats(lp, hist[:, :1], 2, EOS) is lp  # too short to repeat anything


@pytest.mark.parametrize("n", [1, 2, 3])
def test_block_ngram_repeat_prevents_repeats_in_greedy_and_beam(n):
    model = make_model(V, attention="dot", rnn_type="gru")
    with torch.no_grad():  # a model that loves repeating itself and rarely stops
        model.decoder.out.bias[EOS] -= 3.0
        model.decoder.out.bias[7] += 2.0
    src, lens = random_batch([6, 4, 5], V, torch.Generator().manual_seed(5))
    caps = 12 if n > 1 else V - 4
    g = greedy_search(model.decoder, model.start(src, lens), 3, BOS, EOS, caps)
    assert any(_has_repeat(h.tokens, n) for h in g)  # the test can fail
    g = greedy_search(model.decoder, model.start(src, lens), 3, BOS, EOS, caps,
                      block_ngram_repeat=n)
    b = beam_search(model.decoder, model.start(src, lens), 3, BOS, EOS, caps, beam_size=3,
                    n_best=3, block_ngram_repeat=n)
    for h in g + [h for hs in b for h in hs]:
        assert not _has_repeat(h.tokens, n), h.tokens
        assert math.isfinite(h.score)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides,key",
    [
        (("model.attention=none", "model.coverage=true"), "model.coverage"),
        (("model.decoder=transformer", "model.coverage=true"), "model.coverage"),
        (("train.coverage_loss=1.0",), "train.coverage_loss"),
        (("train.coverage_loss_form=sum",), "train.coverage_loss_form"),
        (("model.attention=none", "train.coverage_loss=1.0",
          "train.coverage_loss_form=doubly_stochastic"), "train.coverage_loss"),
        (("model.decoder=transformer", "model.context_gate=true"), "model.context_gate"),
        (("model.attention=none", "model.context_gate=true"), "model.context_gate"),
        (("model.coverage=true", "train.coverage_loss=-1"), "train.coverage_loss"),
        (("decode.coverage_penalty=-0.2",), "decode.coverage_penalty"),
        (("decode.block_ngram_repeat=-1",), "decode.block_ngram_repeat"),
    ],
)
def test_config_validation_names_the_key(toy_config, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        toy_config(*overrides)


# --------------------------------------------------------------------------- end to end


def test_training_logs_cov_loss_and_translate_uses_decode_overrides(
    toy_config, tmp_path, capsys, caplog, monkeypatch
):
    run = tmp_path / "cov"
    cfg = toy_config("model.coverage=true", "train.coverage_loss=1.0", "train.max_steps=10",
                     "train.log_every=5", "train.valid_every=10", out_dir=run)
    with caplog.at_level("INFO", logger="attendo"):
        Trainer(cfg).run()
    train_recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in train_recs if r["type"] == "train"]
    assert len(train_recs) == 2
    assert all(r["cov_loss"] >= 0 and math.isfinite(r["cov_loss"]) for r in train_recs)
    assert "cov_loss" in caplog.text
    # the model saves and loads; translations carry coverage
    tr = Translator.from_dir(run)
    (t,) = tr.translate(["a b c a b"], beam=2, return_attention=True)
    assert t.coverage is not None and t.coverage.shape == (len(t.tgt_tokens), 5)
    np_attn = torch.from_numpy(t.attention)
    torch.testing.assert_close(torch.from_numpy(t.coverage), torch.cumsum(np_attn, 0) - np_attn,
                               atol=1e-4, rtol=0)
    assert "coverage" in t.to_dict()
    # decode options from the command line: dotted decode.* overrides
    src = tmp_path / "in.txt"
    src.write_text("a b c d e f\nf e d c b a\n")
    out = tmp_path / "out.txt"
    argv = ["translate", "--model", str(run), "-i", str(src), "-o", str(out), "--beam", "3",
            "decode.block_ngram_repeat=1", "decode.coverage_penalty=0.3"]
    import attendo.translator

    # the options each beam search gets: a 10-step model's outputs are too short to show the
    # blocking by themselves
    searched = []
    real = attendo.translator.beam_search

    def spy(*args, **kw):
        searched.append((kw["beam_size"], kw["block_ngram_repeat"], kw["coverage_penalty"]))
        return real(*args, **kw)

    monkeypatch.setattr(attendo.translator, "beam_search", spy)
    assert cli.main(argv) == 0
    assert searched and set(searched) == {(3, 1, 0.3)}
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        words = line.split()
        assert len(words) == len(set(words))  # no word twice
    assert cli.main(["translate", "--model", str(run), "-i", str(src), "model.copy=true"]) == 2
    assert "only decode.*" in capsys.readouterr().err
    assert cli.main(["translate", "--model", str(run), "-i", str(src),
                     "decode.block_ngram_repeat=-2"]) == 2
    assert "decode.block_ngram_repeat" in capsys.readouterr().err


def _weights(path) -> dict[str, Tensor]:
    from attendo.checkpoint import read_safetensors

    tensors, _ = read_safetensors(path)
    return {k: v for k, v in tensors.items() if not k.startswith(("optim.", "rng."))}


def test_coverage_from_step_is_a_model_without_coverage_until_then(toy_config, tmp_path):
    """See et al.'s recipe: before train.coverage_from_step the coverage weights stay exactly
    0 (so coverage changes no attention score) and there is no coverage loss; from that update
    on, coverage and its loss are on."""
    common = ["model.attention=additive", "train.valid_every=5", "train.keep_last=0",
              "model.dropout=0.0"]
    two = tmp_path / "two_phase"
    Trainer(toy_config(*common, "model.coverage=true", "train.coverage_loss=1.0",
                       "train.coverage_from_step=6", "train.max_steps=10", out_dir=two)).run()
    at5, at10 = _weights(two / "checkpoints/step-5.safetensors"), _weights(
        two / "checkpoints/step-10.safetensors")
    cov_keys = [k for k in at5 if k.endswith(".w_c")]
    assert cov_keys
    for k in cov_keys:
        assert torch.count_nonzero(at5[k]) == 0, k  # phase 1: untouched
        assert torch.count_nonzero(at10[k]) > 0, k  # phase 2: learning
    # and phase one has no coverage loss: the same run with lambda = 0 is identical to step 5
    no_loss = tmp_path / "no_loss"
    Trainer(toy_config(*common, "model.coverage=true", "train.coverage_loss=0.0",
                       "train.coverage_from_step=6", "train.max_steps=5", out_dir=no_loss)).run()
    same = _weights(no_loss / "checkpoints/step-5.safetensors")
    assert all(torch.equal(same[k], at5[k]) for k in at5)
    # w_c = 0 means e_ij + 0 * cov_ij (additive: inside the tanh): coverage changed no score
    recs = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert any(r["type"] == "train" and r["step"] == 10 for r in recs)
    with pytest.raises(ConfigError, match="train.coverage_from_step: needs model.coverage"):
        toy_config("train.coverage_from_step=5")


def test_init_from_adds_coverage_to_a_trained_model(toy_config, tmp_path):
    """The fine-tuning route to See et al.'s phase two for a model trained without coverage:
    train.init_from reuses its tokenizers and weights; the new coverage weights start at 0, so
    before the first update the model scores every target exactly as the original does; then
    coverage trains."""
    common = ["model.attention=additive", "model.dropout=0.0"]
    base = tmp_path / "base"
    Trainer(toy_config(*common, "train.max_steps=10", out_dir=base)).run()
    ft = tmp_path / "ft"
    trainer = Trainer(toy_config(*common, "model.coverage=true", "train.coverage_loss=1.0",
                                 "train.max_steps=6", "train.valid_every=3",
                                 f"train.init_from={base}", out_dir=ft))
    for name in ("src.vocab.json", "tgt.vocab.json"):
        assert (ft / name).read_bytes() == (base / name).read_bytes(), name
    cov = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
           if n.endswith(".w_c")}
    assert cov and all(torch.count_nonzero(p) == 0 for p in cov.values())
    # teacher-forced log-probabilities of every target position, original against fine-tune
    original = Translator.from_dir(base).model.eval()
    src = [trainer.src.encode(t) for t in ("a b c d e f", "e f g")]
    tgt = [trainer.tgt.encode(t) for t in ("f e d c b a", "g f e")]
    b = collate(src, tgt, [0, 1])
    want, _ = original.log_probs(b.src, b.src_lens, b.tgt_in)
    got, _ = trainer.model.eval().log_probs(b.src, b.src_lens, b.tgt_in)
    trainer.model.train()
    assert torch.allclose(got, want, atol=1e-6)
    trainer.run()
    after = _weights(ft / "model.safetensors")
    assert any(torch.count_nonzero(after[k]) > 0 for k in cov)  # coverage learned
    assert trainer.state.step == 6  # a fresh count of updates, not the base model's


def test_init_from_refuses_what_does_not_fit(toy_config, tmp_path):
    base = tmp_path / "base"
    Trainer(toy_config("model.attention=additive", "model.coverage=true", "train.max_steps=2",
                       "train.valid_every=2", out_dir=base)).run()
    with pytest.raises(ConfigError, match="no model.safetensors there"):
        Trainer(toy_config(f"train.init_from={tmp_path / 'nothing'}", out_dir=tmp_path / "a"))
    # a stored tensor this model lacks (coverage dropped) or a different size is an error
    with pytest.raises(ModelFileError, match="unexpected 1"):
        Trainer(toy_config("model.attention=additive", f"train.init_from={base}",
                           out_dir=tmp_path / "b"))
    with pytest.raises(ModelFileError, match="has shape"):
        Trainer(toy_config("model.attention=additive", "model.coverage=true",
                           "model.emb_dim=16", f"train.init_from={base}", out_dir=tmp_path / "c"))
    with pytest.raises(ConfigError, match="data.lowercase: False, this config has True"):
        Trainer(toy_config("model.attention=additive", "model.coverage=true",
                           "data.lowercase=true", f"train.init_from={base}",
                           out_dir=tmp_path / "d"))
    with pytest.raises(ConfigError, match="train.init_from: is train.out_dir"):
        toy_config(f"train.init_from={base}", out_dir=base)
