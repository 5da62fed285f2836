"""Prepared (memory-mapped) corpora: same batches as the in-memory path, several weighted
files, stale folders, bad lines located across workers, exact resume, per-rank shards."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from conftest import toy_raw

from attendo import cli
from attendo.config import config_from_dict
from attendo.data import chunked
from attendo.data.batching import BatchStream, make_batches
from attendo.data.binarized import prepare
from attendo.data.corpus import CorpusError, read_parallel
from attendo.data.memmap import PreparedCorpus, StalePreparation
from attendo.data.prepare import build_codecs, encode_pairs, load_corpora
from attendo.data.toy import toy_task
from attendo.train import Trainer, resume


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _corpus(tmp_path, name, n, seed):
    src, tgt = toy_task("reverse", n, seed, max_len=6)
    return _write(tmp_path / f"{name}.src", src), _write(tmp_path / f"{name}.tgt", tgt)


def _cfg(tmp_path, out="run", **data):
    raw = toy_raw(tmp_path / out)
    raw["data"] = {"tokenizer": "word", "vocab_size": 100, **data}
    raw["model"].update(emb_dim=16, enc_hidden=32, dec_hidden=32)
    raw["train"].update(max_steps=6, valid_every=3, log_every=1, seed=3)
    return config_from_dict(raw)


def _reference_make_batches(src_lens, tgt_lens, batch_size, batch_type, shuffle, seed, epoch):
    """The list-based make_batches the numpy one replaced (its results must not change)."""
    n = len(src_lens)
    tl = tgt_lens if tgt_lens is not None else [0] * n
    cost = [max(s, t + 1 if tgt_lens is not None else 0, 1) for s, t in zip(src_lens, tl)]

    def cut(order):
        batches, cur, cur_max = [], [], 0
        for i in order:
            if batch_type == "sentences":
                if len(cur) == batch_size:
                    batches.append(cur)
                    cur = []
                cur.append(i)
                continue
            new_max = max(cur_max, cost[i])
            if cur and new_max * (len(cur) + 1) > batch_size:
                batches.append(cur)
                cur, new_max = [], cost[i]
            cur.append(i)
            cur_max = new_max
        return batches + ([cur] if cur else [])

    if not shuffle:
        return cut(sorted(range(n), key=lambda i: (-src_lens[i], -tl[i])))
    rng = random.Random((seed << 32) | epoch)
    perm = list(range(n))
    rng.shuffle(perm)
    per = batch_size if batch_type == "sentences" else max(1, batch_size * n // sum(cost))
    out = []
    for start in range(0, n, 100 * per):
        out.extend(cut(sorted(perm[start : start + 100 * per], key=lambda i: (src_lens[i], tl[i]))))
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("batch_type,size", [("sentences", 7), ("tokens", 60)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_numpy_make_batches_equals_the_list_version(batch_type, size, shuffle):
    r = random.Random(0)
    src = [r.randint(0, 30) for _ in range(3000)]
    tgt = [r.randint(0, 30) for _ in range(3000)]
    for tl in (tgt, None):
        got = make_batches(src, tl, batch_size=size, batch_type=batch_type, shuffle=shuffle,
                           seed=4, epoch=2)
        assert got == _reference_make_batches(src, tl, size, batch_type, shuffle, 4, 2)


def test_prepared_views_equal_in_memory_encoding(tmp_path):
    s, t = _corpus(tmp_path, "a", 300, 0)
    for tok in ("bpe", "word", "char"):
        cfg = _cfg(tmp_path, train_src=s, train_tgt=t, tokenizer=tok, vocab_size=40,
                   max_len=8, max_ratio=1.5)
        prepare(cfg.data, tmp_path / tok, seed=3, workers=1, progress=False)
        train, _, _ = load_corpora(cfg.data)
        sc, tc = build_codecs(cfg.data, train, seed=3)
        src_ids, tgt_ids, kept = encode_pairs(train, sc, tc, 8, 1.5)
        p = PreparedCorpus(tmp_path / tok, cfg.data)
        ps, pt = p.codecs()
        assert (ps.vocab, pt.vocab) == (sc.vocab, tc.vocab)
        vs, vt, dropped = p.training_views(8, 1.5)
        assert dropped == 300 - len(kept)
        assert [vs[i] for i in range(len(vs))] == src_ids
        assert [vt[i] for i in range(len(vt))] == tgt_ids
        assert list(vs.lengths) == [len(x) for x in src_ids]


def _losses(out):
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["type"] == "train"]


def test_training_on_prepared_data_equals_in_memory(tmp_path):
    s, t = _corpus(tmp_path, "a", 300, 0)
    Trainer(_cfg(tmp_path, "mem", train_src=s, train_tgt=t)).run()
    cfg = _cfg(tmp_path, "prep", train_src=s, train_tgt=t, prepared=str(tmp_path / "p"))
    Trainer(cfg).run()  # prepares into data.prepared first
    assert (tmp_path / "p" / "manifest.json").exists()
    assert len(_losses(tmp_path / "mem")) == 6
    assert _losses(tmp_path / "prep") == _losses(tmp_path / "mem")


def test_resume_mid_epoch_on_prepared_data_is_exact(tmp_path):
    s, t = _corpus(tmp_path, "a", 300, 0)
    Trainer(_cfg(tmp_path, "ref", train_src=[s], train_tgt=[t])).run()
    cfg = _cfg(tmp_path, "run", train_src=[s], train_tgt=[t])
    cfg.train.max_steps = 3
    Trainer(cfg).run()
    resume(tmp_path / "run", ["train.max_steps=6"])
    assert (tmp_path / "run" / "prepared" / "manifest.json").exists()  # a list: prepared
    assert len(_losses(tmp_path / "ref")) == 6
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("ref", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_several_files_globs_and_weights(tmp_path):
    (tmp_path / "big").mkdir()
    for i in range(2):
        _corpus(tmp_path / "big", f"part{i}", 100, i)
    s, t = _corpus(tmp_path, "small", 30, 5)
    cfg = _cfg(tmp_path, train_src=[str(tmp_path / "big" / "*.src"), s],
               train_tgt=[str(tmp_path / "big" / "*.tgt"), t], train_weights=[1, 2])
    m = prepare(cfg.data, tmp_path / "p", workers=1, progress=False)
    assert [c["pairs"] for c in m["corpora"]] == [100, 100, 30]
    assert [c["src"]["path"].rsplit("/", 1)[1] for c in m["corpora"]] == [
        "part0.src", "part1.src", "small.src"]
    p = PreparedCorpus(tmp_path / "p", cfg.data)
    vs, vt, _ = p.training_views(0, 0, [1, 2])
    assert len(vs) == 260
    stream = BatchStream(vs, vt, 16, "sentences", seed=0)
    seen = [i for b in stream.batches() for i in b]
    small = [vs.index[i] for i in seen if vs.index[i] >= 200]
    assert sorted(small) == sorted(list(range(200, 230)) * 2)  # twice per epoch


def test_stale_preparation_is_detected(tmp_path):
    s, t = _corpus(tmp_path, "a", 50, 0)
    cfg = _cfg(tmp_path, train_src=s, train_tgt=t)
    prepare(cfg.data, tmp_path / "p", workers=1, progress=False)
    PreparedCorpus(tmp_path / "p", cfg.data)  # fresh
    with pytest.raises(StalePreparation, match="data.vocab_size"):
        PreparedCorpus(tmp_path / "p", _cfg(tmp_path, train_src=s, train_tgt=t,
                                            vocab_size=50).data)
    with open(t, "a", encoding="utf-8") as f:
        f.write("one more\n")
    with pytest.raises(StalePreparation, match="a.tgt changed"):
        PreparedCorpus(tmp_path / "p", cfg.data)
    (tmp_path / "p" / "manifest.json").unlink()
    with pytest.raises(StalePreparation, match="attendo data prepare"):
        PreparedCorpus(tmp_path / "p", cfg.data)


def _with_bad_lines(tmp_path, bad_at):
    src, tgt = toy_task("reverse", 400, 1, max_len=6)
    for i in bad_at:
        src[i - 1] = "bad\x00line"
    return _write(tmp_path / "b.src", src), _write(tmp_path / "b.tgt", tgt)


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])  # found in pass 1 / in pass 2
def test_bad_line_in_a_worker_chunk_names_file_and_line(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(chunked, "CHUNK_LINES", 50)
    a = _corpus(tmp_path, "a", 120, 0)
    b = _with_bad_lines(tmp_path, [173, 301])
    cfg = _cfg(tmp_path, train_src=[a[0], b[0]], train_tgt=[a[1], b[1]], tokenizer=tokenizer)
    with pytest.raises(CorpusError, match=r"b\.src:173: control character U\+0000"):
        prepare(cfg.data, tmp_path / "p", workers=2, progress=False)


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_skipped_lines_are_counted_across_workers(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(chunked, "CHUNK_LINES", 50)
    b = _with_bad_lines(tmp_path, [3, 60, 173, 301, 400])
    cfg = _cfg(tmp_path, train_src=b[0], train_tgt=b[1], skip_bad_lines=True,
               tokenizer=tokenizer)
    m = prepare(cfg.data, tmp_path / "p", workers=2, progress=False)
    _, _, report = read_parallel(*b, skip_bad=True)
    assert (m["pairs"], m["skipped"]) == (report.n_pairs, report.n_skipped) == (395, 5)
    assert m["problems"] == report.problems


def test_line_count_mismatch_is_reported(tmp_path):
    s = _write(tmp_path / "x.src", ["a b"] * 5)
    t = _write(tmp_path / "x.tgt", ["a b"] * 4)
    with pytest.raises(CorpusError, match="has 5 lines but .* has 4 lines"):
        prepare(_cfg(tmp_path, train_src=s, train_tgt=t).data, tmp_path / "p", workers=1,
                progress=False)


def test_ranks_get_disjoint_batches(tmp_path):
    s, t = _corpus(tmp_path, "a", 200, 0)
    cfg = _cfg(tmp_path, train_src=s, train_tgt=t)
    prepare(cfg.data, tmp_path / "p", workers=1, progress=False)
    vs, vt, _ = PreparedCorpus(tmp_path / "p").training_views()
    plans = [BatchStream(vs, vt, 8, "sentences", 1, rank=r, world_size=2).batches()
             for r in range(2)]
    assert len(plans[0]) == len(plans[1]) > 0
    ids = [set(i for b in plan for i in b) for plan in plans]
    assert not ids[0] & ids[1]
    whole = BatchStream(vs, vt, 8, "sentences", 1).batches()
    assert plans[0] == whole[: len(plans[0]) * 2][0::2]


def test_cli_data_prepare(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s, t = _corpus(tmp_path, "a", 60, 0)
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"data": {"train_src": s, "train_tgt": t, "tokenizer": "word"}}))
    assert cli.main(["data", "prepare", "c.yaml", "--out", "prep", "--workers", "1",
                     "data.lowercase=true"]) == 0
    out = capsys.readouterr().out
    assert "60 pairs (0 skipped)" in out and "data.prepared=prep" in out
    m = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert m["settings"]["lowercase"] is True
    assert np.load(tmp_path / "prep" / "src.offsets.npy").shape == (61,)
    assert os.path.getsize(tmp_path / "prep" / "src.tokens.bin") == 2 * m["tokens"]["src"]
