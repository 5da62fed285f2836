"""Diagnostics: the pure metric functions on hand-made inputs, and `attendo evaluate` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from conftest import toy_raw

from attendo import diagnostics as dg
from attendo.align import pick_links, piece_links, word_weights
from attendo.cli import main
from attendo.data.toy import toy_task
from attendo.data.vocab import Vocab
from attendo.gold import parse_alignment_line


# -- AER --------------------------------------------------------------------------------------
def gold(sure=(), possible=()) -> dg.GoldAlignment:
    return dg.GoldAlignment(set(sure), set(sure) | set(possible))


def test_aer_of_an_alignment_against_itself_is_zero():
    links = {(0, 0), (1, 2), (2, 1), (3, 3)}
    assert dg.aer(*dg.aer_counts(links, gold(sure=links))) == 0.0
    # possible links that the alignment also proposes do not count against it
    assert dg.aer(*dg.aer_counts(links, gold(sure={(0, 0), (1, 2)}, possible={(2, 1), (3, 3)}))) == 0.0


def test_aer_against_a_different_alignment_matches_the_hand_computed_value():
    # S = {0-0, 1-1}, P = S + {1?2}; A = {0-0, 1-2, 2-2}
    # |A&S| = 1, |A&P| = 2, |A| = 3, |S| = 2  ->  AER = 1 - (1 + 2) / (3 + 2) = 0.4
    g = gold(sure={(0, 0), (1, 1)}, possible={(1, 2)})
    counts = dg.aer_counts({(0, 0), (1, 2), (2, 2)}, g)
    assert counts == (3, 2, 1, 2)
    assert dg.aer(*counts) == pytest.approx(0.4)
    # nothing right: AER 1; nothing at all: undefined
    assert dg.aer(*dg.aer_counts({(5, 5)}, g)) == 1.0
    assert dg.aer(0, 0, 0, 0) is None


def test_pharaoh_parsing_sure_and_possible(tmp_path):
    p = tmp_path / "gold.txt"
    p.write_text("0-0 1?2 2-1\n\n3-3\n", encoding="utf-8")
    g = dg.read_gold_alignments(p)
    assert len(g) == 3
    assert g[0].sure == {(0, 0), (2, 1)} and g[0].possible == {(0, 0), (1, 2), (2, 1)}
    assert g[1].sure == set() and g[1].possible == set()  # an empty line: a sentence without links
    assert g[2].line == 3


@pytest.mark.parametrize("bad", ["0-x", "1:2", "0-1-2", "-1-0", "a?b", "1 2"])
def test_bad_gold_line_names_file_line_and_what_was_expected(tmp_path, bad):
    p = tmp_path / "gold.txt"
    p.write_text(f"0-0\n1-1\n{bad} 0-0\n", encoding="utf-8")
    with pytest.raises(dg.AlignmentFileError) as e:
        dg.read_gold_alignments(p)
    assert f"{p}:3:" in str(e.value) and "expected 'i-j'" in str(e.value)


def test_gold_links_must_fit_the_test_set(tmp_path):
    g = [parse_alignment_line("0-0 1-1", "f:1"), parse_alignment_line("0-3", "f:2")]
    g[0].line, g[1].line = 1, 2
    dg.check_gold(g, "gold.txt", [2, 2], [2, 4])  # fits
    with pytest.raises(dg.AlignmentFileError, match=r"gold.txt:2: link 0-3 is outside"):
        dg.check_gold(g, "gold.txt", [2, 2], [2, 3])
    with pytest.raises(dg.AlignmentFileError, match="2 lines, but the test set has 3 sentences"):
        dg.check_gold(g, "gold.txt", [2, 2, 2], [2, 4, 2])


def test_links_from_attention():
    """Word links (source word, target word) read off word-level weights, as attendo.align
    picks them."""
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.45, 0.45], [0.0, 0.4, 0.6]])  # (T_words, S_words)
    assert pick_links(a, "argmax", 0.5) == {(0, 0), (1, 1), (2, 2)}
    assert pick_links(a, "threshold", 0.4) == {(0, 0), (1, 1), (2, 1), (1, 2), (2, 2)}
    with pytest.raises(ValueError, match="argmax"):
        piece_links(a, 3, "union")


def test_word_groups_and_word_level_attention():
    assert dg.word_groups(["\u2581the", "\u2581cat", "s", "\u2581", "."], "bpe") == [[0], [1, 2], [3, 4]]
    assert dg.word_groups(["a", "b", "\u2581", "c"], "char") == [[0, 1], [3]]
    assert dg.word_groups(["x", "y"], "word") == [[0], [1]]
    attn = np.array([[0.5, 0.25, 0.25], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])  # 3 pieces x 3 pieces
    w = word_weights(attn, src_groups=[[0], [1, 2]], tgt_groups=[[0, 1], [2]])
    assert w.shape == (2, 2)
    np.testing.assert_allclose(w, [[0.25, 0.75], [1.0, 0.0]])
    np.testing.assert_allclose(w.sum(1), 1.0)  # rows stay distributions


# -- length buckets ---------------------------------------------------------------------------
def test_length_buckets():
    cases = {0: 0, 1: 0, 10: 0, 11: 1, 20: 1, 21: 2, 30: 2, 31: 3, 40: 3, 41: 4, 500: 4}
    for n, b in cases.items():
        assert dg.length_bucket(n) == b, n
    assert [dg.bucket_label(b) for b in dg.BUCKETS] == ["1-10", "11-20", "21-30", "31-40", "41+"]


def test_bleu_by_length_counts_and_scores():
    srcs = [" ".join(["w"] * n) for n in (3, 15, 45, 50)]
    refs = ["the cat sat on the mat today", "a dog ran in the park at noon",
            "one two three four five six", "red green blue yellow black white"]
    hyps = list(refs)
    hyps[1] = "zzz yyy xxx www vvv"
    out = dg.bleu_by_length(srcs, hyps, refs)
    assert [b["sentences"] for b in out] == [1, 1, 0, 0, 2]
    assert out[2]["bleu"] is None and out[3]["bleu"] is None  # empty buckets
    assert out[0]["bleu"] == pytest.approx(100.0) and out[4]["bleu"] == pytest.approx(100.0)
    assert out[1]["bleu"] < 1.0


def _sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "the a cat dog sat ran on in mat park red blue big small".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(4, 12)))) for _ in range(n)]


def test_bleu_statistics_give_sacrebleus_corpus_bleu():
    from attendo.metrics import bleu, bleu_from_stats, bleu_stats

    refs, hyps = _sentences(60, 1), _sentences(60, 2)
    hyps[:20] = refs[:20]
    stats = bleu_stats(hyps, refs)
    assert stats.shape == (60, 10)
    assert bleu_from_stats(stats.sum(0)) == pytest.approx(bleu(hyps, refs).score, abs=1e-9)
    assert bleu_from_stats(stats[:20].sum(0)) == pytest.approx(100.0)


def test_paired_bootstrap_of_a_system_against_itself_and_a_clearly_better_one():
    from attendo.metrics import bleu_stats, paired_bootstrap

    refs, worse = _sentences(80, 3), _sentences(80, 4)
    better = refs[:40] + worse[40:]
    a, b = bleu_stats(worse, refs), bleu_stats(better, refs)
    same = paired_bootstrap(a, a, n_samples=200)
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
    up = paired_bootstrap(a, b, n_samples=200)
    assert up["delta"] > 10 and 0 < up["low"] <= up["delta"] <= up["high"] and up["p"] < 0.05
    down = paired_bootstrap(b, a, n_samples=200)  # the same comparison the other way round
    assert down["delta"] == pytest.approx(-up["delta"]) and down["high"] < 0 and down["p"] < 0.05
    # a tiny difference on a few sentences is not called sure: its interval straddles 0
    nearly = list(worse)
    nearly[0] = refs[0]
    small = paired_bootstrap(bleu_stats(worse[:10], refs[:10]),
                             bleu_stats(nearly[:10], refs[:10]), n_samples=200)
    assert small["low"] <= 0 <= small["high"] or small["p"] >= 0.05
    with pytest.raises(ValueError, match="same non-zero number"):
        paired_bootstrap(a, b[:10])


# -- repetition -------------------------------------------------------------------------------
def test_duplicate_ngrams_on_hand_made_strings():
    toks = "the cat the cat the".split()
    assert dg.duplicate_ngrams(toks, 1) == (3, 5)  # 2 distinct of 5
    assert dg.duplicate_ngrams(toks, 2) == (2, 4)  # "the cat", "cat the" twice each
    assert dg.duplicate_ngrams(toks, 3) == (1, 3)  # "the cat the"
    assert dg.duplicate_ngrams(toks, 4) == (0, 2)
    assert dg.duplicate_ngrams(toks, 6) == (0, 0)
    rep = dg.repetition([toks, "a b c".split()])
    assert rep == {"1": 37.5, "2": 33.33, "3": 25.0, "4": 0.0}  # rounded to 2 decimals
    assert dg.repetition([["a"], ["b", "c"]])["4"] is None  # no 4-grams anywhere
    assert dg.words_13a("Hello, world.") == ["Hello", ",", "world", "."]


# -- rare and unknown words -------------------------------------------------------------------
def test_rare_word_reproduction_and_unk_rate():
    from attendo.data.tokenizers import WordTokenizer

    vocab = Vocab.build([["the"] * 10 + ["said"] * 3 + ["Merkel"]])
    classify = dg.vocab_word_classifier(WordTokenizer().encode, vocab, max_count=1)
    assert classify("the") == "common" and classify("Merkel") == "rare"
    assert classify("Obama") == "oov"
    assert dg.vocab_word_classifier(WordTokenizer().encode, vocab, 3)("said") == "rare"
    srcs = ["the Merkel said Obama Kohl", "Obama Obama the"]
    refs = ["the Merkel , said Obama.", "the Obama"]
    hyps = ["the Merkel said <unk>", "Obama said"]
    r = dg.rare_word_reproduction(srcs, refs, hyps, classify)
    # Obama (sentence 1, "Obama." in the ref) and Obama (sentence 2, counted once) are OOV and in
    # the reference; Kohl is OOV but not in the reference. Merkel is rare and reproduced.
    # The output carries over Obama in sentence 2 (in the reference) and no other OOV word.
    assert r["oov"] == {"in_ref": 2, "reproduced": 1, "share": 50.0, "in_output": 1,
                        "precision": 100.0}
    assert r["rare"] == {"in_ref": 1, "reproduced": 1, "share": 100.0, "in_output": 1,
                         "precision": 100.0}
    assert r["split"] == {"in_ref": 0, "reproduced": 0, "share": None, "in_output": 0,
                          "precision": None}
    assert r["any"]["in_ref"] == 3 and r["any"]["reproduced"] == 2 and r["any"]["in_output"] == 2
    low = dg.rare_word_reproduction(["Kohl"], ["kohl"], ["KOHL"], classify, lowercase=True)
    assert low["oov"] == {"in_ref": 1, "reproduced": 1, "share": 100.0, "in_output": 1,
                          "precision": 100.0}
    assert dg.rare_word_reproduction(["Kohl"], ["kohl"], ["KOHL"], classify)["oov"]["in_ref"] == 0
    assert dg.strip_punct('"Merkel,"') == "Merkel" and dg.strip_punct("...") == ""
    assert dg.unk_rate([["a", "<unk>", "</s>"], ["b"]]) == pytest.approx(100 / 3, abs=1e-3)
    assert dg.unk_rate([["</s>"]]) is None


def test_subword_split_words():
    pieces = {"Boston": ["\u2581Bo", "st", "on"], "the": ["\u2581the"], "cat,": ["\u2581cat", ","],
              "Zz": ["\u2581Z", "z"]}
    vocab = Vocab.build([["\u2581Bo", "st", "on", "\u2581the", "\u2581cat", ","] * 10 + ["z"]])
    classify = dg.vocab_word_classifier(pieces.__getitem__, vocab, max_count=5, subword=True)
    assert classify("Boston") == "split"  # three frequent pieces
    assert classify("cat,") == "common"  # a punctuation piece does not make a split
    assert classify("the") == "common"
    assert classify("Zz") == "oov"  # "\u2581Z" is not in the vocabulary
    pieces["Zz"] = ["z"]
    assert classify("Zz") == "rare"  # its one piece was seen once
    word = dg.vocab_word_classifier(pieces.__getitem__, vocab, max_count=5)  # not subwords
    assert word("Boston") == "common"
    r = dg.rare_word_reproduction(["Boston the"], ["in Boston ."], ["Boston"], classify)
    assert r["split"] == {"in_ref": 1, "reproduced": 1, "share": 100.0, "in_output": 1,
                          "precision": 100.0}


def test_words_carried_over_that_the_reference_lacks_lower_the_precision_not_the_recall():
    """A parrot that copies its whole source reproduces every unknown word the reference has,
    and the precision says how many of the copied words did not belong there."""
    vocab = Vocab.build([["the", "was"] * 10])
    classify = dg.vocab_word_classifier(str.split, vocab, max_count=0)
    srcs = ["Merkel wurde in Berlin gewählt", "180 Gesetze eingeführt"]
    refs = ["Merkel was elected in Berlin", "180 laws were introduced"]
    translator = ["Merkel was elected in Berlin", "180 laws were introduced"]
    parrot = srcs
    # OOV source words in the references: Merkel, in, Berlin; 180 (4 of them)
    good = dg.rare_word_reproduction(srcs, refs, translator, classify)["oov"]
    bad = dg.rare_word_reproduction(srcs, refs, parrot, classify)["oov"]
    assert good == {"in_ref": 4, "reproduced": 4, "share": 100.0, "in_output": 4,
                    "precision": 100.0}
    # the parrot reproduces the same 4 and also carries wurde, gewählt, Gesetze, eingeführt
    assert bad == {"in_ref": 4, "reproduced": 4, "share": 100.0, "in_output": 8,
                   "precision": 50.0}


def test_without_stored_counts_nothing_is_rare():
    vocab = Vocab(list(Vocab.SPECIALS) + ["a"])  # no counts (an older vocabulary file)
    classify = dg.vocab_word_classifier(lambda w: [w], vocab, 100)
    assert classify("a") == "common" and classify("b") == "oov"


# -- attention entropy ------------------------------------------------------------------------
def test_entropy_of_uniform_and_one_hot_rows():
    S = 7
    uniform = np.full((3, S), 1 / S)
    one_hot = np.eye(4, S)
    np.testing.assert_allclose(dg.row_entropy(uniform), math.log(S))
    np.testing.assert_allclose(dg.row_entropy(one_hot), 0.0, atol=1e-12)
    assert dg.attention_entropy([uniform]) == {"entropy": round(math.log(S), 4), "entropy_norm": 1.0}
    assert dg.attention_entropy([one_hot]) == {"entropy": 0.0, "entropy_norm": 0.0}
    mixed = dg.attention_entropy([uniform, one_hot, None, np.zeros((0, 0))])  # pooled over rows
    assert mixed["entropy"] == pytest.approx(3 * math.log(S) / 7, abs=1e-4)
    assert dg.attention_entropy([]) == {"entropy": None, "entropy_norm": None}


# -- attendo evaluate end to end --------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_models(tmp_path_factory):
    """Two tiny copy-task models (additive attention, none), trained for a few seconds."""
    root = tmp_path_factory.mktemp("diag")
    out = {}
    for attention in ("additive", "none"):
        raw = toy_raw(root / attention)
        raw["data"].update(toy="copy", toy_train_size=500, toy_valid_size=32, toy_test_size=32,
                           toy_max_len=5)
        raw["model"].update(emb_dim=16, enc_hidden=32, dec_hidden=32, attention=attention)
        raw["train"].update(max_steps=30, valid_every=30, log_every=10)
        cfg = root / f"{attention}.yaml"
        cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
        assert main(["train", str(cfg)]) == 0
        out[attention] = root / attention
    src_lines, ref_lines = toy_task("copy", 20, seed=123, max_len=5)
    (root / "test.src").write_text("\n".join(src_lines) + "\n", encoding="utf-8")
    (root / "test.ref").write_text("\n".join(ref_lines) + "\n", encoding="utf-8")
    # the copy task's gold alignment is the diagonal
    (root / "gold.txt").write_text(
        "".join(" ".join(f"{i}-{i}" for i in range(len(s.split()))) + "\n" for s in src_lines),
        encoding="utf-8")
    out["root"] = root
    return out


def _evaluate(capsys, model, root, *extra) -> tuple[int, str, str]:
    code = main(["evaluate", "--model", str(model), "--src", str(root / "test.src"),
                 "--ref", str(root / "test.ref"), "--beam", "2", *extra])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_evaluate_json_contains_the_diagnostics(toy_models, capsys):
    root = toy_models["root"]
    code, out, err = _evaluate(capsys, toy_models["additive"], root, "--json",
                               "--align-gold", str(root / "gold.txt"))
    assert code == 0, err
    d = json.loads(out)["diagnostics"]
    assert [b["bucket"] for b in d["bleu_by_length"]] == ["1-10", "11-20", "21-30", "31-40", "41+"]
    assert sum(b["sentences"] for b in d["bleu_by_length"]) == 20
    assert d["bleu_by_length"][0]["sentences"] == 20  # copy inputs have at most 5 words
    for side in ("output", "reference"):
        assert list(d["repetition"][side]) == ["1", "2", "3", "4"]
        assert all(v is None or 0 <= v <= 100 for v in d["repetition"][side].values())
    assert set(d["rare_words"]) >= {"oov", "rare", "split", "any", "max_count"}
    assert d["rare_words"]["max_count"] == 5
    assert 0 <= d["unk_rate"] <= 100
    att = d["attention"]
    assert 0 <= att["entropy"] <= math.log(5) + 1e-6 and 0 <= att["entropy_norm"] <= 1 + 1e-6
    assert 0 <= att["aer"] <= 1 and att["aer_sentences"] == 20 and att["aer_skipped"] == 0
    assert att["sure"] == sum(len(s.split()) for s in (root / "test.src").read_text().split("\n")
                              if s)
    assert att["links"] == att["sure"]  # argmax: one link per reference word (copy: same count)


def test_evaluate_prints_a_readable_table(toy_models, capsys):
    code, out, _ = _evaluate(capsys, toy_models["additive"], toy_models["root"],
                             "--align-method", "threshold", "--align-threshold", "0.3",
                             "--align-gold", str(toy_models["root"] / "gold.txt"))
    assert code == 0
    for text in ("BLEU by source length", "41+", "duplicate n-grams", "reference",
                 "rare", "<unk> in output", "attention entropy", "AER", "threshold 0.3"):
        assert text in out, text


def test_evaluate_without_attention_has_no_attention_diagnostics(toy_models, capsys):
    root = toy_models["root"]
    code, out, _ = _evaluate(capsys, toy_models["none"], root, "--json")
    assert code == 0
    d = json.loads(out)["diagnostics"]
    assert d["attention"] is None and len(d["bleu_by_length"]) == 5
    code, _, err = _evaluate(capsys, toy_models["none"], root, "--align-gold",
                             str(root / "gold.txt"))
    assert code == 2 and "needs attention" in err
    code, out, _ = _evaluate(capsys, toy_models["none"], root, "--json", "--no-diagnostics")
    assert code == 0 and "diagnostics" not in json.loads(out)


def test_evaluate_bad_gold_file_is_an_error_naming_the_line(toy_models, capsys, tmp_path):
    root = toy_models["root"]
    lines = (root / "gold.txt").read_text().splitlines()
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines[:4] + ["0-0 1=1"] + lines[5:]) + "\n", encoding="utf-8")
    code, _, err = _evaluate(capsys, toy_models["additive"], root, "--align-gold", str(bad))
    assert code == 2 and f"{bad}:5: bad link '1=1'" in err
    short = tmp_path / "short.txt"
    short.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    code, _, err = _evaluate(capsys, toy_models["additive"], root, "--align-gold", str(short))
    assert code == 2 and "3 lines, but the test set has 20 sentences" in err
