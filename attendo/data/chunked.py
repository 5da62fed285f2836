"""Corpus files in chunks of :data:`CHUNK_LINES` lines, validated and encoded in worker
processes: the parallel half of ``attendo data prepare`` (:mod:`attendo.data.binarized`)."""

from __future__ import annotations

import itertools
import multiprocessing
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import MAX_REPORTED_PROBLEMS, CorpusError, check_line_counts, parse_pair, raw_lines
from .prepare import Codec, CorpusFiles
from .tokenizers import SentencePieceTokenizer, train_tokenizer

CHUNK_LINES = 20_000  # lines a worker validates or encodes at a time


def _chunks(files: CorpusFiles, counts: dict[str, int]):
    """``(first_lineno, raw_src_lines, raw_tgt_lines or None)`` of CHUNK_LINES lines, then the
    checks of :func:`~attendo.data.corpus.check_line_counts`; ``counts`` gets the count."""
    src_it = raw_lines(Path(files.src))
    tgt_it = raw_lines(Path(files.tgt)) if files.tgt else None
    n_src = n_tgt = 0
    lineno = 1
    while True:
        s = list(itertools.islice(src_it, CHUNK_LINES))
        t = list(itertools.islice(tgt_it, CHUNK_LINES)) if tgt_it is not None else None
        n_src += len(s)
        n_tgt += len(t) if t is not None else len(s)
        if t is not None and len(s) != len(t):  # one file ended: count the rest of the other
            n_src += sum(1 for _ in src_it)
            n_tgt += sum(1 for _ in tgt_it)
            break
        if not s:
            break
        yield lineno, s, t
        lineno += len(s)
    counts["lines"] = n_src
    check_line_counts(files.src, files.tgt, n_src, n_tgt)


def _clean(task: tuple, settings: dict) -> tuple[list[str], list[str], int, list[str]]:
    """Validate one chunk: (src texts, tgt texts, skipped, problems); a bad line raises its
    CorpusError unless skip_bad_lines."""
    _, src, tgt, lineno, raw_s, raw_t = task
    src_p, tgt_p = Path(src), (Path(tgt) if tgt else None)
    ss, ts, problems = [], [], []
    skipped = 0
    for k, rs in enumerate(raw_s):
        try:
            s, t = parse_pair(rs, raw_t[k] if raw_t is not None else None, src_p, tgt_p,
                               lineno + k, settings["max_chars"])
        except CorpusError as e:
            if not settings["skip_bad_lines"]:
                raise
            skipped += 1
            if len(problems) < MAX_REPORTED_PROBLEMS:
                problems.append(str(e))
            continue
        if settings["lowercase"]:
            s, t = s.lower(), t.lower()
        ss.append(s)
        ts.append(t)
    return ss, ts, skipped, problems


def scan_chunk(task: tuple, settings: dict) -> dict:
    """Pass 1 (word/char) on one chunk: validate, count the pieces."""
    ss, ts, skipped, _ = _clean(task, settings)
    tok = train_tokenizer(settings["tokenizer"], [], 1)
    counts = [Counter(), Counter()]
    for side, texts in enumerate((ss, ts)):
        c = counts[0 if settings["joint_vocab"] else side]
        for text in texts:
            c.update(tok.encode(text))
    return {"kept": len(ss), "skipped": skipped, "counts": counts}


_WORKER: dict[str, Any] = {}


def init_encoder(src: Codec, tgt: Codec, spm_ids: bool) -> None:
    _WORKER.update(src=src, tgt=tgt, spm_ids=spm_ids)


def _encode_side(codec: Codec, texts: list[str], spm_ids: bool, dtype) -> tuple:
    if spm_ids:
        assert isinstance(codec.tokenizer, SentencePieceTokenizer)
        # one thread: the worker processes already use every core
        ids = codec.tokenizer.sp.encode(texts, out_type=int, num_threads=1)
    else:
        ids = [codec.vocab.encode(codec.tokenizer.encode(t)) for t in texts]
    lens = np.fromiter((len(x) for x in ids), np.int32, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype, count=int(lens.sum()))
    counts = np.bincount(flat, minlength=codec.tokenizer.sp.get_piece_size()) if spm_ids else None
    return lens, flat, counts


def encode_chunk(task: tuple, settings: dict, dtype: str) -> dict:
    """Pass 2 on one chunk: validate again, encode both sides (sentencepiece: to piece ids,
    counted, mapped to vocabulary ids once the vocabulary is known)."""
    ss, ts, skipped, problems = _clean(task, settings)
    src, tgt = (_encode_side(_WORKER[side], texts, _WORKER["spm_ids"], np.dtype(dtype))
                for side, texts in (("src", ss), ("tgt", ts)))
    return {"kept": len(ss), "skipped": skipped, "problems": problems, "src": src, "tgt": tgt}


class ChunkRunner:
    """Runs chunk tasks in a pool of worker processes (inline for one worker), a few chunks in
    flight so that memory stays bounded; results come back in order. A ProcessPoolExecutor:
    on an error (a bad line) :meth:`close` cancels what has not started and waits for the rest,
    where ``multiprocessing.Pool.terminate`` could block, its task thread stuck writing to
    workers it had just killed; a worker that dies is an error, not a hang."""

    def __init__(self, workers: int, initializer=None, initargs=()):
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = ProcessPoolExecutor(workers, multiprocessing.get_context(method),
                                            initializer=initializer, initargs=initargs)
        elif initializer is not None:
            initializer(*initargs)
        self.window = 2 * workers + 1
        self.pending: list[Future] = []

    def submit(self, fn, *args) -> list:
        """Queue a task; returns the results that are now due (in submission order)."""
        if self.pool is None:
            return [fn(*args)]
        self.pending.append(self.pool.submit(fn, *args))
        done = []
        while len(self.pending) >= self.window or (self.pending and self.pending[0].done()):
            done.append(self.pending.pop(0).result())
        return done

    def drain(self) -> list:
        done, self.pending = [f.result() for f in self.pending], []
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool, self.pending = None, []


def chunk_tasks(files: list[CorpusFiles], counts: list[dict]):
    chunk_id = 0
    for i, f in enumerate(files):
        for lineno, raw_s, raw_t in _chunks(f, counts[i]):
            yield i, (chunk_id, f.src, f.tgt, lineno, raw_s, raw_t)
            chunk_id += 1
