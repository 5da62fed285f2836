"""Sampling, forced prefixes, lexical constraints and unknown-word replacement (issue 32):
invariants of the searches on tiny random models, and of the Translator on a trained toy
model."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from conftest import make_model, random_batch

from attendo.constraints import OutputRules
from attendo.data.corpus import CorpusError
from attendo.data.vocab import Vocab
from attendo.errors import UsageError
from attendo.search import Sampling, beam_search, greedy_search, sample_search
from attendo.translator import Translator
from attendo.unk import load_dictionary, replace_unknowns, source_word

BOS, EOS = Vocab.BOS, Vocab.EOS
ARCHS = {
    "rnn": {},
    "transformer": {"encoder": "transformer", "decoder": "transformer", "d_model": 16,
                    "heads": 2, "ff_dim": 16, "enc_layers": 1, "dec_layers": 1},
}


def contains(tokens: list[int], phrase: list[int]) -> bool:
    return any(tokens[j : j + len(phrase)] == phrase for j in range(len(tokens)))


@pytest.fixture(params=sorted(ARCHS))
def arch(request):
    torch.manual_seed(0)
    m = make_model(vocab=30, **ARCHS[request.param])
    src, lens = random_batch([5, 3, 7, 4], 30, torch.Generator().manual_seed(1))
    return m, src, lens


def test_top_k_one_sampling_equals_greedy_and_seeds_reproduce(arch):
    m, src, lens = arch
    greedy = greedy_search(m.decoder, m.start(src, lens), 4, BOS, EOS, 12)
    drawn = sample_search(m.decoder, m.start(src, lens), 4, BOS, EOS, 12,
                          Sampling(top_k=1, n=3, seed=7))
    for g, hs in zip(greedy, drawn):
        assert len(hs) == 3
        for h in hs:
            assert h.tokens == g.tokens
            assert h.log_prob == pytest.approx(g.log_prob, abs=1e-5)

    def draw(seed):
        out = sample_search(m.decoder, m.start(src, lens), 4, BOS, EOS, 12,
                            Sampling(temperature=2.0, n=4, seed=seed))
        return [[h.tokens for h in hs] for hs in out]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)  # 16 draws from a flat distribution over 30 ids


def test_sample_scores_are_model_log_probs(arch):
    """A drawn output's log_prob is its log-probability under the model, whatever the
    temperature: forced decoding of the same tokens gives it back."""
    m, src, lens = arch
    hs = sample_search(m.decoder, m.start(src, lens), 4, BOS, EOS, 10,
                       Sampling(temperature=1.7, top_p=0.9, n=2, seed=1))
    for b, group in enumerate(hs):
        assert group[0].score >= group[1].score
        for h in group:
            rules = OutputRules([h.tokens], None, 1)
            forced = greedy_search(m.decoder, m.start(src[b : b + 1], lens[b : b + 1]), 1, BOS,
                                   EOS, len(h.tokens), rules=rules)[0]
            assert forced.tokens == h.tokens
            assert forced.log_prob == pytest.approx(h.log_prob, abs=1e-4)


def test_top_p_keeps_the_smallest_set_reaching_p():
    lp = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    for p, kept in ((0.5, 1), (0.7, 2), (0.8, 2), (0.81, 3), (0.96, 4), (1.0, 4)):
        logits = Sampling(top_p=p).filter(lp)
        assert int(torch.isfinite(logits).sum()) == kept, p
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        lp = torch.randn(3, 50, generator=g).log_softmax(-1)
        p = float(torch.rand(1, generator=g)) * 0.98 + 0.01
        keep = torch.isfinite(Sampling(top_p=p).filter(lp))
        probs = lp.exp()
        for r in range(3):
            mass = probs[r][keep[r]]
            assert mass.sum() >= p - 1e-6  # reaches p
            assert mass.sum() - mass.min() < p  # and no kept token could go
            dropped = probs[r][~keep[r]]
            assert not len(dropped) or mass.min() >= dropped.max()  # the most probable


def test_top_k_and_temperature_filter():
    lp = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    assert torch.isfinite(Sampling(top_k=2).filter(lp)).sum() == 2
    hot = Sampling(temperature=2.0).filter(lp).softmax(-1)
    assert hot[0, 0] < 0.4 and hot[0, 3] > 0.1  # flatter
    for bad in ({"temperature": 0.0}, {"top_p": 0.0}, {"top_k": -1}, {"n": 0}):
        with pytest.raises(ValueError):
            Sampling(**bad)


@pytest.mark.parametrize("beam", [1, 5])
def test_prefix_and_constraints_hold_in_every_hypothesis(arch, beam):
    m, src, lens = arch
    prefixes = [[5, 5, 5], [], [6], []]
    cons = [[[7, 8]], [[9]], [[10], [11, 12, 13]], []]  # multi-piece phrases included
    rules = OutputRules(prefixes, cons, 4)
    caps = torch.tensor([6, 6, 6, 6]) + rules.extra_length()
    hyps = beam_search(m.decoder, m.start(src, lens), 4, BOS, EOS, caps, beam_size=beam,
                       n_best=beam, rules=rules, block_ngram_repeat=2)
    for b, group in enumerate(hyps):
        assert len(group) == beam
        assert [h.score for h in group] == sorted((h.score for h in group), reverse=True)
        for h in group:
            t = h.tokens
            assert t[: len(prefixes[b])] == prefixes[b]  # kept verbatim, n-gram block or not
            assert all(contains(t, c) for c in cons[b]), (b, t)
            assert t[-1] == EOS or len(t) == int(caps[b])
            assert EOS not in t[:-1]
            assert math.isfinite(h.score)
            real = h.attn[:, : int(lens[b])]
            torch.testing.assert_close(real.sum(-1), torch.ones(len(t)), atol=1e-4, rtol=0)


def test_rules_without_constraints_leave_beam_search_alone(arch):
    m, src, lens = arch
    plain = beam_search(m.decoder, m.start(src, lens), 4, BOS, EOS, 10, beam_size=3)
    ruled = beam_search(m.decoder, m.start(src, lens), 4, BOS, EOS, 10, beam_size=3,
                        rules=OutputRules(None, None, 4))
    assert [h[0].tokens for h in plain] == [h[0].tokens for h in ruled]


def test_constraint_progress_is_read_off_the_history():
    rules = OutputRules(None, [[[4, 5, 6], [7]]], 1)
    hist = torch.tensor([[9, 4, 5], [7, 4, 6], [4, 5, 6]])
    met, prog, nxt = rules.progress(hist, torch.zeros(3, dtype=torch.long))
    assert met.tolist() == [[False, False], [False, True], [True, False]]
    assert prog.tolist() == [[2, 0], [0, 0], [0, 0]]
    assert nxt[0].tolist() == [6, 7] and nxt[1, 0] == 4
    assert rules.met_count(hist, torch.zeros(3, dtype=torch.long)).tolist() == [2, 1, 3]


# -- the Translator on a trained toy model ---------------------------------------------------

@pytest.fixture(scope="module")
def translator(trained):
    return Translator.from_dir(trained)


@pytest.fixture(scope="module")
def toy_inputs(trained):
    words = [w for w in Translator.from_dir(trained).tgt.vocab.itos if w.isalnum()]
    rnd = random.Random(0)
    return [" ".join(rnd.choice(words) for _ in range(rnd.randint(2, 5))) for _ in range(16)], words


@pytest.mark.parametrize("beam", [1, 4])
def test_translator_constraints_appear_in_every_output(translator, toy_inputs, beam):
    texts, words = toy_inputs
    rnd = random.Random(1)
    cons = [[rnd.choice(words)] if i % 3 else [" ".join(rnd.sample(words, 2)), rnd.choice(words)]
            for i in range(len(texts))]
    out = translator.translate(texts, beam=beam, n_best=beam, constraints=cons,
                               return_attention=True)
    for t, cs in zip(out, cons):
        for h in t.nbest:
            for c in cs:
                assert f" {c} " in f" {h.text} ", (h.text, c)
            assert h.attention.shape == (len(h.tgt_tokens), len(t.src_tokens))


def test_translator_prefix_is_kept_and_sampling_works(translator, toy_inputs):
    texts, words = toy_inputs
    prefixes = [" ".join(words[:2]) if i % 2 else None for i in range(len(texts))]
    for kw in ({"beam": 1}, {"beam": 3}, {"sampling": Sampling(n=2, seed=3)}):
        out = translator.translate(texts, prefixes=prefixes, **kw)
        for t, p in zip(out, prefixes):
            if p:
                assert t.text.startswith(p + " ") or t.text == p
    a = translator.translate(texts, sampling=Sampling(n=2, seed=3, temperature=1.5))
    b = translator.translate(texts, sampling=Sampling(n=2, seed=3, temperature=1.5))
    assert [[h.text for h in t.nbest] for t in a] == [[h.text for h in t.nbest] for t in b]
    top1 = translator.translate(texts, sampling=Sampling(top_k=1))
    assert [t.text for t in top1] == [t.text for t in translator.translate(texts, beam=1)]


def test_translator_refuses_what_it_cannot_do(translator):
    with pytest.raises(UsageError, match="outside the target vocabulary"):
        translator.translate(["a b"], constraints=[["zzzunseen"]])
    with pytest.raises(UsageError, match="1 prefixes for 2 texts"):
        translator.translate(["a b", "c"], prefixes=["a"])
    with pytest.raises(UsageError, match="sampling"):
        translator.translate(["a b"], constraints=[["a"]], sampling=Sampling())


def test_replace_unk_writes_the_attended_source_word(trained, toy_inputs):
    """A model built to write <unk>: every output word becomes the source word at the peak of
    that step's attention (or its dictionary translation)."""
    texts, _ = toy_inputs
    t = Translator.from_dir(trained)
    with torch.no_grad():
        t.model.decoder.out.bias[Vocab.UNK] += 1e4
    plain = t.translate(texts, beam=2, return_attention=True)
    assert all(set(p.tgt_tokens[:-1]) == {"<unk>"} for p in plain if p.tgt_tokens)
    out = t.translate(texts, beam=2, replace_unk=True, return_attention=True)
    for o, text in zip(out, texts):
        src = text.split()
        body = o.tgt_tokens[:-1] if o.tgt_tokens[-1:] == ["</s>"] else o.tgt_tokens
        assert o.unk_replaced == len(body) > 0
        assert body == [src[int(np.argmax(row[: len(src)]))] for row in o.attention[: len(body)]]
        assert o.text == " ".join(body)
    first = texts[0].split()
    d = {w: w.upper() + "!" for w in first}
    out = t.translate(texts[:1], beam=2, replace_unk=True, unk_dict=d)
    assert all(w.endswith("!") for w in out[0].text.split())


