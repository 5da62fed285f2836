"""``attendo score`` and :func:`attendo.scoring.score_pairs` (issue 32): forced decoding gives
the numbers of training's loss on the same pairs (metrics.corpus_nll), per sentence and per
target piece, for plain, copy and image models, batched or not; the command writes one line
(or JSON object) per pair."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_model
from PIL import Image as PILImage

from attendo import metrics
from attendo.cli import main
from attendo.data.prepare import Corpus, ImageCodec, encode_copy, encode_pairs
from attendo.errors import UsageError
from attendo.scoring import Scored, score_pairs
from attendo.translator import Translator

SRC = ["a b c", "d e", "j i h g f", "c c c d", "b"]
TGT = ["a b c", "d e", "f g h", "c c d", "b b"]


@pytest.fixture(scope="module")
def translator(trained) -> Translator:
    return Translator.from_dir(trained)


def _corpus_nll(tr: Translator, src: list[str], tgt: list[str]) -> tuple[float, int]:
    corpus = Corpus(src, tgt)
    src_ids, tgt_ids, kept = encode_pairs(corpus, tr.src, tr.tgt)
    assert len(kept) == len(src)  # every pair is scored
    copy = encode_copy(corpus, tr.src, tr.tgt, kept) if tr.model.copies else None
    return metrics.corpus_nll(tr.model, src_ids, tgt_ids, batch_size=2, copy=copy)


def _check_consistent(scored: list[Scored]) -> None:
    for s in scored:
        assert s.tgt_tokens[-1] == "</s>"
        assert len(s.token_log_probs) == len(s.tgt_tokens) == s.n_tokens
        assert all(x <= 0 for x in s.token_log_probs)
        assert math.isclose(sum(s.token_log_probs), s.log_prob, rel_tol=1e-6, abs_tol=1e-6)


def test_sum_of_scores_is_the_training_nll(translator):
    scored = score_pairs(translator, SRC, TGT, batch_size=3)
    _check_consistent(scored)
    nll, n = _corpus_nll(translator, SRC, TGT)
    assert sum(s.n_tokens for s in scored) == n
    total = -sum(s.log_prob for s in scored)
    assert torch.allclose(torch.tensor(total), torch.tensor(nll), rtol=1e-5, atol=0)
    # pair by pair too
    for src, tgt, s in zip(SRC, TGT, scored):
        one, _ = _corpus_nll(translator, [src], [tgt])
        assert math.isclose(-s.log_prob, one, rel_tol=1e-5)


def test_scores_do_not_depend_on_the_batch(translator):
    together = score_pairs(translator, SRC, TGT)
    alone = [score_pairs(translator, [s], [t], batch_size=1)[0] for s, t in zip(SRC, TGT)]
    for a, b in zip(together, alone):
        assert a.tgt_tokens == b.tgt_tokens and a.src_tokens == b.src_tokens
        np.testing.assert_allclose(a.token_log_probs, b.token_log_probs, atol=1e-5)


def test_tokens_empty_target_unknown_words_and_to_dict(translator):
    s, empty = score_pairs(translator, ["a b", "c d"], ["a zz b", ""])
    assert s.src_tokens == ["a", "b"]
    assert s.tgt_tokens == ["a", "<unk>", "b", "</s>"]  # as the model scores them
    assert empty.tgt_tokens == ["</s>"] and len(empty.token_log_probs) == 1
    assert empty.log_prob == empty.token_log_probs[0] < 0
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert set(d) == {"src_tokens", "tgt_tokens", "token_log_probs", "log_prob"}
    assert d["tgt_tokens"] == s.tgt_tokens and d["log_prob"] == s.log_prob


def test_sources_are_truncated_like_translation_and_eval_mode_is_kept(trained, caplog):
    tr = Translator.from_dir(trained, overrides=["decode.max_input_tokens=2"])
    tr.model.train()  # a Trainer's model: scored without dropout, and left as it was
    with caplog.at_level("WARNING", logger="attendo"):
        s = score_pairs(tr, ["a b c d"], ["a b"])[0]
    assert s.src_tokens == ["a", "b"] and "truncated" in caplog.text
    assert tr.model.training
    tr.model.eval()
    assert s.log_prob == pytest.approx(score_pairs(tr, ["a b"], ["a b"])[0].log_prob, abs=1e-6)


def test_bad_arguments_are_named(translator):
    with pytest.raises(ValueError, match="3 sources but 2 targets"):
        score_pairs(translator, ["a", "b", "c"], ["a", "b"])
    with pytest.raises(UsageError, match=r"src_texts\[1\] is empty"):
        score_pairs(translator, ["a", " "], ["a", "b"])
    with pytest.raises(ValueError, match=r"tgt_texts\[0\]"):
        score_pairs(translator, ["a"], ["a\x07"])
    assert score_pairs(translator, [], []) == []


def test_copy_model_scores_source_words_by_copying(translator):
    """An untrained pointer-generator on the trained model's vocabularies: a target word only
    the source holds ("zz") is scored as the copy (extended id), as training's loss target."""
    torch.manual_seed(0)
    model = make_model(len(translator.src.vocab), len(translator.tgt.vocab),
                       attention="additive", copy=True)
    tr = Translator(model, translator.src, translator.tgt, translator.cfg)
    src = ["a zz b", "yy c zz", "d e"]
    tgt = ["zz a", "c yy zz xx", "e"]
    scored = score_pairs(tr, src, tgt, batch_size=2)
    _check_consistent(scored)
    assert scored[0].tgt_tokens == ["zz", "a", "</s>"]
    assert scored[1].tgt_tokens == ["c", "yy", "zz", "<unk>", "</s>"]  # xx: not in the source
    nll, n = _corpus_nll(tr, src, tgt)
    assert sum(s.n_tokens for s in scored) == n
    assert -sum(s.log_prob for s in scored) == pytest.approx(nll, rel=1e-5)


