"""Tests for attendo.data: corpora, vocabularies, tokenizers, batching, toy tasks, Multi30k."""

from __future__ import annotations

import datetime as dt
import gzip
import re
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch

from attendo.data.batch import Batch, collate
from attendo.data.batching import BatchStream, make_batches
from attendo.data.corpus import CorpusError, length_filter, read_lines, read_parallel
from attendo.data.download import MULTI30K_FILES, DownloadError, fetch_multi30k
from attendo.data.tokenizers import (
    CharTokenizer,
    SentencePieceTokenizer,
    WordTokenizer,
    build_vocab,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from attendo.data.toy import date_task, split_toy, toy_task
from attendo.data.vocab import Vocab
from attendo.utils import atomic_write_text, open_text

SHARED_MULTI30K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# --------------------------------------------------------------------------- corpus


def test_read_parallel_plain_strips_whitespace_and_crlf(tmp_path):
    src = write(tmp_path / "a.de", "  hallo welt \r\nzwei\u2028drei\n")
    tgt = write(tmp_path / "a.en", "hello world\r\ntwo three")  # no final newline
    s, t, report = read_parallel(src, tgt)
    # U+2028 must not split a line: alignment is by "\n" only.
    assert s == ["hallo welt", "zwei\u2028drei"]
    assert t == ["hello world", "two three"]
    assert (report.n_pairs, report.n_skipped, report.problems) == (2, 0, [])


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    src = write(tmp_path / "x.src", "a\nb\nc\n")
    tgt = write(tmp_path / "x.tgt", "a\n\nb\nc\n")  # an extra (empty) line
    for skip_bad in (False, True):  # never skippable, and reported instead of the empty line
        with pytest.raises(CorpusError) as info:
            read_parallel(src, tgt, skip_bad=skip_bad)
        msg = str(info.value)
        assert str(src) in msg and str(tgt) in msg
        assert "3 lines" in msg and "4 lines" in msg
        assert info.value.line is None


def test_invalid_utf8_names_file_line_and_offset(tmp_path):
    src = write(tmp_path / "s.txt", "one\ntwo\nthree\n")
    tgt = write(tmp_path / "t.txt", b"eins\nzwei\ndr\xe4i\n")  # latin-1 byte on line 3
    with pytest.raises(CorpusError) as info:
        read_parallel(src, tgt)
    e = info.value
    assert (e.path, e.line) == (str(tgt), 3)
    assert str(e).startswith(f"{tgt}:3: ") and "UTF-8" in str(e) and "byte offset 2" in str(e)


@pytest.mark.parametrize("side", ["src", "tgt"])
def test_empty_line_names_the_right_file(tmp_path, side):
    good = "a\nb\nc\n"
    bad = "a\n   \nc\n"
    src = write(tmp_path / "s.txt", bad if side == "src" else good)
    tgt = write(tmp_path / "t.txt", bad if side == "tgt" else good)
    with pytest.raises(CorpusError) as info:
        read_parallel(src, tgt)
    e = info.value
    assert e.path == str(src if side == "src" else tgt) and e.line == 2
    assert "empty" in e.problem and "skip_bad_lines" in e.problem


def test_overlong_line(tmp_path):
    src = write(tmp_path / "s.txt", "short\n" + "x" * 30 + "\n")
    tgt = write(tmp_path / "t.txt", "kurz\nlang\n")
    with pytest.raises(CorpusError) as info:
        read_parallel(src, tgt, max_chars=20)
    assert (info.value.path, info.value.line) == (str(src), 2)
    assert "30 characters" in str(info.value) and "20" in str(info.value)


def test_tsv_reading_and_bad_column_count(tmp_path):
    good = write(tmp_path / "ok.tsv", "ein haus\ta house\n zwei \t two \n")
    s, t, _ = read_parallel(good)
    assert s == ["ein haus", "zwei"] and t == ["a house", "two"]
    bad = write(tmp_path / "bad.tsv", "a\tb\nc\td\te\nf\tg\n")
    with pytest.raises(CorpusError) as info:
        read_parallel(bad)
    assert str(info.value).startswith(f"{bad}:2: ") and "3 tab-separated columns" in str(info.value)
    empty_side = write(tmp_path / "empty.tsv", "a\tb\n\tx\n")
    with pytest.raises(CorpusError, match=r":2: empty source line"):
        read_parallel(empty_side)


def test_skip_bad_counts_and_reports(tmp_path):
    src = write(tmp_path / "s.txt", b"a\n\nc\nd\xff\n" + b"e" * 50 + b"\nf\n")
    tgt = write(tmp_path / "t.txt", "A\nB\n\nD\nE\nF\n")
    s, t, report = read_parallel(src, tgt, skip_bad=True, max_chars=40)
    assert s == ["a", "f"] and t == ["A", "F"]
    assert (report.n_pairs, report.n_skipped) == (2, 4)
    assert [p.split(": ")[0] for p in report.problems] == [
        f"{src}:2",
        f"{tgt}:3",
        f"{src}:4",
        f"{src}:5",
    ]


def test_gzip_by_suffix_and_by_content(tmp_path):
    src = write(tmp_path / "s.gz", gzip.compress(b"hallo\nwelt\n"))
    tgt = write(tmp_path / "t.txt", gzip.compress(b"hello\nworld\n"))  # gzip without .gz
    s, t, _ = read_parallel(src, tgt)
    assert s == ["hallo", "welt"] and t == ["hello", "world"]
    assert read_lines(src) == ["hallo", "welt"]
    with open_text(tgt) as f:
        assert f.read() == "hello\nworld\n"
    truncated = write(tmp_path / "cut.gz", gzip.compress(b"x\n" * 1000)[:20])
    with pytest.raises(CorpusError, match="gzip"):
        read_lines(truncated)


def test_missing_file_is_named(tmp_path):
    there = write(tmp_path / "s.txt", "a\n")
    missing = tmp_path / "nope.txt"
    with pytest.raises(CorpusError) as info:
        read_parallel(there, missing)
    assert info.value.path == str(missing) and "not found" in str(info.value)
    with pytest.raises(CorpusError, match="not found"):
        read_lines(missing)


def test_read_lines_keeps_empty_lines_and_reports_bad_utf8(tmp_path):
    path = write(tmp_path / "in.txt", "a\n\n  b  \n")
    assert read_lines(path) == ["a", "", "b"]
    bad = write(tmp_path / "bad.txt", b"ok\nok\n\xc3(\n")
    with pytest.raises(CorpusError) as info:
        read_lines(bad)
    assert (info.value.path, info.value.line) == (str(bad), 3)
    with pytest.raises(CorpusError, match=":1: "):
        read_lines(path, max_chars=0)


def test_corpus_error_format():
    assert str(CorpusError("f.txt", 7, "bad")) == "f.txt:7: bad"
    assert str(CorpusError("f.txt", None, "bad")) == "f.txt: bad"
    assert isinstance(CorpusError("f", 1, "p"), ValueError)


def test_length_filter():
    src = [1, 0, 5, 60, 10, 3]
    tgt = [1, 3, 6, 5, 2, 9]
    assert length_filter(src, tgt, max_len=50, max_ratio=3.0) == [0, 2, 5]
    assert length_filter(src, tgt, max_len=50, max_ratio=0) == [0, 2, 4, 5]
    assert length_filter(src, tgt, max_len=100, max_ratio=None) == [0, 2, 3, 4, 5]


# --------------------------------------------------------------------------- vocab


def test_vocab_build_order_and_limits():
    data = [["b", "a", "c"], ["a", "b", "d"], ["a", "<s>", "e"]]
    v = Vocab.build(data)
    # a:3, then b:2, then c/d/e:1 alphabetically; "<s>" in the data is not a regular token.
    assert v.itos == list(Vocab.SPECIALS) + ["a", "b", "c", "d", "e"]
    assert v.counts == {"a": 3, "b": 2, "c": 1, "d": 1, "e": 1}
    assert Vocab.build(data, max_size=2).itos[4:] == ["a", "b"]
    assert Vocab.build(data, min_freq=2).itos[4:] == ["a", "b"]
    assert (Vocab.PAD, Vocab.UNK, Vocab.BOS, Vocab.EOS) == (0, 1, 2, 3)
    assert len(v) == 9 and "a" in v and "z" not in v


def test_vocab_encode_decode():
    v = Vocab.build([["x", "y"]])
    ids = v.encode(["x", "zzz", "y", "</s>"])
    assert ids == [v.stoi["x"], Vocab.UNK, v.stoi["y"], Vocab.UNK]  # text can't inject EOS
    out = [Vocab.BOS, v.stoi["y"], Vocab.PAD, v.stoi["x"], Vocab.EOS, v.stoi["x"]]
    assert v.decode(out) == ["y", "x"]
    assert v.decode(torch.tensor(out), strip=False)[:3] == ["<s>", "y", "<pad>"]


def test_vocab_validation():
    with pytest.raises(ValueError, match="special"):
        Vocab(["a", "<pad>", "<unk>", "<s>", "</s>"])
    with pytest.raises(ValueError, match="duplicate"):
        Vocab([*Vocab.SPECIALS, "a", "a"])


def test_vocab_save_load_round_trip(tmp_path):
    v = Vocab.build([["ä", "b"], ["ä"]])
    v.save(tmp_path / "vocab.json")
    w = Vocab.load(tmp_path / "vocab.json")
    assert w.itos == v.itos and w.stoi == v.stoi and w.counts == {"ä": 2, "b": 1}
    atomic_write_text(tmp_path / "list.json", '["<pad>", "<unk>", "<s>", "</s>", "q"]')
    assert Vocab.load(tmp_path / "list.json").itos[-1] == "q"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files behind


# --------------------------------------------------------------------------- tokenizers


def test_word_and_char_tokenizers():
    w = WordTokenizer()
    assert w.encode("  a  dog .") == ["a", "dog", "."] and w.decode(["a", "dog"]) == "a dog"
    c = CharTokenizer()
    assert c.encode("ab c") == ["a", "b", "\u2581", "c"]
    assert c.decode(c.encode("über 3 Äpfel")) == "über 3 Äpfel"


@pytest.fixture(scope="module")
def spm_texts() -> list[str]:
    dates, _ = date_task(300, seed=1)
    return dates


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_train_save_load_round_trip(tmp_path, spm_texts, kind):
    tok = train_tokenizer(kind, spm_texts, vocab_size=80)
    assert isinstance(tok, SentencePieceTokenizer) and tok.kind == kind
    save_tokenizer(tok, tmp_path, "src")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.spm.model", "src.tokenizer.json"]
    loaded = load_tokenizer(tmp_path, "src")
    assert loaded.kind == kind
    for text in spm_texts[:50] + ["Tuesday, March 3, 1987"]:
        pieces = loaded.encode(text)
        assert pieces == tok.encode(text)
        assert loaded.decode(pieces) == text
    # Deterministic: training again gives the same model.
    assert SentencePieceTokenizer.train(spm_texts, kind, 80).model == tok.model
    # The vocabulary covers every piece of the training text.
    vocab = build_vocab(loaded, spm_texts, max_size=5)
    assert all(Vocab.UNK not in vocab.encode(loaded.encode(t)) for t in spm_texts)


def test_sentencepiece_too_small_vocab_is_explained(spm_texts):
    with pytest.raises(ValueError, match="vocab_size=5 is too small"):
        train_tokenizer("bpe", spm_texts, vocab_size=5)


@pytest.mark.parametrize("kind", ["word", "char"])
def test_simple_tokenizers_save_load(tmp_path, kind):
    tok = train_tokenizer(kind, [], vocab_size=0)
    save_tokenizer(tok, tmp_path, "tgt")
    loaded = load_tokenizer(tmp_path, "tgt")
    assert type(loaded) is type(tok)
    assert loaded.decode(loaded.encode("a b  c")) == tok.decode(tok.encode("a b  c"))
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        train_tokenizer("bytes", [], 10)


def test_build_vocab_word_limits():
    vocab = build_vocab(WordTokenizer(), ["a b b", "c b a"], max_size=2)
    assert vocab.itos[4:] == ["b", "a"]


# --------------------------------------------------------------------------- batching


def test_collate_padding_and_masks():
    b = collate([[5, 6, 7], [8]], [[9], [10, 11, 12]], indices=[4, 2])
    assert b.src.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b.src_lens.tolist() == [3, 1] and b.size == 2 and b.indices == [4, 2]
    assert b.tgt_in.tolist() == [[2, 9, 0, 0], [2, 10, 11, 12]]
    assert b.tgt_out.tolist() == [[9, 3, 0, 0], [10, 11, 12, 3]]
    assert b.src_pad_mask.tolist() == [[False, False, False], [False, True, True]]
    assert b.tgt_pad_mask.tolist() == [[False, False, True, True], [False] * 4]
    assert b.n_tgt_tokens == 6
    assert b.src.dtype == b.tgt_in.dtype == torch.long
    moved = b.to("cpu")
    assert isinstance(moved, Batch) and moved is not b and moved.n_tgt_tokens == 6
    inf = collate([[4], [5, 6]], None, indices=[0, 1])
    assert inf.tgt_in is None and inf.tgt_out is None and inf.n_tgt_tokens == 0
    assert inf.src_pad_mask.tolist() == [[False, True], [False, False]]


def _lengths(n: int, seed: int) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(1, 40, (n,), generator=g).tolist(),
            torch.randint(1, 40, (n,), generator=g).tolist())  # fmt: skip


