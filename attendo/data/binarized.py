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

Training (``data.prepared: DIR``) memory-maps the arrays: start-up reads only the offsets
(8 bytes a pair), a batch reads only its own pairs, and processes on one machine (torchrun
ranks, DataLoader workers) share the same pages of the file cache instead of each holding the
corpus. Python lists of ids cost ~36 bytes a token; here a token is 2 or 4 bytes, on disk.

Why memory-mapped arrays rather than streaming the text: random access keeps everything the
in-memory path promises. The batch plan of an epoch still sorts by length over the whole
corpus (in chunks of :data:`~attendo.data.batching.CHUNK_BATCHES` batches), exact resume is
still "epoch e, batch k" (no re-reading of what came before), ranks still take every
world_size-th batch of one plan, and tokenization is paid once instead of every run.

Pairs that fail validation are skipped (``data.skip_bad_lines``, counted in the manifest) or
stop the preparation naming ``file:line``. Length filters (``data.max_len``, ``max_ratio``)
and corpus weights (``data.train_weights``) are applied when training, so changing them needs
no new preparation; changing files or tokenization settings makes the folder stale, which
training detects and reports.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..config import ConfigError, DataConfig
from ..utils import atomic_write_text
from .corpus import MAX_REPORTED_PROBLEMS, CorpusError, _parse_pair, _raw_lines
from .prepare import (
    Codec,
    CorpusFiles,
    load_codecs,
    make_tokenizer,
    multi_corpus,
    save_codecs,
    train_files,
)
from .tokenizers import SentencePieceTokenizer
from .vocab import Vocab

log = logging.getLogger("attendo")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_LINES = 20_000  # lines a worker validates or encodes at a time
# a single training file larger than this is prepared (into train.out_dir/prepared) rather
# than read into Python lists, when data.prepared is not set
AUTO_PREPARE_BYTES = 64 << 20
# the data settings a preparation depends on (the others apply at training time)
PREP_KEYS = ("tokenizer", "joint_vocab", "vocab_size", "min_freq", "lowercase",
             "skip_bad_lines", "max_chars", "spm_sample")


class StalePreparation(ValueError):
    """A prepared folder that does not match the config (or the files) it is used with."""


# -- deciding ----------------------------------------------------------------------------


def prepared_dir(cfg) -> Path | None:
    """Where training reads prepared data from (None: the in-memory path).

    ``data.prepared`` when set; else ``train.out_dir/prepared`` for several, globbed,
    weighted or large (> :data:`AUTO_PREPARE_BYTES`) training files; else None."""
    data: DataConfig = cfg.data
    if data.toy:
        return None
    guided = bool(cfg.train.guided_alignment.file)
    if data.prepared or multi_corpus(data):
        if cfg.model.copy:
            raise ConfigError(
                "model.copy: copy models read their training data into memory; give one "
                "training file (no list, glob or weights) and leave data.prepared unset")
        if guided:
            raise ConfigError(
                "train.guided_alignment.file: guided alignment reads its training data into "
                "memory; give one training file (no list, glob or weights) and leave "
                "data.prepared unset")
        return Path(data.prepared or Path(cfg.train.out_dir) / "prepared")
    if not (cfg.model.copy or guided) and _total_bytes(train_files(data)) > AUTO_PREPARE_BYTES:
        return Path(cfg.train.out_dir) / "prepared"
    return None


def _total_bytes(files: list[CorpusFiles]) -> int:
    total = 0
    for f in files:
        for p in (f.src, f.tgt):
            if p:
                try:
                    total += os.path.getsize(p)
                except OSError:
                    pass  # reported with file and line by the reader
    return total


# -- preparing ----------------------------------------------------------------------------


def _stamp(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path}
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _chunks(files: CorpusFiles, counts: dict[str, int]):
    """Yield ``(first_lineno, raw_src_lines, raw_tgt_lines or None)`` of CHUNK_LINES lines,
    then check (like :func:`~attendo.data.corpus.read_parallel`) that both files had lines
    and as many; ``counts`` gets the line counts."""
    src_it = _raw_lines(Path(files.src))
    tgt_it = _raw_lines(Path(files.tgt)) if files.tgt else None
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
    if n_src != n_tgt:
        raise CorpusError(
            files.src, None,
            f"has {n_src} lines but {files.tgt} has {n_tgt} lines; expected line-aligned files "
            "with the same number of lines (this cannot be skipped)",
        )
    if n_src == 0:
        expected = "one sentence per line" if files.tgt else "one source<TAB>target pair per line"
        raise CorpusError(files.src, None, f"empty file, expected {expected}")


