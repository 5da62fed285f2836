"""The data a run trains on: tokenizers and vocabularies (trained, reused from
train.init_from, or read back on resume), training and validation ids, copy-model ids and
guided-alignment links; in memory or from a prepared (memory-mapped) folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import distributed
from ..checkpoint import DECODING_FILES, MODEL_FILE, ModelFileError, check_model_dir
from ..config import Config, ConfigError
from ..data.binarized import ensure_prepared
from ..data.memmap import PreparedCorpus, StalePreparation
from ..data.prepare import (
    Codec,
    Corpus,
    build_codecs,
    encode_copy,
    encode_pairs,
    load_codecs,
    load_sources,
    save_codecs,
)
from ..utils import atomic_write_text

log = logging.getLogger("attendo")

INIT_DATA_KEYS = ("src_type", "tokenizer", "joint_vocab", "lowercase")


def init_source(cfg: Config) -> Path:
    """train.init_from as a checked model directory: it has weights and vocabularies, and was
    trained with the same tokenizer kind, joint vocabulary and lowercasing as ``cfg``."""
    start = Path(cfg.train.init_from)
    try:  # what fine-tuning reads of it: its config, tokenizers, vocabularies and weights
        check_model_dir(start, DECODING_FILES + (MODEL_FILE,))
    except ModelFileError as e:
        raise ConfigError(f"train.init_from: {e}") from None
    for name in (MODEL_FILE, "config.yaml", "src.vocab.json", "tgt.vocab.json"):
        if not (start / name).is_file():
            raise ConfigError(f"train.init_from: {start}: no {name} there (expected a trained "
                              "model directory)")
    try:
        data = (yaml.safe_load((start / "config.yaml").read_text(encoding="utf-8")) or {}).get(
            "data") or {}
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise ConfigError(f"train.init_from: {start / 'config.yaml'}: unreadable ({e})") from None
    for key in INIT_DATA_KEYS:
        theirs, ours = data.get(key), getattr(cfg.data, key)
        if theirs is not None and theirs != ours:
            raise ConfigError(
                f"train.init_from: {start} was trained with data.{key}: {theirs}, this config "
                f"has {ours}; its tokenizers are reused, so set data.{key}: {theirs}")
    return start


def codecs_of(model_dir: Path, cfg: Config) -> tuple[Codec, Codec]:
    """The tokenizers and vocabularies of the model that train.init_from names."""
    try:
        return load_sources(model_dir, cfg.data)
    except (OSError, ValueError) as e:
        raise ConfigError(f"train.init_from: {model_dir}: cannot read its tokenizers and "
                          f"vocabularies ({e})") from None


@dataclass
class TrainingData:
    """Everything :class:`~attendo.train.Trainer` reads of the data."""

    src: Codec
    tgt: Codec
    src_ids: Any  # per training pair, source ids (lists, or views of a prepared folder)
    tgt_ids: Any
    copy: list | None  # copy models: per pair, ids in the extended vocabulary
    align: list | None  # guided alignment: per pair, (target piece, source piece) links
    valid_ids: tuple[list, list] | None
    valid_copy: list | None  # copy models: the validation pairs in the extended vocabulary


def load_training_data(cfg: Config, dist, out: Path, train: Corpus | None,
                       valid: Corpus | None, prepared: Path | None, resume: bool,
                       start: Path | None) -> TrainingData:
    """Codecs and ids of the training and validation pairs; rank 0 writes the codecs and
    config.yaml of a new run (``start``: the train.init_from directory, or None)."""
    kept = None
    if train is None:
        src, tgt, src_ids, tgt_ids, dropped = _prepared_data(cfg, dist, out, prepared, resume,
                                                             start)
    else:
        distributed.check_agreement(
            dist, "training data", [len(train), train.src[:50], train.tgt[-50:]]
        )
        if resume:
            src, tgt = load_sources(out, cfg.data)
        else:
            if dist.is_main:  # one rank trains the tokenizers, the others read them
                src, tgt = (codecs_of(start, cfg) if start is not None
                            else build_codecs(cfg.data, train, seed=cfg.train.seed))
                save_codecs(out, src, tgt)
                atomic_write_text(out / "config.yaml", cfg.to_yaml())
            distributed.barrier(dist)
            if not dist.is_main:
                src, tgt = load_sources(out, cfg.data)
        src_ids, tgt_ids, kept = encode_pairs(train, src, tgt, cfg.data.max_len,
                                              cfg.data.max_ratio)
        dropped = len(train) - len(kept)
    if not len(src_ids):
        raise ConfigError("no training pairs left after the length filters (data.max_len)")
    log.info(
        "train: %d pairs (%d dropped by length filters); vocab src %d, tgt %d",
        len(src_ids), dropped, src.size, len(tgt.vocab),
    )
    valid_ids = valid_copy = None
    if valid is not None:
        valid_src, valid_tgt, valid_kept = encode_pairs(valid, src, tgt)
        valid_ids = (valid_src, valid_tgt)
        if cfg.model.copy:
            valid_copy = encode_copy(valid, src, tgt, valid_kept)
    copy = encode_copy(train, src, tgt, kept) if cfg.model.copy else None
    align = guided_targets(cfg, train, kept, src, tgt)
    return TrainingData(src, tgt, src_ids, tgt_ids, copy, align, valid_ids, valid_copy)


def _prepared_data(cfg: Config, dist, out: Path, prepared: Path, resume: bool,
                   start: Path | None):
    """Training data from a prepared folder (:mod:`attendo.data.binarized`): rank 0
    prepares it when needed, every rank memory-maps it; returns the codecs and id views."""
    if dist.is_main:
        ensure_prepared(cfg, prepared, seed=cfg.train.seed, resume=resume)
    distributed.barrier(dist)
    data = PreparedCorpus(prepared, cfg.data)
    distributed.check_agreement(dist, "training data", data.fingerprint())
    prepared_codecs = data.codecs(cfg.data.lowercase)
    if resume:
        src, tgt = load_codecs(out, cfg.data.lowercase)
        if (src.vocab, tgt.vocab) != (prepared_codecs[0].vocab, prepared_codecs[1].vocab):
            raise StalePreparation(
                f"{prepared}: its vocabularies differ from those of the run in "
                f"{out}; resume with the preparation the run started with")
    else:
        src, tgt = prepared_codecs
        if start is not None:
            theirs = codecs_of(start, cfg)
            if (theirs[0].vocab, theirs[1].vocab) != (prepared_codecs[0].vocab,
                                                      prepared_codecs[1].vocab):
                raise ConfigError(
                    f"train.init_from: {start}: its vocabularies differ from those of the "
                    f"prepared data in {prepared}; prepare the data with the "
                    "model's tokenizers, or train from scratch")
        if dist.is_main:
            save_codecs(out, src, tgt)
            atomic_write_text(out / "config.yaml", cfg.to_yaml())
        distributed.barrier(dist)
    src_ids, tgt_ids, dropped = data.training_views(
        cfg.data.max_len, cfg.data.max_ratio, cfg.data.train_weights or None
    )
    if data.manifest["skipped"]:
        log.warning("train: %d bad pairs were skipped when %s was prepared; the first: %s",
                    data.manifest["skipped"], prepared, data.manifest["problems"][0])
    return src, tgt, src_ids, tgt_ids, dropped


def guided_targets(cfg: Config, train: Corpus | None, kept: list[int] | None, src: Codec,
                   tgt: Codec) -> list | None:
    """Per kept training pair, its (target piece, source piece) links from
    train.guided_alignment.file (see :func:`attendo.align.guided_targets`), or None."""
    ga = cfg.train.guided_alignment
    if not ga.file:
        return None
    if train is None or kept is None:  # prepared_dir() already refuses this
        raise ConfigError("train.guided_alignment.file: needs the in-memory training path "
                          "(one training file, data.prepared unset)")
    if not Path(ga.file).is_file():
        raise ConfigError(f"train.guided_alignment.file: {ga.file}: no such file")
    from ..align import guided_targets as links_of

    align, unmapped = links_of(ga.file, train.src, train.tgt, kept, src, tgt, shift=ga.shift)
    n_links = sum(len(a) for a in align)
    log.info("guided alignment: %d piece links from %s (weight %g%s)", n_links, ga.file,
             ga.weight, ", shifted rows" if ga.shift else "")
    if unmapped:
        log.warning("guided alignment: %d of %d training pairs have no links: their pieces "
                    "do not group into their whitespace words", unmapped, len(align))
    return align