@pytest.mark.parametrize("batch_type,batch_size", [("sentences", 16), ("tokens", 300)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_make_batches_covers_all_and_respects_budget(batch_type, batch_size, shuffle):
    src, tgt = _lengths(1000, seed=0)
    src[3] = 400  # longer than the whole token budget: still gets a batch of its own
    batches = make_batches(
        src, tgt, batch_size=batch_size, batch_type=batch_type, shuffle=shuffle, seed=3
    )
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    for b in batches:
        assert len(b) >= 1
        if batch_type == "sentences":
            assert len(b) <= batch_size
        elif len(b) > 1:
            assert len(b) * max(max(src[i], tgt[i] + 1) for i in b) <= batch_size
    if not shuffle:  # inference: longest first
        firsts = [src[b[0]] for b in batches]
        assert firsts == sorted(firsts, reverse=True)


def test_make_batches_deterministic_per_seed_and_epoch():
    src, tgt = _lengths(500, seed=1)

    def plan(seed, epoch):
        return make_batches(
            src, tgt, batch_size=200, batch_type="tokens", shuffle=True, seed=seed, epoch=epoch
        )

    assert plan(0, 0) == plan(0, 0)
    assert plan(0, 0) != plan(0, 1)
    assert plan(0, 0) != plan(1, 0)
    # Bucketing: batches are much tighter than random groups.
    pad = sum(len(b) * max(src[i] for i in b) - sum(src[i] for i in b) for b in plan(0, 0))
    assert pad < 0.2 * sum(src)


def test_batch_stream_resume_and_epochs():
    src = [[1] * n for n in _lengths(60, seed=2)[0]]
    tgt = [[2] * n for n in _lengths(60, seed=3)[0]]
    stream = BatchStream(src, tgt, batch_size=8, batch_type="sentences", seed=5)
    n_batches = len(stream)
    assert n_batches == 8
    first_epoch = [next(stream).indices for _ in range(n_batches)]
    assert sorted(i for b in first_epoch for i in b) == list(range(60))
    assert stream.state_dict() == {"epoch": 1, "offset": 0}
    for _ in range(3):
        next(stream)
    state = stream.state_dict()
    assert state == {"epoch": 1, "offset": 3}
    resumed = BatchStream(src, tgt, 8, "sentences", 5, **state)
    for _ in range(n_batches + 2):  # across the next epoch boundary too
        a, b = next(stream), next(resumed)
        assert a.indices == b.indices and torch.equal(a.tgt_out, b.tgt_out)
    again = BatchStream(src, tgt, 8, "sentences", 5)
    assert [next(again).indices for _ in range(n_batches)] == first_epoch
    assert [next(again).indices for _ in range(n_batches)] != first_epoch
    with pytest.raises(ValueError, match="offset"):
        BatchStream(src, tgt, 8, "sentences", 5, offset=99)


# --------------------------------------------------------------------------- toy tasks

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _parse_date(text: str) -> dt.date:
    """An independent reading of date_task's inputs, to check that targets follow from them."""
    low = text.lower()
    year = int(re.search(r"\b(19|20)\d\d\b", low).group())
    month_names = [m for m in _MONTHS if re.search(rf"\b{m}", low)]
    numbers = [int(x) for x in re.findall(r"\d+", low) if int(x) != year or len(x) != 4]
    if month_names:
        assert len(month_names) == 1, text
        month, day = _MONTHS.index(month_names[0]) + 1, numbers[0]
    elif re.match(r"\d{4}", low):  # year first: y-m-d
        month, day = numbers[0], numbers[1]
    else:  # documented: day before month
        day, month = numbers[0], numbers[1]
    date = dt.date(year, month, day)
    weekdays = [w for w in _WEEKDAYS if w in low]
    if weekdays:
        assert weekdays == [_WEEKDAYS[date.weekday()]], text
    return date


def test_date_task_is_consistent_and_deterministic():
    src, tgt = date_task(600, seed=7)
    assert (src, tgt) == date_task(600, seed=7)
    assert src != date_task(600, seed=8)[0]
    for s, t in zip(src, tgt):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", t)
        date = dt.date.fromisoformat(t)
        assert 1950 <= date.year <= 2049
        assert _parse_date(s) == date, (s, t)
    assert len({re.sub(r"\d+", "0", s.lower()) for s in src}) >= 10  # many formats
    assert any(s.isupper() for s in src) and any(s[0].isupper() and not s.isupper() for s in src)


@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
def test_toy_tasks(name):
    src, tgt = toy_task(name, 200, seed=0, min_len=2, max_len=6, n_symbols=5)
    assert (src, tgt) == toy_task(name, 200, seed=0, min_len=2, max_len=6, n_symbols=5)
    for s, t in zip(src, tgt):
        toks = s.split()
        assert 2 <= len(toks) <= 6 and set(toks) <= set("abcde")
        expected = {"copy": toks, "reverse": toks[::-1], "sort": sorted(toks)}[name]
        assert t.split() == expected
    assert toy_task("dates", 5, seed=1) == date_task(5, seed=1)


def test_split_toy_holds_out_sources():
    src, tgt = toy_task("copy", 400, seed=0, min_len=1, max_len=2, n_symbols=5)  # many repeats
    (tr_s, tr_t), (va_s, va_t), (te_s, te_t) = split_toy(src, tgt, n_valid=5, n_test=6)
    assert len(va_s) == 5 and len(te_s) == 6
    assert not set(tr_s) & set(te_s) and not set(tr_s) & set(va_s) and not set(va_s) & set(te_s)
    assert all(s == t for s, t in zip(tr_s + va_s + te_s, tr_t + va_t + te_t))
    with pytest.raises(ValueError, match="distinct sources"):
        split_toy(src, tgt, n_valid=20, n_test=20)  # only 30 distinct sources exist


# --------------------------------------------------------------------------- Multi30k


def test_fetch_multi30k_from_shared_copy(tmp_path):
    if not SHARED_MULTI30K.is_dir():
        pytest.skip(f"no shared Multi30k copy at {SHARED_MULTI30K}")
    out = tmp_path / "m30k"
    summary = fetch_multi30k(out, from_dir=SHARED_MULTI30K, langs=("de", "en"))
    assert summary == {name: n for name, n in MULTI30K_FILES.items() if name[-2:] in ("de", "en")}
    de, en, report = read_parallel(out / "val.de", out / "val.en")
    assert report.n_pairs == 1014 and len(de) == len(en) == 1014
    # A re-run keeps the verified files and needs neither the source nor the network.
    assert fetch_multi30k(out, from_dir=tmp_path, langs=("de", "en")) == summary


def test_fetch_multi30k_truncated_copy_names_file(tmp_path):
    src_dir = tmp_path / "from"
    src_dir.mkdir()
    if SHARED_MULTI30K.is_dir():
        shutil.copy(SHARED_MULTI30K / "train.en.gz", src_dir / "train.en.gz")
    else:
        write(src_dir / "train.en", "x\n" * 29000)
    bad = write(src_dir / "val.en.gz", gzip.compress(b"a line\n" * 1000))
    write(src_dir / "test_2016_flickr.en", "x\n" * 1000)
    with pytest.raises(CorpusError) as info:
        fetch_multi30k(tmp_path / "out", from_dir=src_dir, langs=("en",))
    assert info.value.path == str(bad)
    assert "1000 lines" in str(info.value) and "expected 1014" in str(info.value)
    assert not (tmp_path / "out" / "val.en").exists()  # verified before it is written


def test_fetch_multi30k_without_network_says_what_to_do(tmp_path, monkeypatch):
    def refuse(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", refuse)
    with pytest.raises(DownloadError) as info:
        fetch_multi30k(tmp_path, langs=("en",))
    assert "https://raw.githubusercontent.com/multi30k/" in str(info.value)
    assert "train.en.gz" in str(info.value) and "--from" in str(info.value)