def _clean(task: tuple, settings: dict) -> tuple[list[str], list[str], list[int], int, list[str]]:
    """Validate one chunk: (src texts, tgt texts, their positions in the chunk, skipped,
    problems); a bad line raises its CorpusError unless skip_bad_lines."""
    _, src, tgt, lineno, raw_s, raw_t = task
    src_p, tgt_p = Path(src), (Path(tgt) if tgt else None)
    ss: list[str] = []
    ts: list[str] = []
    pos: list[int] = []
    skipped, problems = 0, []
    for k, rs in enumerate(raw_s):
        try:
            s, t = _parse_pair(rs, raw_t[k] if raw_t is not None else None, src_p, tgt_p,
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
        pos.append(k)
    return ss, ts, pos, skipped, problems


def _scan_chunk(task: tuple, settings: dict) -> dict:
    """Pass 1 (word/char) on one chunk: validate, count the pieces."""
    ss, ts, _, skipped, _ = _clean(task, settings)
    from .tokenizers import train_tokenizer

    tok = train_tokenizer(settings["tokenizer"], [], 1)
    counts = [Counter(), Counter()]
    for side, texts in enumerate((ss, ts)):
        c = counts[0 if settings["joint_vocab"] else side]
        for text in texts:
            c.update(tok.encode(text))
    return {"kept": len(ss), "skipped": skipped, "counts": counts}


_WORKER: dict[str, Any] = {}


def _init_encoder(src: Codec, tgt: Codec, spm_ids: bool) -> None:
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
    counts = None
    if spm_ids:
        counts = np.bincount(flat, minlength=codec.tokenizer.sp.get_piece_size())
    return lens, flat, counts


def _encode_chunk(task: tuple, settings: dict, dtype: str) -> dict:
    """Pass 2 on one chunk: validate again, encode both sides (sentencepiece: to piece ids,
    counted, mapped to vocabulary ids once the vocabulary is known)."""
    ss, ts, _, skipped, problems = _clean(task, settings)
    spm_ids = _WORKER["spm_ids"]
    src = _encode_side(_WORKER["src"], ss, spm_ids, np.dtype(dtype))
    tgt = _encode_side(_WORKER["tgt"], ts, spm_ids, np.dtype(dtype))
    return {"kept": len(ss), "skipped": skipped, "problems": problems, "src": src, "tgt": tgt}


class _Runner:
    """Runs chunk tasks in a pool of worker processes (or inline for one worker), keeping at
    most a few chunks in flight so that memory stays bounded; results come back in order."""

    def __init__(self, workers: int, initializer=None, initargs=()):
        self.pool = None
        if workers > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(method)
            self.pool = ctx.Pool(workers, initializer=initializer, initargs=initargs)
        elif initializer is not None:
            initializer(*initargs)
        self.window = 2 * workers + 1
        self.pending: list = []

    def submit(self, fn, *args) -> list:
        """Queue a task; returns the results that are now due (in submission order)."""
        if self.pool is None:
            return [fn(*args)]
        self.pending.append(self.pool.apply_async(fn, args))
        done = []
        while len(self.pending) >= self.window or (self.pending and self.pending[0].ready()):
            done.append(self.pending.pop(0).get())
        return done

    def drain(self) -> list:
        done = [r.get() for r in self.pending]
        self.pending = []
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _tasks(files: list[CorpusFiles], counts: list[dict]):
    chunk_id = 0
    for i, f in enumerate(files):
        for lineno, raw_s, raw_t in _chunks(f, counts[i]):
            yield i, (chunk_id, f.src, f.tgt, lineno, raw_s, raw_t)
            chunk_id += 1


def _sample_spm(cfg: DataConfig, files: list[CorpusFiles], settings: dict, progress: bool):
    """Pass 1 for sentencepiece: a uniform sample of at most ``spm_sample`` sentences (per
    side, or of both sides when joint) in one read of the files, by bottom-k sampling: every
    line gets a random priority (seeded by chunk), the k lowest win. Only lines below the
    running k-th priority are decoded and validated here (bad ones are left out; pass 2
    reports or counts them), so this pass costs little more than reading the files."""
    k = cfg.spm_sample
    heaps: list[list] = [[], []]  # per pool (one when joint): max-heaps of (-priority, item)
    bar = tqdm(desc="sample", unit=" pairs", unit_scale=True, disable=not progress,
               dynamic_ncols=True)

    def tau(pool: int) -> float:
        h = heaps[pool]
        return -h[0][0] if len(h) >= k else 1.0

    try:
        for _, (chunk_id, src, tgt, lineno, raw_s, raw_t) in _tasks(files, [{} for _ in files]):
            pri = np.random.default_rng([settings["seed"], chunk_id]).random((2, len(raw_s)))
            limit = np.array([[tau(0)], [tau(0 if cfg.joint_vocab else 1)]])
            for pos in np.flatnonzero((pri < limit).any(axis=0)).tolist():
                try:
                    pair = _parse_pair(raw_s[pos], raw_t[pos] if raw_t is not None else None,
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
                    if len(heaps[pool]) < k:
                        heapq.heappush(heaps[pool], item)
                    else:
                        heapq.heapreplace(heaps[pool], item)
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
    runner = _Runner(workers)
    bar = tqdm(desc="count", unit=" pairs", unit_scale=True, disable=not progress,
               dynamic_ncols=True)

    def take(res: dict) -> None:
        bar.update(res["kept"] + res["skipped"])
        for c, more in zip(counters, res["counts"]):
            c.update(more)

    try:
        for _, task in _tasks(files, [{} for _ in files]):
            if first_error is not None:
                continue  # read on only to count lines: a count mismatch is the likelier cause
            try:
                for res in runner.submit(_scan_chunk, task, settings):
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


def _codecs_after_scan(cfg: DataConfig, found, seed: int) -> tuple[Codec, Codec]:
    """Tokenizers (trained on the sample) and, for word/char, the vocabularies."""
    if cfg.tokenizer in ("bpe", "unigram"):
        samples = found
        # vocabularies are built after encoding, from the counted pieces (pass 2)
        if cfg.joint_vocab:
            tok = make_tokenizer(cfg, samples[0], seed)
            return Codec(tok, Vocab(list(Vocab.SPECIALS)), cfg.lowercase), Codec(
                tok, Vocab(list(Vocab.SPECIALS)), cfg.lowercase)
        toks = [make_tokenizer(cfg, s, seed) for s in samples]
        return tuple(Codec(t, Vocab(list(Vocab.SPECIALS)), cfg.lowercase) for t in toks)
    counters = found
    if cfg.joint_vocab:
        vocab = Vocab.build([counters[0]], max_size=cfg.vocab_size, min_freq=cfg.min_freq)
        tok = make_tokenizer(cfg, [], seed)
        return Codec(tok, vocab, cfg.lowercase), Codec(tok, vocab, cfg.lowercase)
    return tuple(
        Codec(make_tokenizer(cfg, [], seed),
              Vocab.build([c], max_size=cfg.vocab_size, min_freq=cfg.min_freq), cfg.lowercase)
        for c in counters
    )


def _id_dtype(size: int) -> str:
    return "uint16" if size <= 1 << 16 else "int32"


def prepare(cfg: DataConfig, out: str | Path, *, seed: int = 0, workers: int | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Prepare the training corpora of ``cfg`` into the folder ``out`` (see the module
    docstring); returns the manifest. ``workers`` (default ``data.workers``, 0 = all cores)
    processes validate and encode."""
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # incomplete until the manifest is written again
    files = train_files(cfg)
    workers = workers if workers is not None else cfg.workers
    workers = workers or os.cpu_count() or 1
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
    if spm_ids:
        size = max(src.tokenizer.sp.get_piece_size(), tgt.tokenizer.sp.get_piece_size())
        dtype = _id_dtype(size + len(Vocab.SPECIALS))
    else:
        dtype = _id_dtype(max(len(src.vocab), len(tgt.vocab)))
    lens: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}
    piece_counts: dict[str, np.ndarray | None] = {"src": None, "tgt": None}
    runner = _Runner(workers, _init_encoder, (src, tgt, spm_ids))
    bar = tqdm(desc="encode", unit=" pairs", unit_scale=True, disable=not progress,
               dynamic_ncols=True)
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
        for i, task in _tasks(files, line_counts):
            file_of.append(i)
            for res in runner.submit(_encode_chunk, task, settings, dtype):
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
            raise CorpusError(
                f.src, None,
                f"no usable train pairs: all {st['skipped']} lines were skipped as bad "
                f"(data.skip_bad_lines); the first: {problems[0] if problems else '?'}",
            )
    n_pairs = sum(s["pairs"] for s in stats)
    for side in ("src", "tgt"):
        n = np.concatenate(lens[side]) if lens[side] else np.zeros(0, np.int32)
        if len(n) != n_pairs:
            raise CorpusError(files[0].src, None, "the files changed while being prepared")
        offsets = np.zeros(len(n) + 1, np.int64)
        np.cumsum(n, out=offsets[1:])
        np.save(out / f"{side}.offsets.npy", offsets)
    if spm_ids:
        src, tgt = _spm_vocabularies(cfg, src, tgt, piece_counts, out, dtype)
    save_codecs(out, src, tgt)
    t_total = time.time() - t0
    start = 0
    corpora = []
    for f, st in zip(files, stats):
        corpora.append({"entry": f.entry, "src": _stamp(f.src), "tgt": _stamp(f.tgt),
                        "start": start, **st})
        start += st["pairs"]
    manifest = {
        "format": FORMAT_VERSION,
        "settings": {k: settings[k] for k in PREP_KEYS},
        "seed": seed,
        "dtype": dtype,
        "pairs": n_pairs,
        "skipped": sum(s["skipped"] for s in stats),
        "problems": problems,
        "tokens": {side: int(np.load(out / f"{side}.offsets.npy", mmap_mode="r")[-1])
                   for side in ("src", "tgt")},
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
        vocab = vocab_of(src.tokenizer, piece_counts["src"] + piece_counts["tgt"])
        src, tgt = Codec(src.tokenizer, vocab, cfg.lowercase), Codec(tgt.tokenizer, vocab,
                                                                       cfg.lowercase)
    else:
        src = Codec(src.tokenizer, vocab_of(src.tokenizer, piece_counts["src"]), cfg.lowercase)
        tgt = Codec(tgt.tokenizer, vocab_of(tgt.tokenizer, piece_counts["tgt"]), cfg.lowercase)
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


# -- reading ------------------------------------------------------------------------------


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StalePreparation(
            f"{folder}: no prepared data here ({MANIFEST} is missing: never prepared, or the "
            "preparation did not finish); run `attendo data prepare CONFIG --out "
            f"{folder}`"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise StalePreparation(f"{path}: unreadable ({e})") from None


def check_fresh(manifest: dict[str, Any], cfg: DataConfig, folder: str | Path) -> None:
    """Raise :class:`StalePreparation` naming the first difference between the prepared
    folder and the config (its settings, its training files, their sizes and mtimes)."""
    redo = f"; prepare it again: attendo data prepare CONFIG --out {folder}"
    if manifest.get("format") != FORMAT_VERSION:
        raise StalePreparation(f"{folder}: prepared by another attendo version{redo}")
    for key in PREP_KEYS:
        was = manifest["settings"].get(key)
        if was != getattr(cfg, key):
            raise StalePreparation(
                f"{folder}: stale: prepared with data.{key}={was!r}, the config has "
                f"{getattr(cfg, key)!r}{redo}")
    files = train_files(cfg)
    corpora = manifest["corpora"]
    if [(f.src, f.tgt) for f in files] != [(c["src"]["path"], (c["tgt"] or {}).get("path"))
                                           for c in corpora]:
        raise StalePreparation(
            f"{folder}: stale: prepared from {[c['src']['path'] for c in corpora]}, the config "
            f"names {[f.src for f in files]}{redo}")
    for c in corpora:
        for stamp in (c["src"], c["tgt"]):
            if stamp is not None and _stamp(stamp["path"]) != stamp:
                raise StalePreparation(
                    f"{folder}: stale: {stamp['path']} changed since it was prepared (size or "
                    f"modification time){redo}")


class TokenView:
    """A read-only sequence of token-id lists over one side of a prepared folder: item i is
    pair ``index[i]`` as a list of ints. ``lengths`` holds every item's length (numpy).

    Pickles as its folder name and index, so DataLoader workers map the files themselves."""

    def __init__(self, folder: str | Path, side: str, dtype: str, index: np.ndarray):
        self.folder, self.side, self.dtype = str(folder), side, dtype
        self.index = index
        self._open()

    def _open(self) -> None:
        folder = Path(self.folder)
        self.offsets = np.load(folder / f"{self.side}.offsets.npy", mmap_mode="r")
        path = folder / f"{self.side}.tokens.bin"
        self.tokens = (np.memmap(path, dtype=self.dtype, mode="r") if path.stat().st_size
                       else np.zeros(0, self.dtype))
        self.lengths = np.diff(self.offsets)[self.index].astype(np.int32)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> list[int]:
        j = self.index[i]
        return self.tokens[self.offsets[j] : self.offsets[j + 1]].tolist()

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "side": self.side, "dtype": self.dtype, "index": self.index}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()


class PreparedCorpus:
    """A prepared folder opened for training (memory-mapped; nothing is read up front but the
    offsets and the manifest)."""

    def __init__(self, folder: str | Path, cfg: DataConfig | None = None):
        self.folder = Path(folder)
        self.manifest = read_manifest(folder)
        if cfg is not None:
            check_fresh(self.manifest, cfg, folder)
        self.dtype = self.manifest["dtype"]

    @property
    def n_pairs(self) -> int:
        return int(self.manifest["pairs"])

    def codecs(self, lowercase: bool = False) -> tuple[Codec, Codec]:
        return load_codecs(self.folder, lowercase)

    def fingerprint(self) -> list:
        """What ranks compare to be sure they train on the same data."""
        m = self.manifest
        return [m["pairs"], m["tokens"], m["vocab"], [c["src"] for c in m["corpora"]]]

    def training_views(self, max_len: int = 0, max_ratio: float = 0.0,
                       weights: list[int] | None = None) -> tuple[TokenView, TokenView, int]:
        """Source and target views of the pairs that pass the length filters (see
        :func:`~attendo.data.corpus.length_filter`), each corpus repeated its weight times
        (by ``data.train_weights`` entry); also returns how many pairs the filters dropped."""
        off = {s: np.load(self.folder / f"{s}.offsets.npy", mmap_mode="r") for s in ("src", "tgt")}
        a = np.diff(off["src"]).astype(np.int64)
        b = np.diff(off["tgt"]).astype(np.int64)
        if max_len <= 0:
            keep = (a > 0) & (b > 0)
        else:
            keep = (a >= 1) & (a <= max_len) & (b >= 1) & (b <= max_len)
            if max_ratio:
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.maximum(a, b) / np.minimum(a, b)
                keep &= ~(ratio > max_ratio)
        parts = []
        for c in self.manifest["corpora"]:
            idx = np.flatnonzero(keep[c["start"] : c["start"] + c["pairs"]]) + c["start"]
            w = weights[c["entry"]] if weights else 1
            parts.extend([idx] * w)
        index = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        dropped = int(len(keep) - keep.sum())
        return (TokenView(self.folder, "src", self.dtype, index),
                TokenView(self.folder, "tgt", self.dtype, index), dropped)


def ensure_prepared(cfg, folder: Path, *, seed: int, resume: bool) -> None:
    """Prepare ``folder`` when it is missing (or, for a run's own ``out_dir/prepared``, stale
    and the run is new); a stale folder the user prepared is an error, never overwritten."""
    own = not cfg.data.prepared
    try:
        check_fresh(read_manifest(folder), cfg.data, folder)
        return
    except StalePreparation:
        missing = not (folder / MANIFEST).exists()
        if not missing and (resume or not own):
            raise
    log.info("preparing the training data into %s (prepare it once for many runs with "
             "`attendo data prepare`)", folder)
    prepare(cfg.data, folder, seed=seed, progress=cfg.train.progress)