def test_unk_helpers(tmp_path):
    assert source_word(["\u2581new", "port", "\u2581is"], 1) == "newport"
    assert source_word(["a", "b"], 1) == "b"
    pieces, n = replace_unknowns(["\u2581the", "<unk>"], np.array([[1, 0, 0], [0, 0.2, 0.8]]),
                                 ["\u2581in", "\u2581new", "port"])
    assert (pieces, n) == (["\u2581the", "\u2581newport"], 1)
    f = tmp_path / "lex.txt"
    f.write_text("haus house 0.2\nhaus home 0.7\nbaum tree\n", encoding="utf-8")
    assert load_dictionary(f) == {"haus": "home", "baum": "tree"}
    f.write_text("haus house\nbaum\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"lex.txt:2: expected"):
        load_dictionary(f)
    f.write_text("haus house high\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"lex.txt:1: the third column"):
        load_dictionary(f)


# -- the command line ------------------------------------------------------------------------

def test_cli_translate_structured_input_sampling_ensemble(trained, tmp_path, capsys):
    from attendo.cli import main

    m = str(trained)
    src = tmp_path / "in.jsonl"
    src.write_text('{"src": "a b c", "constraints": ["d e"]}\n{"src": "d e", "prefix": "b"}\n'
                   '{"src": "c a"}\n', encoding="utf-8")
    assert main(["translate", "--model", m, "-i", str(src), "--input-format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and " d e " in f" {lines[0]} " and lines[1].split()[0] == "b"
    tsv = tmp_path / "in.tsv"
    tsv.write_text("a b c\tc c\nd e\n", encoding="utf-8")
    assert main(["translate", "--model", m, "-i", str(tsv), "--input-format", "tsv"]) == 0
    assert capsys.readouterr().out.startswith("c c")
    sample = ["translate", "--model", m, "-i", str(tsv), "--sample", "--n-samples", "3",
              "--temperature", "1.5", "--seed", "9"]
    assert main(sample) == 0
    first = capsys.readouterr().out
    assert main(sample) == 0
    assert capsys.readouterr().out == first and len(first.splitlines()) == 6  # 3 per input
    plain = tmp_path / "plain.txt"
    plain.write_text("a b c\nd e c\n", encoding="utf-8")
    assert main(["translate", "--model", m, "-i", str(plain)]) == 0
    one = capsys.readouterr().out
    assert main(["translate", "--model", m, m, "-i", str(plain)]) == 0  # a model with itself
    assert capsys.readouterr().out == one
    assert main(["translate", "--model", m, "-i", str(plain), "--replace-unk"]) == 0


def test_cli_structured_input_errors_name_the_line(trained, tmp_path, capsys):
    from attendo.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src": "a"}\n{"src": "a", "constraint": ["b"]}\n', encoding="utf-8")
    assert main(["translate", "--model", str(trained), "-i", str(bad), "--input-format",
                 "jsonl"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert main(["translate", "--model", str(trained), "-i", str(bad), "--sample",
                 "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err


def plain_pair(tmp_path):
    p = tmp_path / "plain.txt"
    p.write_text("a b c\nd e\n", encoding="utf-8")
    return p


def test_cli_evaluate_ensemble_and_replace_unk(trained, tmp_path, capsys):
    from attendo.cli import main

    src, ref = tmp_path / "s.txt", tmp_path / "r.txt"
    src.write_text("a b c\nd e\n", encoding="utf-8")
    ref.write_text("a b c\nd e\n", encoding="utf-8")
    args = ["evaluate", "--model", str(trained), str(trained), "--src", str(src), "--ref",
            str(ref), "--json", "--replace-unk"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ppl"] is None and report["unk_replaced"] >= 0 and report["sentences"] == 2
    # constraints and sampling in evaluate too: the source file as JSONL
    src.write_text('{"src": "a b c", "constraints": ["e d"]}\n{"src": "d e"}\n',
                   encoding="utf-8")
    out = tmp_path / "hyp.txt"
    assert main(["evaluate", "--model", str(trained), "--src", str(src), "--ref", str(ref),
                 "--input-format", "jsonl", "-o", str(out), "--json"]) == 0
    assert " e d " in f" {out.read_text(encoding='utf-8').splitlines()[0]} "
    assert main(["evaluate", "--model", str(trained), "--src", str(plain_pair(tmp_path)),
                 "--ref", str(ref), "--sample", "--seed", "3", "--json"]) == 0


def test_extreme_sampling_settings_still_draw_the_best_token(arch):
    m, src, lens = arch
    greedy = greedy_search(m.decoder, m.start(src, lens), 4, BOS, EOS, 8)
    for kw in ({"temperature": 1e-45}, {"top_p": 1e-46}):
        drawn = sample_search(m.decoder, m.start(src, lens), 4, BOS, EOS, 8, Sampling(**kw))
        assert [hs[0].tokens for hs in drawn] == [g.tokens for g in greedy]


def test_a_completed_constraint_is_not_continued_by_a_word_piece(arch):
    """Subword pieces: after a constraint's last piece no piece that continues the word may
    follow (sentencepiece "s" after "\u2581informal"); with a mask of such pieces, every
    occurrence of the constraint is followed by a word start or the end."""
    m, src, lens = arch
    cont = torch.zeros(30, dtype=torch.bool)
    cont[15:] = True  # ids 15-29 continue a word
    cons = [[[7, 8]], [[9, 10]], [[11]], [[12, 5]]]
    rules = OutputRules(None, cons, 4, continuation=cont)
    caps = torch.full((4,), 8) + rules.extra_length()
    hyps = beam_search(m.decoder, m.start(src, lens), 4, BOS, EOS, caps, beam_size=4, n_best=4,
                       rules=rules)
    followers = 0
    for b, group in enumerate(hyps):
        for h in group:
            t, c = h.tokens, cons[b][0]
            ends = [j + len(c) for j in range(len(t)) if t[j : j + len(c)] == c]
            assert ends
            for e in ends:
                if e < len(t):
                    followers += 1
                    assert not cont[t[e]], (t, c)
    assert followers  # the check had something to check