def test_image_model_scores_image_paths(translator, tmp_path):
    """src_texts of an image model are image paths, read as translation reads them."""
    torch.manual_seed(0)
    model = make_model(1, len(translator.tgt.vocab), encoder="image", enc_layers=2,
                       image_pool=1, enc_hidden=16)
    tr = Translator(model, ImageCodec(height=8, channels=1), translator.tgt, translator.cfg)
    rng = np.random.default_rng(0)
    paths = []
    for i, width in enumerate((24, 40)):
        p = tmp_path / f"{i}.png"
        PILImage.fromarray(rng.integers(0, 256, (8, width), dtype=np.uint8)).save(p)
        paths.append(str(p))
    tgt = ["a b", "c d e"]
    scored = score_pairs(tr, paths, tgt)
    _check_consistent(scored)
    assert scored[0].src_tokens == [] and scored[1].tgt_tokens == ["c", "d", "e", "</s>"]
    nll, _ = _corpus_nll(tr, paths, tgt)
    assert -sum(s.log_prob for s in scored) == pytest.approx(nll, rel=1e-5)


# --------------------------------------------------------------------------- command line


def _files(tmp_path, src, tgt):
    s, t = tmp_path / "src.txt", tmp_path / "tgt.txt"
    s.write_text("".join(x + "\n" for x in src), encoding="utf-8")
    t.write_text("".join(x + "\n" for x in tgt), encoding="utf-8")
    return str(s), str(t)


def test_cli_writes_one_line_per_pair_and_a_summary(trained, translator, tmp_path, capsys):
    src, tgt = _files(tmp_path, SRC, TGT)
    out = tmp_path / "scores.txt"
    assert main(["score", "--model", str(trained), "--src", src, "--tgt", tgt,
                 "-o", str(out), "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    lines = out.read_text().splitlines()
    assert len(lines) == len(SRC)
    values = [(float(a), int(b)) for a, b in (line.split("\t") for line in lines)]
    expected = score_pairs(translator, SRC, TGT)
    for (lp, n), s in zip(values, expected):
        assert n == s.n_tokens and lp == pytest.approx(s.log_prob, abs=1e-5)
    nll, n = _corpus_nll(translator, SRC, TGT)
    assert f"{len(SRC)} pairs, {n} tokens" in err
    assert f"perplexity {metrics.perplexity(nll, n):.3f}" in err


def test_cli_json_lines(trained, tmp_path, capsys):
    src, tgt = _files(tmp_path, SRC[:2], ["a b c", ""])
    assert main(["score", "--model", str(trained), "--src", src, "--tgt", tgt, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    assert rows[0]["tgt_tokens"] == ["a", "b", "c", "</s>"] and rows[1]["tgt_tokens"] == ["</s>"]
    for r in rows:
        assert sum(r["token_log_probs"]) == pytest.approx(r["log_prob"], abs=1e-5)


def test_cli_refuses_files_of_different_lengths(trained, tmp_path, capsys):
    src, tgt = _files(tmp_path, SRC, TGT[:3])
    out = tmp_path / "scores.txt"
    assert main(["score", "--model", str(trained), "--src", src, "--tgt", tgt,
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{src} has {len(SRC)} lines but {tgt} has 3" in err
    assert not out.exists()
    src, tgt = _files(tmp_path, ["a", ""], ["a", "b"])
    assert main(["score", "--model", str(trained), "--src", src, "--tgt", tgt]) == 2
    assert f"{src}:2: empty source line" in capsys.readouterr().err
