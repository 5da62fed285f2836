"""attendo.align and ``attendo align``: links from attention, pieces to words, shift,
symmetrisation, gold formats (Pharaoh, talp), AER, and the command end to end."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_raw, train_tiny

from attendo import align
from attendo import diagnostics as dg
from attendo.cli import main
from attendo.config import config_from_dict
from attendo.data.toy import toy_task
from attendo.gold import parse_alignment_line

WA_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "word_alignment_dev"


# -- gold formats ---------------------------------------------------------------------------
def test_pharaoh_round_trip(tmp_path):
    sure, possible = {(0, 0), (2, 1), (10, 3)}, {(1, 2), (0, 0)}
    line = dg.format_alignment_line(sure, possible)
    assert line == "0-0 1?2 2-1 10-3"  # sorted; a sure link also listed as possible: once
    p = tmp_path / "a.txt"
    p.write_text(line + "\n\n", encoding="utf-8")
    g = dg.read_gold_alignments(p)
    assert len(g) == 2 and g[0].sure == sure and g[0].possible == sure | possible
    assert g[1].sure == g[1].possible == set()
    assert dg.format_alignment_line(g[0].sure, g[0].possible) == line


def test_talp_is_one_based_with_p_for_possible(tmp_path):
    p = tmp_path / "a.talp"
    p.write_text("1-1 3p2 2-3\n", encoding="utf-8")
    (g,) = dg.read_gold_alignments(p, "talp")
    assert g.sure == {(0, 0), (1, 2)} and g.possible == {(0, 0), (1, 2), (2, 1)}
    assert dg.format_alignment_line(g.sure, g.possible, "talp") == "1-1 2-3 3p2"
    for bad in ("0-1", "1?2", "1-x"):  # 0 is not a talp index; '?' is Pharaoh's
        p.write_text(f"1-1\n{bad}\n", encoding="utf-8")
        with pytest.raises(dg.AlignmentFileError, match=rf"{p}:2: bad link .*'ipj'.*talp"):
            dg.read_gold_alignments(p, "talp")
    with pytest.raises(dg.AlignmentFileError, match="'i\\?j'"):  # 'p' is not Pharaoh
        parse_alignment_line("3p2", "x:1", "pharaoh")


def test_rwth_dev_gold_reads_german_first():
    """The RWTH de-en gold (PROVENANCE.md): 1-based, German index first. Its first pair
    links the final periods (German word 11 and English word 9, 1-based)."""
    if not (WA_DEV / "deen_dev.talp.gz").exists():
        pytest.skip(f"no {WA_DEV}")
    gold = dg.read_gold_alignments(WA_DEV / "deen_dev.talp.gz", "talp")
    with gzip.open(WA_DEV / "deen_dev.de.gz", "rt", encoding="utf-8") as f:
        de = [line.split() for line in f]
    with gzip.open(WA_DEV / "deen_dev.en.gz", "rt", encoding="utf-8") as f:
        en = [line.split() for line in f]
    assert len(gold) == len(de) == len(en) == 150
    dg.check_gold(gold, "deen_dev.talp", [len(s) for s in de], [len(t) for t in en])
    g = gold[0]
    assert (10, 8) in g.sure and de[0][10] == en[0][8] == "."
    assert de[0][0] == "Wir" and en[0][0] == "We" and (0, 0) in g.sure
    assert any(g.possible - g.sure for g in gold)  # the file has possible links
    with pytest.raises(dg.AlignmentFileError):  # read as Pharaoh, 'p' is a bad link
        dg.read_gold_alignments(WA_DEV / "deen_dev.talp.gz", "pharaoh")


def test_precision_recall_and_aer():
    g = dg.GoldAlignment(sure={(0, 0), (1, 1)}, possible={(0, 0), (1, 1), (2, 1)})
    r = align.score([{(0, 0), (2, 1), (2, 2)}, None], [g, g])
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(1 / 2)
    assert r["aer"] == pytest.approx(1 - (1 + 2) / (3 + 2))
    assert r["sentences"] == 1 and r["skipped"] == 1


# -- pieces, words, methods -----------------------------------------------------------------
def test_pieces_to_words_links_words_when_any_pieces_are_linked():
    sg = dg.word_groups(["\u2581un", "believ", "able", "\u2581cat"], "bpe")  # [[0,1,2],[3]]
    tg = dg.word_groups(["\u2581Kat", "ze", "\u2581un", "glaub"], "bpe")  # [[0,1],[2,3]]
    assert align.pieces_to_words({(3, 0), (3, 1), (1, 3), (2, 2)}, sg, tg) == {(1, 0), (0, 1)}
    # char: "▁" pieces separate words and belong to none
    cg = dg.word_groups(["a", "b", "\u2581", "c"], "char")
    assert align.pieces_to_words({(2, 0), (3, 0), (0, 1)}, cg, [[0], [1]]) == {(1, 0), (0, 1)}


def test_known_attention_gives_the_known_word_alignment():
    # source pieces: ▁das ▁Haus chen ; target: ▁the ▁little ▁house (+ the </s> row)
    sp, tp = ["\u2581das", "\u2581Haus", "chen"], ["\u2581the", "\u2581little", "\u2581house"]
    attn = np.array([[0.8, 0.1, 0.1],
                     [0.1, 0.2, 0.7],   # little <- chen
                     [0.1, 0.6, 0.3],   # house <- Haus (and chen above threshold 0.3)
                     [0.3, 0.4, 0.3]])  # predicts </s>: not a target word
    kinds = ("bpe", "bpe")
    assert align.word_links(attn, sp, tp, kinds, 2, 3) == {(0, 0), (1, 1), (1, 2)}
    assert align.word_links(attn, sp, tp, kinds, 2, 3, "threshold", 0.3) == \
        {(0, 0), (1, 1), (1, 2)}
    assert align.word_links(attn, sp, tp, kinds, 2, 3, "threshold", 0.75) == {(0, 0)}
    assert align.word_links(attn, sp, tp, kinds, 3, 3) is None  # 3 words claimed, 2 found
    with pytest.raises(ValueError, match="alignment method 'max'"):
        align.piece_links(attn, 3, "max")


def test_shift_reads_each_word_from_the_step_that_predicts_the_next():
    # a decoder lagging one position: row t (predicting target t) looks at source t - 1
    lag = np.array([[0.4, 0.3, 0.3],
                    [0.9, 0.05, 0.05],
                    [0.05, 0.9, 0.05],
                    [0.05, 0.05, 0.9]])  # the </s> row
    diag = {(0, 0), (1, 1), (2, 2)}
    assert align.piece_links(lag, 3, "shift") == diag
    assert align.piece_links(lag, 3, "argmax") != diag
    # an output without </s>: its last piece has no next row and keeps its own
    assert align.piece_links(lag[:3], 3, "shift") == {(0, 0), (1, 1), (1, 2)}


def test_shift_threshold_reads_the_next_row_with_the_threshold_rule():
    lag = np.array([[0.4, 0.3, 0.3],
                    [0.9, 0.05, 0.05],
                    [0.05, 0.5, 0.45],
                    [0.05, 0.05, 0.9]])  # the </s> row
    assert align.piece_links(lag, 3, "shift-threshold", 0.4) == {(0, 0), (1, 1), (2, 1),
                                                                 (2, 2)}
    assert align.piece_links(lag, 3, "shift-threshold", 0.95) == set()  # words left unlinked
    assert align.piece_links(lag, 3, "shift") == {(0, 0), (1, 1), (2, 2)}


def test_mean_rule_links_words_from_word_weights():
    # source pieces: ▁das ▁Haus chen </s>; target: ▁the ▁little ▁hou se (+ the </s> row)
    sp = ["\u2581das", "\u2581Haus", "chen", "</s>"]
    tp = ["\u2581the", "\u2581little", "\u2581hou", "se"]
    attn = np.array([[0.7, 0.1, 0.1, 0.1],
                     [0.1, 0.45, 0.4, 0.05],  # little: Haus 0.45 + chen 0.4 -> Hauschen 0.85
                     [0.3, 0.5, 0.2, 0.0],    # hou -> Haus ...
                     [0.5, 0.0, 0.1, 0.4],    # ... se -> das: "any" links house to both
                     [0.2, 0.2, 0.2, 0.4]])
    kinds = ("bpe", "bpe")
    w = align.word_weights(attn[:4], dg.word_groups(sp[:3], "bpe"), dg.word_groups(tp, "bpe"))
    np.testing.assert_allclose(w, [[0.7, 0.2], [0.1, 0.85], [0.4, 0.4]])
    assert align.word_links(attn, sp[:3], tp, kinds, 2, 3) == {(0, 0), (1, 1), (1, 2), (0, 2)}
    # ties go to the first word, as numpy's argmax does
    assert align.word_links(attn, sp[:3], tp, kinds, 2, 3, words="mean") == \
        {(0, 0), (1, 1), (0, 2)}
    assert align.word_links(attn, sp[:3], tp, kinds, 2, 3, "threshold", 0.5, words="mean") == \
        {(0, 0), (1, 1)}
    # shift rows through the same rule, row t + 1 for target piece t: the <- Hauschen 0.85;
    # little <- Haus 0.5 + chen 0.2; house <- das (0.5 + 0.2) / 2 over Hauschen (0.1 + 0.4) / 2
    assert align.word_links(attn, sp[:3], tp, kinds, 2, 3, "shift", words="mean") == \
        {(1, 0), (1, 1), (0, 2)}
    with pytest.raises(ValueError, match="pieces-to-words rule 'all'"):
        align.word_links(attn, sp[:3], tp, kinds, 2, 3, words="all")


def test_cli_lists_the_methods_and_rules_of_attendo_align():
    from attendo import cli

    subparsers = next(a for a in cli.build_parser()._actions if a.dest == "command")
    choices = {(name, a.dest): a.choices for name, p in subparsers.choices.items()
               for a in p._actions if a.choices}
    assert choices["align", "method"] == list(align.METHODS)
    assert choices["align", "words"] == list(align.WORD_RULES)
    assert choices["align", "symmetrize"] == list(align.SYMMETRIZE + align.SOFT_SYMMETRIZE)
    assert choices["evaluate", "align_method"] == choices["attend", "show_alignment"] == \
        list(align.METHODS)


def test_argmax_leaves_a_word_that_attended_only_to_the_end_unlinked():
    sp, tp = ["\u2581a", "\u2581b", "</s>"], ["\u2581x", "\u2581y"]
    attn = np.array([[0.9, 0.1, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    # y's word row is all zeros (its weight is on </s>, which is no word): no link, not a-y
    assert align.word_links(attn, sp[:2], tp, ("bpe", "bpe"), 2, 2, words="mean") == {(0, 0)}


def test_average_symmetrization_thresholds_the_mean_of_both_directions():
    fwd = np.array([[0.6, 0.4],     # (target words, source words) of the forward model
                    [0.45, 0.55]])
    rev = np.array([[0.45, 0.55],   # (source words, target words) of the reverse model
                    [0.3, 0.5]])
    # mean: t0 (0.525, 0.35), t1 (0.5, 0.525); s0-t1 is half-believed by both (0.45, 0.55):
    # it passes 0.5 although a hard intersection of the two directions' links drops it
    assert align.average(fwd, rev, "threshold", 0.5) == {(0, 0), (0, 1), (1, 1)}
    hard = align.symmetrize(align.pick_links(fwd, "threshold", 0.5),
                            align.pick_links(rev.T, "threshold", 0.5), "intersect")
    assert (0, 1) not in hard
    assert align.average(fwd, rev, "argmax") == {(0, 0), (1, 1)}
    assert align.average(fwd, rev, "threshold", 0.6) == set()
    assert align.average(np.zeros((0, 2)), np.zeros((2, 0))) == set()
    with pytest.raises(ValueError, match="not the same sentence pair"):
        align.average(fwd, rev[:1])


def test_symmetrization_on_a_hand_made_example():
    fwd = {(0, 0), (1, 1), (2, 1), (3, 3)}
    rev = {(0, 0), (1, 1), (1, 2), (4, 3)}
    assert align.symmetrize(fwd, rev, "intersect") == {(0, 0), (1, 1)}
    assert align.symmetrize(fwd, rev, "union") == fwd | rev
    # grow-diag from {0-0, 1-1}: 2-1 (source 2 unaligned) and 1-2 (target 2 unaligned) are
    # neighbours of 1-1 in the union; 3-3 and 4-3 touch no aligned link
    assert align.symmetrize(fwd, rev, "grow-diag") == {(0, 0), (1, 1), (2, 1), (1, 2)}
    # final: 3-3 (forward first) aligns source 3 and target 3; then 4-3 (source 4 unaligned)
    assert align.symmetrize(fwd, rev, "grow-diag-final") == \
        {(0, 0), (1, 1), (2, 1), (1, 2), (3, 3), (4, 3)}
    # grow-diag does not add a union link whose both words are already aligned
    assert align.symmetrize({(0, 0), (1, 1), (0, 1)}, {(0, 0), (1, 1)}, "grow-diag") == \
        {(0, 0), (1, 1)}
    with pytest.raises(ValueError):
        align.symmetrize(fwd, rev, "grow")


# -- a trained model ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reverse_model(tmp_path_factory):
    """An additive-attention model trained on the toy reverse task until its attention is the
    anti-diagonal (about 8 seconds), and 30 test pairs with their gold links."""
    from attendo.train import Trainer

    root = tmp_path_factory.mktemp("align")
    raw = toy_raw(root / "rev")
    raw["data"].update(toy="reverse", toy_train_size=1000, toy_valid_size=16,
                       toy_test_size=16, toy_max_len=6)
    raw["model"].update(emb_dim=32, enc_hidden=64, dec_hidden=64, attention="additive")
    raw["train"].update(max_steps=150, valid_every=1000, log_every=1000, lr=0.005)
    Trainer(config_from_dict(raw)).run()
    src, tgt = toy_task("reverse", 30, seed=5, max_len=6)
    (root / "test.src").write_text("\n".join(src) + "\n", encoding="utf-8")
    (root / "test.tgt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    talp = ["".join(f"{n - i}-{i + 1} " for i in range(n)).strip()
            for n in (len(s.split()) for s in src)]
    (root / "gold.talp").write_text("\n".join(talp) + "\n", encoding="utf-8")
    return {"dir": root / "rev", "root": root, "src": src, "tgt": tgt}


def _translator(d):
    from attendo.translator import Translator

    return Translator.from_dir(d)


def test_reverse_task_attention_recovers_the_anti_diagonal(reverse_model):
    t = _translator(reverse_model["dir"])
    src, tgt = reverse_model["src"], reverse_model["tgt"]
    gold = dg.read_gold_alignments(reverse_model["root"] / "gold.talp", "talp")
    r = align.score(align.align_pairs(t, src, tgt), gold)
    assert r["skipped"] == 0 and r["aer"] < 0.15, r
    # the API: links between the input's words and those of the model's own output
    out = t.translate(src[:5], return_alignment=True)
    for s, o in zip(src[:5], out):
        n, m = len(s.split()), len(o.text.split())
        assert o.alignment and all(0 <= i < n and 0 <= j < m for i, j in o.alignment)
        assert o.to_dict()["alignment"] == [list(x) for x in o.alignment]
    assert t.translate(src[:1])[0].alignment is None


def _align(capsys, *args) -> tuple[int, str, str]:
    code = main(["align", *map(str, args)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _pharaoh_ok(lines, src, tgt):
    assert len(lines) == len(src)
    for line, s, t in zip(lines, src, tgt):
        g = parse_alignment_line(line, "out")
        assert g.sure == g.possible and all(
            i < len(s.split()) and j < len(t.split()) for i, j in g.sure)


def test_cli_aligns_pairs_and_scores_them(reverse_model, capsys, tmp_path):
    m, root = reverse_model["dir"], reverse_model["root"]
    out = tmp_path / "out.align"
    code, stdout, err = _align(capsys, "--model", m, "--src", root / "test.src", "--tgt",
                               root / "test.tgt", "-o", out, "--gold", root / "gold.talp",
                               "--gold-format", "talp")
    assert code == 0, err
    lines = out.read_text(encoding="utf-8").splitlines()
    _pharaoh_ok(lines, reverse_model["src"], reverse_model["tgt"])
    assert "AER" in stdout and "precision" in stdout and "recall" in stdout
    aer = float(stdout.split()[1])
    assert aer < 0.15
    # the same gold as 0-based Pharaoh gives the same AER
    gold = dg.read_gold_alignments(root / "gold.talp", "talp")
    (tmp_path / "gold.txt").write_text(
        "".join(dg.format_alignment_line(g.sure, g.possible) + "\n" for g in gold))
    code, stdout2, _ = _align(capsys, "--model", m, "--src", root / "test.src", "--tgt",
                              root / "test.tgt", "-o", out, "--gold", tmp_path / "gold.txt")
    assert code == 0 and stdout2 == stdout
    # symmetrised with a reverse model (reversing is its own inverse: the same model)
    code, stdout3, err = _align(capsys, "--model", m, "--src", root / "test.src", "--tgt",
                                root / "test.tgt", "--reverse-model", m, "--symmetrize",
                                "intersect", "--method", "threshold", "--threshold", "0.3")
    assert code == 0, err
    _pharaoh_ok(stdout3.splitlines(), reverse_model["src"], reverse_model["tgt"])
    # soft symmetrisation of word weights, the same model both ways
    code, stdout5, err = _align(capsys, "--model", m, "--src", root / "test.src", "--tgt",
                                root / "test.tgt", "--reverse-model", m, "--symmetrize",
                                "average", "--words", "mean", "--method", "threshold",
                                "--threshold", "0.3", "--gold", root / "gold.talp",
                                "--gold-format", "talp", "-o", out)
    assert code == 0, err
    assert float(stdout5.split()[1]) < 0.15
    _pharaoh_ok(out.read_text(encoding="utf-8").splitlines(), reverse_model["src"],
                reverse_model["tgt"])
    code, _, err = _align(capsys, "--model", m, "--src", root / "test.src", "--tgt",
                          root / "test.tgt", "--reverse-model", m, "--symmetrize", "average")
    assert code == 2 and "--words mean" in err
    # the word-weight rule: one word per target word from argmax, as good on this task
    code, stdout4, err = _align(capsys, "--model", m, "--src", root / "test.src", "--tgt",
                                root / "test.tgt", "-o", out, "--gold", root / "gold.talp",
                                "--gold-format", "talp", "--words", "mean")
    assert code == 0, err
    assert float(stdout4.split()[1]) < 0.15
    lines = out.read_text(encoding="utf-8").splitlines()
    _pharaoh_ok(lines, reverse_model["src"], reverse_model["tgt"])
    assert all(len({j for _, j in parse_alignment_line(x, "out").sure}) ==
               len(parse_alignment_line(x, "out").sure) for x in lines)


def test_cli_aligns_its_own_translations(reverse_model, capsys, tmp_path):
    m, root = reverse_model["dir"], reverse_model["root"]
    hyp = tmp_path / "hyp.txt"
    code, stdout, err = _align(capsys, "--model", m, "--src", root / "test.src", "--translate",
                               "--hyp-output", hyp, "--beam", "1")
    assert code == 0, err
    hyps = hyp.read_text(encoding="utf-8").splitlines()
    _pharaoh_ok(stdout.splitlines(), reverse_model["src"], hyps)
    # averaged with a reverse model teacher-forced on those translations
    code, stdout2, err = _align(capsys, "--model", m, "--src", root / "test.src", "--translate",
                                "--beam", "1", "--reverse-model", m, "--symmetrize", "average",
                                "--words", "mean")
    assert code == 0, err
    _pharaoh_ok(stdout2.splitlines(), reverse_model["src"], hyps)
    assert any(stdout2.splitlines())


def test_cli_errors_exit_2_and_say_why(reverse_model, capsys, tmp_path):
    m, root = reverse_model["dir"], reverse_model["root"]
    short = tmp_path / "short.tgt"
    short.write_text("\n".join(reverse_model["tgt"][:7]) + "\n", encoding="utf-8")
    code, out, err = _align(capsys, "--model", m, "--src", root / "test.src", "--tgt", short)
    assert code == 2 and out == "" and str(short) in err and "line" in err
    code, _, err = _align(capsys, "--model", m, "--src", root / "test.src")
    assert code == 2 and "--tgt" in err and "--translate" in err
    code, _, err = _align(capsys, "--model", m, "--src", root / "test.src", "--tgt",
                          root / "test.tgt", "--layer", "0")
    assert code == 2 and "Transformer" in err
    bad = tmp_path / "bad.talp"
    bad.write_text("0-0\n", encoding="utf-8")
    code, _, err = _align(capsys, "--model", m, "--src", root / "test.src", "--tgt",
                          root / "test.tgt", "--gold", bad, "--gold-format", "talp")
    assert code == 2 and f"{bad}:1: bad link '0-0'" in err


def test_transformer_layers_and_heads(tmp_path, capsys):
    d = train_tiny(tmp_path / "tf", encoder="transformer", decoder="transformer", d_model=16,
                   heads=2, ff_dim=32, enc_layers=1, dec_layers=2)
    t = _translator(d)
    src, tgt = toy_task("copy", 6, seed=3, max_len=5)
    default = align.forced_attention(t, src, tgt)
    last = align.forced_attention(t, src, tgt, layer=-1)  # stepped, model's layer, mean of heads
    h0 = align.forced_attention(t, src, tgt, layer=-1, head=0)
    h1 = align.forced_attention(t, src, tgt, layer=1, head=1)
    for (sp, tp, a), (_, _, b), (_, _, c0), (_, _, c1) in zip(default, last, h0, h1):
        assert a.shape == (len(tp) + 1, len(sp))
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose((c0 + c1) / 2, a, atol=1e-5)
    with pytest.raises(ValueError, match="--layer 2: the model has 2 decoder layers"):
        align.forced_attention(t, src, tgt, layer=2)
    (tmp_path / "s").write_text("\n".join(src) + "\n")
    (tmp_path / "t").write_text("\n".join(tgt) + "\n")
    for extra in (["--tgt", tmp_path / "t"], ["--translate"]):
        code, out, err = _align(capsys, "--model", d, "--src", tmp_path / "s", "--method",
                                "shift", "--layer", "0", "--head", "1", *extra)
        assert code == 0, err
        assert len(out.splitlines()) == len(src)
