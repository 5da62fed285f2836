"""Prepared corpora: token ids in flat, memory-mapped arrays, built once and reused.

``attendo data prepare cfg.yaml`` (or :func:`prepare`) reads the training corpora of a config,
validates every line with the rules of :mod:`attendo.data.corpus`, trains the tokenizers on a
bounded sample, encodes every pair in worker processes (all cores) and writes a folder:

    manifest.json                    what was prepared from what (written last: its presence
                                     means the folder is complete)
    src.tokens.bin, tgt.tokens.bin   all token ids of a side, one after another (uint16 when
                                     the vocabulary fits, else int32)
    src.offsets.npy, tgt.offsets.npy int64, n + 1 entries: pair i is tokens[off[i]:off[i + 1]]
    src.*, tgt.*                     the tokenizers and vocabularies (copied into each model)

Training (``data.prepared: DIR``) memory-maps the arrays: start-up reads only the offsets, a
batch only its own pairs, and the processes of a machine share the file cache's pages (a token
costs 2 or 4 bytes on disk instead of ~36 in a Python list). Random access keeps what the
in-memory path promises: length-sorted batch plans over the whole corpus, exact resume at
"epoch e, batch k", every rank taking every world_size-th batch of one plan.

Bad pairs are skipped (``data.skip_bad_lines``, counted in the manifest) or stop the
preparation naming ``file:line``. Length filters and ``data.train_weights`` apply when
training; changed files or tokenization settings make the folder stale, which training reports.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import os
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..config import DataConfig
from ..errors import UsageError
from ..utils import atomic_write_text
from .chunked import ChunkRunner, chunk_tasks, encode_chunk, init_encoder, scan_chunk
from .corpus import MAX_REPORTED_PROBLEMS, CorpusError, parse_pair
from .memmap import (
    FORMAT_VERSION,
    MANIFEST,
    PREP_KEYS,
    StalePreparation,
    check_fresh,
    file_stamp,
    read_manifest,
)
from .prepare import Codec, CorpusFiles, make_tokenizer, save_codecs, train_files
from .tokenizers import SentencePieceTokenizer
from .vocab import Vocab

log = logging.getLogger("attendo")
_bar = partial(tqdm, unit=" pairs", unit_scale=True, dynamic_ncols=True)


def _sample_spm(cfg: DataConfig, files: list[CorpusFiles], settings: dict, progress: bool):
    """Pass 1 for sentencepiece: a uniform sample of at most ``spm_sample`` sentences (per
    side, or of both sides when joint) in one read of the files, by bottom-k sampling: every
    line gets a random priority (seeded by chunk), the k lowest win. Only lines below the
    running k-th priority are decoded and validated here (bad ones are left out; pass 2
    reports or counts them), so this pass costs little more than reading the files."""
    k = cfg.spm_sample
    heaps: list[list] = [[], []]  # per pool (one when joint): max-heaps of (-priority, item)
    bar = _bar(desc="sample", disable=not progress)

    def tau(pool: int) -> float:
        h = heaps[pool]
        return -h[0][0] if len(h) >= k else 1.0

    try:
        for _, task in chunk_tasks(files, [{} for _ in files]):
            chunk_id, src, tgt, lineno, raw_s, raw_t = task
            pri = np.random.default_rng([settings["seed"], chunk_id]).random((2, len(raw_s)))
            limit = np.array([[tau(0)], [tau(0 if cfg.joint_vocab else 1)]])
            for pos in np.flatnonzero((pri < limit).any(axis=0)).tolist():
                try:
                    pair = parse_pair(raw_s[pos], raw_t[pos] if raw_t is not None else None,
                                       Path(src), Path(tgt) if tgt else None, lineno + pos,
                                       settings["max_chars"])
                except CorpusError:
                    continue
                for side, text in enumerate(pair):
                    pool = 0 if cfg.joint_vocab else side
                    p = float(pri[side, pos])
                    if p >= tau(pool):
                        continue
                    item = (-p, side, chunk_id, pos, text.lower() if cfg.lowercase else text)
                    push = heapq.heappush if len(heaps[pool]) < k else heapq.heapreplace
                    push(heaps[pool], item)
            bar.update(len(raw_s))
    finally:
        bar.close()
    # in corpus order: all of a sample's sources, then its targets, as the in-memory path
    # passes them, so a corpus that fits in the sample gives the same tokenizer
    return [[item[4] for item in sorted(h, key=lambda x: x[1:4])] for h in heaps]


def _count_pieces(cfg: DataConfig, files: list[CorpusFiles], settings: dict, workers: int,
                  progress: bool) -> list[Counter]:
    """Pass 1 for word/char tokenizers: validate everything (a bad line stops here, before
    any encoding, unless skipped) and count the pieces for the vocabularies."""
    counters = [Counter(), Counter()]
    first_error: CorpusError | None = None
    runner = ChunkRunner(workers)
    bar = _bar(desc="count", disable=not progress)

    def take(res: dict) -> None:
        bar.update(res["kept"] + res["skipped"])
        for c, more in zip(counters, res["counts"]):
            c.update(more)

    try:
        for _, task in chunk_tasks(files, [{} for _ in files]):
            if first_error is not None:
                continue  # read on only to count lines: a count mismatch is the likelier cause
            try:
                for res in runner.submit(scan_chunk, task, settings):
                    take(res)
            except CorpusError as e:
                first_error = e
        if first_error is None:
            for res in runner.drain():
                take(res)
    except CorpusError as e:
        if first_error is None or "lines but" in e.problem:
            raise
    finally:
        runner.close()
        bar.close()
    if first_error is not None:
        raise first_error
    return counters


def _codecs_after_scan(cfg: DataConfig, found: list, seed: int) -> tuple[Codec, Codec]:
    """Tokenizers (trained on the samples) and, for word/char, the vocabularies (of the
    counted pieces; sentencepiece's are built after encoding, from the piece ids)."""
    pools = found[:1] if cfg.joint_vocab else found  # per side, or one for both when joint
    if cfg.tokenizer in ("bpe", "unigram"):
        toks = [make_tokenizer(cfg, sample, seed) for sample in pools]
        vocabs = [Vocab(list(Vocab.SPECIALS)) for _ in pools]
    else:
        toks = [make_tokenizer(cfg, [], seed)] * len(pools)
        vocabs = [Vocab.build([c], max_size=cfg.vocab_size, min_freq=cfg.min_freq) for c in pools]
    codecs = [Codec(t, v, cfg.lowercase) for t, v in zip(toks, vocabs)]
    return codecs[0], codecs[-1]


def prepare(cfg: DataConfig, out: str | Path, *, seed: int = 0, workers: int | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Prepare the training corpora of ``cfg`` into the folder ``out`` (see the module
    docstring); returns the manifest. ``workers`` (default ``data.workers``, 0 = all cores)
    processes validate and encode."""
    if cfg.tokenizer_model or cfg.tgt_tokenizer_model:
        raise UsageError("data.tokenizer_model: a prepared (memory-mapped) corpus trains its "
                         "own tokenizers; several or weighted training files with your own "
                         "tokenizer are not supported yet: concatenate them into one file")
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # incomplete until the manifest is written again
    files = train_files(cfg)
    workers = (workers if workers is not None else cfg.workers) or os.cpu_count() or 1
    settings = {k: getattr(cfg, k) for k in PREP_KEYS} | {"seed": seed}
    if cfg.tokenizer in ("bpe", "unigram"):
        found = _sample_spm(cfg, files, settings, progress)
    else:
        found = _count_pieces(cfg, files, settings, workers, progress)
    t_scan = time.time() - t0
    src, tgt = _codecs_after_scan(cfg, found, seed)
    del found
    t_tok = time.time() - t0 - t_scan
    spm_ids = isinstance(src.tokenizer, SentencePieceTokenizer)
    # sentencepiece: piece ids until the vocabularies are built, at most as many + the specials
    size = max(c.tokenizer.sp.get_piece_size() + len(Vocab.SPECIALS) if spm_ids else len(c.vocab)
               for c in (src, tgt))
    dtype = "uint16" if size <= 1 << 16 else "int32"
    lens: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}
    piece_counts: dict[str, np.ndarray | None] = {"src": None, "tgt": None}
    runner = ChunkRunner(workers, init_encoder, (src, tgt, spm_ids))
    bar = _bar(desc="encode", disable=not progress)
    sinks = {side: open(out / f"{side}.tokens.bin", "wb") for side in ("src", "tgt")}
    stats = [{"lines": 0, "pairs": 0, "skipped": 0} for _ in files]
    problems: list[str] = []
    line_counts: list[dict] = [{} for _ in files]
    file_of: list[int] = []  # the file of each chunk in flight

    def take(res: dict) -> None:
        st = stats[file_of.pop(0)]
        st["pairs"] += res["kept"]
        st["skipped"] += res["skipped"]
        problems.extend(res["problems"][: MAX_REPORTED_PROBLEMS - len(problems)])
        for side in ("src", "tgt"):
            n, flat, counts = res[side]
            lens[side].append(n)
            sinks[side].write(flat.tobytes())
            if counts is not None:
                prev = piece_counts[side]
                piece_counts[side] = counts if prev is None else prev + counts
        bar.update(res["kept"] + res["skipped"])

    try:
        for i, task in chunk_tasks(files, line_counts):
            file_of.append(i)
            for res in runner.submit(encode_chunk, task, settings, dtype):
                take(res)
        for res in runner.drain():
            take(res)
    finally:
        runner.close()
        bar.close()
        for f in sinks.values():
            f.close()
    for st, c, f in zip(stats, line_counts, files):
        st["lines"] = c.get("lines", 0)
        if st["pairs"] == 0:
            raise CorpusError(f.src, None, f"no usable train pairs: all {st['skipped']} lines "
                              "were skipped as bad (data.skip_bad_lines); the first: "
                              f"{problems[0] if problems else '?'}")
    n_pairs = sum(s["pairs"] for s in stats)
    tokens = {}
    for side in ("src", "tgt"):
        n = np.concatenate(lens[side]) if lens[side] else np.zeros(0, np.int32)
        if len(n) != n_pairs:
            raise CorpusError(files[0].src, None, "the files changed while being prepared")
        offsets = np.zeros(len(n) + 1, np.int64)
        np.cumsum(n, out=offsets[1:])
        np.save(out / f"{side}.offsets.npy", offsets)
        tokens[side] = int(offsets[-1])
    if spm_ids:
        src, tgt = _spm_vocabularies(cfg, src, tgt, piece_counts, out, dtype)
    save_codecs(out, src, tgt)
    t_total = time.time() - t0
    starts = itertools.accumulate((st["pairs"] for st in stats), initial=0)
    corpora = [{"entry": f.entry, "src": file_stamp(f.src), "tgt": file_stamp(f.tgt),
                "start": start, **st} for f, st, start in zip(files, stats, starts)]
    manifest = {
        "format": FORMAT_VERSION, "settings": {k: settings[k] for k in PREP_KEYS}, "seed": seed,
        "dtype": dtype, "pairs": n_pairs, "skipped": sum(s["skipped"] for s in stats),
        "problems": problems, "tokens": tokens,
        "vocab": {"src": len(src.vocab), "tgt": len(tgt.vocab),
                  "src_sha256": _vocab_hash(src.vocab), "tgt_sha256": _vocab_hash(tgt.vocab)},
        "corpora": corpora,
        "seconds": {"sample_or_count": round(t_scan, 2), "tokenizer": round(t_tok, 2),
                    "total": round(t_total, 2)},
        "workers": workers,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    log.info("prepared %d pairs (%d skipped) into %s in %.1f s (%.0f pairs/s)",
             n_pairs, manifest["skipped"], out, t_total, n_pairs / max(t_total, 1e-9))
    return manifest


def _vocab_hash(vocab: Vocab) -> str:
    return hashlib.sha256(json.dumps(vocab.to_json()).encode()).hexdigest()


def _spm_vocabularies(cfg: DataConfig, src: Codec, tgt: Codec, piece_counts: dict,
                      out: Path, dtype: str) -> tuple[Codec, Codec]:
    """Build the vocabularies from the counted sentencepiece ids (the pieces that occur,
    like :func:`~attendo.data.tokenizers.build_vocab`), then rewrite the token files from
    piece ids to vocabulary ids through a lookup table."""

    def vocab_of(tok: SentencePieceTokenizer, counts: np.ndarray) -> Vocab:
        c = Counter({tok.sp.id_to_piece(int(i)): int(counts[i]) for i in np.flatnonzero(counts)
                     if i != tok.sp.unk_id()})
        return Vocab.build([c])

    if cfg.joint_vocab:
        vocabs = [vocab_of(src.tokenizer, piece_counts["src"] + piece_counts["tgt"])] * 2
    else:
        vocabs = [vocab_of(src.tokenizer, piece_counts["src"]),
                  vocab_of(tgt.tokenizer, piece_counts["tgt"])]
    src, tgt = (Codec(c.tokenizer, v, cfg.lowercase) for c, v in zip((src, tgt), vocabs))
    for side, codec in (("src", src), ("tgt", tgt)):
        sp = codec.tokenizer.sp
        lut = np.array([codec.vocab.encode([sp.id_to_piece(i)])[0]
                        for i in range(sp.get_piece_size())], dtype=dtype)
        lut[sp.unk_id()] = Vocab.UNK
        path = out / f"{side}.tokens.bin"
        if path.stat().st_size == 0:
            continue
        arr = np.memmap(path, dtype=dtype, mode="r+")
        step = 1 << 24
        for i in range(0, len(arr), step):
            arr[i : i + step] = lut[arr[i : i + step]]
        arr.flush()
        del arr
    return src, tgt


def ensure_prepared(cfg, folder: Path, *, seed: int, resume: bool) -> None:
    """Prepare ``folder`` when it is missing (or, for a run's own ``out_dir/prepared``, stale
    and the run is new); a stale folder the user prepared is an error, never overwritten."""
    try:
        return check_fresh(read_manifest(folder), cfg.data, folder)
    except StalePreparation:
        if (folder / MANIFEST).exists() and (resume or cfg.data.prepared):
            raise
    log.info("preparing the training data into %s (prepare it once for many runs with "
             "`attendo data prepare`)", folder)
    prepare(cfg.data, folder, seed=seed, progress=cfg.train.progress)
