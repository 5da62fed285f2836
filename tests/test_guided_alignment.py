"""Guided alignment training (train.guided_alignment; Garg et al. 2019) and attendo align-prior."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_model, random_batch, toy_raw

from attendo import align
from attendo import diagnostics as dg
from attendo.config import ConfigError, config_from_dict, load_config
from attendo.data.batching import collate
from attendo.data.memmap import prepared_dir
from attendo.data.prepare import load_corpora
from attendo.data.toy import toy_task
from attendo.data.vocab import Vocab
from attendo.gold import parse_alignment_line
from attendo.model.seq2seq import alignment_loss

# -- the loss -------------------------------------------------------------------------------


def test_alignment_loss_on_a_hand_made_example():
    # B=1, T=3 rows, S=3 source positions (the last one padding)
    attn = torch.tensor([[[0.7, 0.2, 0.1], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]]])
    p = torch.tensor([[[1.0, 0.0, 0.0],   # piece 0 -> source piece 0
                       [0.5, 0.5, 0.0],   # piece 1 -> source pieces 0 and 1 (uniform)
                       [0.0, 0.0, 0.0]]])  # piece 2: unaligned, contributes nothing
    ce, n = alignment_loss(attn, p)
    assert int(n) == 2
    expect = -(math.log(0.7) + 0.5 * math.log(0.25) + 0.5 * math.log(0.5))
    assert float(ce) == pytest.approx(expect, rel=1e-6)
    assert float(ce / n) == pytest.approx(expect / 2, rel=1e-6)  # per aligned piece
    # a zero weight where a link points is a large but finite loss, never nan or inf
    ce0, _ = alignment_loss(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]]))
    assert math.isfinite(float(ce0)) and float(ce0) > 15
    with pytest.raises(ValueError, match="shape"):
        alignment_loss(attn, p[:, :2])


@pytest.mark.parametrize("decoder", ["rnn", "transformer"])
def test_losses_add_lambda_times_the_mean_per_aligned_piece(decoder):
    kw = dict(decoder=decoder, encoder=decoder, d_model=16, heads=2, ff_dim=32, enc_layers=1,
              dec_layers=2, attn_layer=-1)
    model = make_model(13, **kw)
    g = torch.Generator().manual_seed(0)
    src, lens = random_batch([4, 3], 13, g)
    tgt = [[5, 6, 7], [8, 9]]
    links = [np.array([[0, 3], [1, 2], [2, 0]]), np.array([[1, 0], [1, 1]])]
    b = collate([src[0, :4].tolist(), src[1, :3].tolist()], tgt, [0, 1], align=links)
    assert b.align.shape == (2, 4, 4)
    assert torch.allclose(b.align[1, 1], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert b.align[1, 0].sum() == 0 and b.align[:, -1].sum() == 0  # unaligned, EOS row
    if decoder == "transformer":
        model.decoder.align_head = (0, 1)  # not model.attn_layer: its own explicit path
    plain = model.losses(b.src, b.src_lens, b.tgt_in, b.tgt_out, Vocab.PAD)
    assert plain.align is None and plain.n_aligned is None
    parts = model.losses(b.src, b.src_lens, b.tgt_in, b.tgt_out, Vocab.PAD, align=b.align,
                         align_weight=0.5)
    feats, info = model(b.src, b.src_lens, b.tgt_in)
    attn = info["align_attn"] if decoder == "transformer" else info["attn"]
    if decoder == "transformer":
        assert not torch.allclose(attn, info["attn"])  # one head of layer 0, not the mean
    ce = float(alignment_loss(attn, b.align)[0].detach())
    assert int(parts.n_aligned) == 4 and float(parts.align) == pytest.approx(ce, rel=1e-5)
    n_tok = int(parts.n_tokens)
    extra = float((parts.loss - plain.loss).detach())
    assert extra == pytest.approx(0.5 * ce / 4 * n_tok, rel=1e-4)


# -- piece-level targets from word links ----------------------------------------------------


class _Codec:
    """A stand-in codec: a sentencepiece-like tokenizer with fixed splits."""

    def __init__(self, table):
        self.table = table
        self.tokenizer = SimpleNamespace(kind="bpe")

    def pieces(self, text):
        return self.table[text]


SRC = _Codec({"abc de": ["\u2581a", "bc", "\u2581de"], "f": ["\u2581f"],
              "gh": ["\u2581g", "\u2581h"]})  # "gh" splits into two words: no links
TGT = _Codec({"xy z w": ["\u2581x", "y", "\u2581z", "\u2581w"], "v": ["\u2581v"],
              "u": ["\u2581u"]})


def test_piece_targets_from_word_links_with_bpe_splits(tmp_path):
    path = tmp_path / "links.align"
    # pair 0: source word 1 (de) - target word 0 (xy); source word 0 (abc) - target word 1 (z);
    # target word 2 (w) unaligned
    path.write_text("1-0 0-1\n0-0\n0-0\n", encoding="utf-8")
    src, tgt = ["abc de", "f", "gh"], ["xy z w", "v", "u"]
    links, unmapped = align.guided_targets(path, src, tgt, [0, 2], SRC, TGT)
    assert unmapped == 1 and len(links) == 2 and links[1].shape == (0, 2)
    # both pieces of "xy" -> the piece of "de"; "z" -> both pieces of "abc"
    assert sorted(map(tuple, links[0].tolist())) == [(0, 2), (1, 2), (2, 0), (2, 1)]
    b = collate([[4, 5, 6]], [[7, 8, 9, 10]], [0], align=links[:1])
    expect = torch.tensor([[0, 0, 1], [0, 0, 1], [0.5, 0.5, 0], [0, 0, 0], [0, 0, 0]])
    assert torch.equal(b.align[0], expect)


def test_shifted_targets_move_each_link_to_the_row_whose_input_is_its_piece(tmp_path):
    path = tmp_path / "links.align"
    path.write_text("1-0 0-1\n0-0\n0-0\n", encoding="utf-8")
    src, tgt = ["abc de", "f", "gh"], ["xy z w", "v", "u"]
    plain, _ = align.guided_targets(path, src, tgt, [0], SRC, TGT)
    shifted, _ = align.guided_targets(path, src, tgt, [0], SRC, TGT, shift=True)
    assert shifted[0].tolist() == [[t + 1, s] for t, s in plain[0].tolist()]
    # target pieces xy=(7, 8), z=9, w=10: rows 1, 2 (inputs 7, 8) -> "de"; row 3 (input 9) ->
    # "abc"; row 0 (input <s>) and row 4 (input w, predicting </s>) get nothing
    b = collate([[4, 5, 6]], [[7, 8, 9, 10]], [0], align=shifted)
    expect = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 1], [0.5, 0.5, 0], [0, 0, 0]])
    assert torch.equal(b.align[0], expect)


def test_alignment_file_errors_name_the_file(tmp_path):
    path = tmp_path / "short.align"
    path.write_text("1-0\n", encoding="utf-8")
    with pytest.raises(dg.AlignmentFileError, match=r"short\.align: 1 lines.*2 pairs"):
        align.guided_targets(path, ["abc de", "f"], ["xy z w", "v"], [0, 1], SRC, TGT)
    path.write_text("1-0\n0-3\n", encoding="utf-8")
    with pytest.raises(dg.AlignmentFileError, match=r"short\.align:2: link 0-3 is outside"):
        align.guided_targets(path, ["abc de", "f"], ["xy z w", "v"], [0, 1], SRC, TGT)
    path.write_text("1-0\n0+0\n", encoding="utf-8")
    with pytest.raises(dg.AlignmentFileError, match=r"short\.align:2: bad link"):
        align.guided_targets(path, ["abc de", "f"], ["xy z w", "v"], [0, 1], SRC, TGT)


# -- config ---------------------------------------------------------------------------------


def _raw(tmp_path, **ga):
    raw = toy_raw(tmp_path / "run")
    raw["train"]["guided_alignment"] = ga
    return raw


def test_config_errors_name_the_key(tmp_path):
    f = tmp_path / "x.align"
    f.write_text("", encoding="utf-8")
    cfg = config_from_dict(_raw(tmp_path, file=str(f)))
    assert cfg.train.guided_alignment.weight > 0 and cfg.train.guided_alignment.layer is None
    assert config_from_dict(toy_raw(tmp_path)).train.guided_alignment.file == ""
    with pytest.raises(ConfigError, match=r"train\.guided_alignment\.weight: must be > 0"):
        config_from_dict(_raw(tmp_path, file=str(f), weight=-1))
    with pytest.raises(ConfigError, match=r"train\.guided_alignment\.weight: must be a finite"):
        config_from_dict(_raw(tmp_path, file=str(f), weight=float("nan")))
    with pytest.raises(ConfigError, match=r"train\.guided_alignment\.wieght: unknown key; "
                                          r"did you mean 'weight'"):
        config_from_dict(_raw(tmp_path, file=str(f), wieght=1.0))
    with pytest.raises(ConfigError, match=r"train\.guided_alignment\.layer: expected an integer or null, got 'last'"):
        config_from_dict(_raw(tmp_path, file=str(f), layer="last"))
    tf = ["model.decoder=transformer", "model.dec_layers=2", "model.heads=2", "model.d_model=16"]
    with pytest.raises(ConfigError, match=r"train\.guided_alignment\.layer: 2 is not a decoder"):
        config_from_dict(_raw(tmp_path, file=str(f), layer=2), tf)
    with pytest.raises(ConfigError, match=r"train\.guided_alignment\.head: 2 is not a head"):
        config_from_dict(_raw(tmp_path, file=str(f), head=2), tf)
    config_from_dict(_raw(tmp_path, file=str(f), layer=-2, head=1), tf)  # in range
    config_from_dict(_raw(tmp_path, file=str(f), layer=7))  # RNN decoder: ignored
    with pytest.raises(ConfigError, match=r"train\.guided_alignment\.file: .*'none'"):
        config_from_dict(_raw(tmp_path, file=str(f)), ["model.attention=none"])
    with pytest.raises(ConfigError, match=r"train\.guided_alignment\.file: .*skip_bad_lines"):
        config_from_dict(_raw(tmp_path, file=str(f)), ["data.skip_bad_lines=true"])
    # the prepared (memory-mapped) path is refused
    raw = _raw(tmp_path, file=str(f))
    raw["data"].update(toy="", train_src=str(f), train_tgt=str(f), prepared=str(tmp_path / "p"))
    with pytest.raises(ConfigError, match=r"train\.guided_alignment\.file: .*into memory"):
        prepared_dir(config_from_dict(raw))


def test_missing_alignment_file_names_the_key(tmp_path):
    from attendo.train import Trainer

    cfg = config_from_dict(_raw(tmp_path, file=str(tmp_path / "nope.align")),
                           ["data.toy_train_size=50"])
    with pytest.raises(ConfigError, match=r"train\.guided_alignment\.file: .*nope\.align"):
        Trainer(cfg)


def test_line_count_mismatch_in_training_names_the_file(tmp_path):
    from attendo.train import Trainer

    f = tmp_path / "few.align"
    f.write_text("0-0\n" * 10, encoding="utf-8")
    cfg = config_from_dict(_raw(tmp_path, file=str(f)), ["data.toy_train_size=50"])
    with pytest.raises(dg.AlignmentFileError,
                       match=r"few\.align: 10 lines, but the training corpus has \d+ pairs"):
        Trainer(cfg)


# -- training -------------------------------------------------------------------------------


def _anti_diagonal(src: list[str]) -> list[str]:
    return [" ".join(f"{i}-{n - 1 - i}" for i in range(n)) for n in (len(s.split()) for s in src)]


def _train(root: Path, guided: bool, overrides: list[str]) -> Path:
    from attendo.train import Trainer

    raw = toy_raw(root / ("guided" if guided else "plain"))
    raw["data"].update(toy_train_size=1000, toy_valid_size=16, toy_test_size=16)
    raw["train"].update(max_steps=200, valid_every=1000, log_every=50, valid_bleu=False)
    cfg = config_from_dict(raw, overrides)
    if guided:
        train, _, _ = load_corpora(cfg.data, seed=cfg.train.seed)
        links = root / "train.align"
        links.write_text("\n".join(_anti_diagonal(train.src)) + "\n", encoding="utf-8")
        cfg = config_from_dict(raw, overrides + [f"train.guided_alignment.file={links}",
                                                 "train.guided_alignment.weight=1.0"])
    Trainer(cfg).run()
    return Path(cfg.train.out_dir)


def _aer(model_dir: Path, layer=None, head=None, method="argmax") -> float:
    from attendo.translator import Translator

    src, tgt = toy_task("reverse", 40, seed=7, max_len=6)
    gold = [parse_alignment_line(x, "gold") for x in _anti_diagonal(src)]
    links = align.align_pairs(Translator.from_dir(model_dir), src, tgt, method=method,
                              layer=layer, head=head)
    r = align.score(links, gold)
    assert r["skipped"] == 0
    return r["aer"]


def _records(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def test_guided_transformer_head_learns_the_anti_diagonal(tmp_path):
    """A one-layer Transformer on the toy reverse task, 200 steps with and without guided
    alignment of head 0 to the anti-diagonal: the supervised head's AER is low and clearly
    lower than without guidance (where nothing ties a single head to the alignment)."""
    tf = ["model.encoder=transformer", "model.decoder=transformer", "model.d_model=32",
          "model.heads=2", "model.ff_dim=64", "model.enc_layers=1", "model.dec_layers=1",
          "train.lr=0.003", "model.attn_dropout=0.0"]
    guided = _train(tmp_path, True, tf)
    plain = _train(tmp_path, False, tf)
    recs = [r for r in _records(guided) if r["type"] == "train"]
    assert recs and all("align_loss" in r and math.isfinite(r["align_loss"]) for r in recs)
    assert recs[-1]["align_loss"] < recs[0]["align_loss"]
    assert all("align_loss" not in r for r in _records(plain))
    g, p = _aer(guided, 0, 0), _aer(plain, 0, 0)
    # seen on CPU: guided about 0.1, unguided about 0.37
    assert g < 0.2, (g, p)
    assert g <= p and (g < p - 0.15 or p < 0.05), (g, p)


def test_shift_guided_head_is_read_by_the_shift_method(tmp_path):
    """train.guided_alignment.shift supervises the row whose input is the aligned piece: the
    ``shift`` method then reads the anti-diagonal off the supervised head, and the unshifted
    ``argmax`` of the same head is one position off (every link wrong but the middle ones)."""
    tf = ["model.encoder=transformer", "model.decoder=transformer", "model.d_model=32",
          "model.heads=2", "model.ff_dim=64", "model.enc_layers=1", "model.dec_layers=1",
          "train.lr=0.003", "model.attn_dropout=0.0", "train.guided_alignment.shift=true"]
    guided = _train(tmp_path, True, tf)
    assert load_config(guided / "config.yaml").train.guided_alignment.shift is True
    s, a = _aer(guided, 0, 0, method="shift"), _aer(guided, 0, 0)
    assert s < 0.2, (s, a)
    assert a > s + 0.3, (s, a)


def test_guided_rnn_logs_align_loss(tmp_path):
    """The RNN decoder's attention (here the fused GRU + additive-attention path) is supervised."""
    d = _train(tmp_path, True, ["train.max_steps=30", "train.log_every=10",
                                "model.attention_style=luong"])
    recs = [r for r in _records(d) if r["type"] == "train"]
    assert len(recs) == 3 and all(r["align_loss"] > 0 for r in recs)
    assert recs[-1]["align_loss"] < recs[0]["align_loss"]


