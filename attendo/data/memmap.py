"""Prepared folders (:mod:`attendo.data.binarized`) read back: the manifest, whether it still
fits the config and its files, memory-mapped views of the token arrays; and whether training
reads prepared data at all (:func:`prepared_dir`)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, DataConfig
from ..errors import AttendoError
from .prepare import Codec, CorpusFiles, load_codecs, multi_corpus, train_files

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# a single training file larger than this is prepared (into train.out_dir/prepared) rather
# than read into Python lists, when data.prepared is not set
AUTO_PREPARE_BYTES = 64 << 20
# the data settings a preparation depends on (the others apply at training time)
PREP_KEYS = ("tokenizer", "joint_vocab", "vocab_size", "min_freq", "lowercase",
             "skip_bad_lines", "max_chars", "spm_sample")


class StalePreparation(ValueError, AttendoError):
    """A prepared folder that does not match the config (or the files) it is used with."""


def prepared_dir(cfg) -> Path | None:
    """Where training reads prepared data from: ``data.prepared`` when set; else
    ``train.out_dir/prepared`` for several, globbed, weighted or large (>
    :data:`AUTO_PREPARE_BYTES`) training files; else None (the in-memory path)."""
    data: DataConfig = cfg.data
    if data.toy:
        return None
    guided = bool(cfg.train.guided_alignment.file)
    if data.prepared or multi_corpus(data):
        for on, who in ((cfg.model.copy, "model.copy: copy models read their"),
                        (guided, "train.guided_alignment.file: guided alignment reads its")):
            if on:
                raise ConfigError(f"{who} training data into memory; give one training file "
                                  "(no list, glob or weights) and leave data.prepared unset")
        return Path(data.prepared or Path(cfg.train.out_dir) / "prepared")
    if not (cfg.model.copy or guided) and _total_bytes(train_files(data)) > AUTO_PREPARE_BYTES:
        return Path(cfg.train.out_dir) / "prepared"
    return None


def _total_bytes(files: list[CorpusFiles]) -> int:
    total = 0
    for path in (p for f in files for p in (f.src, f.tgt) if p):
        with contextlib.suppress(OSError):  # reported with file and line by the reader
            total += os.path.getsize(path)
    return total


def file_stamp(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path}
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StalePreparation(
            f"{folder}: no prepared data here ({MANIFEST} is missing: never prepared, or the "
            f"preparation did not finish); run `attendo data prepare CONFIG --out {folder}`"
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
            if stamp is not None and file_stamp(stamp["path"]) != stamp:
                raise StalePreparation(
                    f"{folder}: stale: {stamp['path']} changed since it was prepared (size or "
                    f"modification time){redo}")


class TokenView:
    """A read-only sequence of token-id lists over one side of a prepared folder: item i is
    pair ``index[i]`` as a list of ints. ``lengths`` holds every item's length (numpy).

    Pickles as its folder name and index, so DataLoader workers map the files themselves."""

    def __init__(self, folder: str | Path, side: str, dtype: str, index: np.ndarray):
        self.folder, self.side, self.dtype, self.index = str(folder), side, dtype, index
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
        a, b = (np.diff(np.load(self.folder / f"{s}.offsets.npy", mmap_mode="r")).astype(np.int64)
                for s in ("src", "tgt"))
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
            parts.extend([idx] * (weights[c["entry"]] if weights else 1))
        index = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return (TokenView(self.folder, "src", self.dtype, index),
                TokenView(self.folder, "tgt", self.dtype, index), int(len(keep) - keep.sum()))