# -- attendo align-prior --------------------------------------------------------------------


def test_align_prior_without_eflomal_says_how_to_install(tmp_path, monkeypatch, capsys):
    import sys

    from attendo.cli import main

    (tmp_path / "a.src").write_text("a b\n", encoding="utf-8")
    (tmp_path / "a.tgt").write_text("b a\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "eflomal", None)  # import fails
    rc = main(["align-prior", "--src", str(tmp_path / "a.src"), "--tgt", str(tmp_path / "a.tgt"),
               "-o", str(tmp_path / "out.align")])
    assert rc == 2 and "pip install 'attendo[align]'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("eflomal") is None, reason="eflomal not installed")
def test_align_prior_writes_one_pharaoh_line_per_pair(tmp_path):
    from attendo.cli import main

    src, tgt = toy_task("reverse", 60, seed=3, max_len=6)
    tgt[0] = tgt[0].upper()  # --lowercase makes no difference to the word indices
    (tmp_path / "c.src").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "c.tgt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    out = tmp_path / "links.align"
    rc = main(["align-prior", "--src", str(tmp_path / "c.src"), "--tgt", str(tmp_path / "c.tgt"),
               "-o", str(out), "--lowercase"])
    assert rc == 0
    gold = dg.read_gold_alignments(out)
    assert len(gold) == len(src)
    dg.check_gold(gold, out, [len(s.split()) for s in src], [len(t.split()) for t in tgt])
    assert sum(len(g.sure) for g in gold) > len(src)  # links, not empty lines
    assert all(g.sure == g.possible for g in gold)  # Pharaoh sure links only
