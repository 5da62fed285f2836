"""From a DataConfig to id sequences: read (or generate), tokenize, build vocabularies, filter.

The tokenizers and vocabularies are trained on the training side only and stored in the
model directory, so translation later applies exactly the same preprocessing.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..errors import UsageError
from .batch import CopyIds, Image
from .corpus import CorpusError, length_filter, read_parallel
from .tokenizers import (
    SentencePieceTokenizer,
    Tokenizer,
    build_vocab,
    load_tokenizer,
    read_tokenizer_file,
    save_tokenizer,
    train_tokenizer,
)
from .toy import split_toy, toy_task
from .vocab import Vocab

log = logging.getLogger("attendo")


@dataclass
class Corpus:
    src: list[str]
    tgt: list[str]

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class Codec:
    """Text <-> ids for one side: normalisation, tokenizer and vocabulary."""

    tokenizer: Tokenizer
    vocab: Vocab
    lowercase: bool = False

    def pieces(self, text: str) -> list[str]:
        return self.tokenizer.encode(text.lower() if self.lowercase else text)

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(self.pieces(text))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(self.vocab.decode(ids))

    @property
    def size(self) -> int:
        """The source size an encoder is built for: the vocabulary's."""
        return len(self.vocab)


@dataclass
class ImageCodec:
    """The source side of an image model (``data.src_type: image``): an image file's path ->
    :class:`~attendo.data.batch.Image`, scaled to ``height`` (see
    :func:`attendo.data.images.load_image`). Nothing is trained or stored for it: the model
    directory's config.yaml says all of it."""

    height: int
    channels: int
    max_width: int = 2048

    @classmethod
    def of(cls, cfg: DataConfig) -> ImageCodec:
        return cls(cfg.image_height, cfg.image_channels, cfg.image_max_width)

    @property
    def size(self) -> int:
        """The source size an encoder is built for: the number of channels."""
        return self.channels

    def encode(self, image, what: str = "image") -> Image:
        """An image file's path, a PIL image, or a uint8 array (H, W) gray, (H, W, 3) RGB or
        (H, W, 4) RGBA -> Image; anything else is a UsageError naming ``what``."""
        import numpy as np
        from PIL import Image as PILImage

        from .images import load_image, to_pixels

        if isinstance(image, str | Path):
            return Image(load_image(image, self.height, self.channels, self.max_width))
        if isinstance(image, np.ndarray):
            if not (image.dtype == np.uint8 and image.size and (
                    image.ndim == 2 or image.ndim == 3 and image.shape[2] in (3, 4))):
                raise UsageError(f"{what}: expected a uint8 array (H, W), (H, W, 3) or "
                                 f"(H, W, 4), got {image.dtype} {image.shape}")
            image = PILImage.fromarray(image)
        if not isinstance(image, PILImage.Image) or 0 in image.size:
            raise UsageError(f"{what}: expected an image file's path, a PIL image or a uint8 "
                             f"array, got {type(image).__name__} {getattr(image, 'size', '')}")
        return Image(to_pixels(image, self.height, self.channels, self.max_width))


def copy_ids(src_pieces: list[str], tgt_pieces: list[str] | None, tgt_vocab: Vocab) -> CopyIds:
    """Source (and target) pieces in ``tgt_vocab`` extended with the source's own unknown
    pieces, for copy models (See et al. 2017, sec. 2.2): the k-th distinct source piece that
    the target vocabulary lacks gets id len(tgt_vocab) + k; a target piece the vocabulary lacks
    gets that id when it occurs in the source, else <unk>."""
    V = len(tgt_vocab)
    index: dict[str, int] = {}  # source-only piece -> extended id
    src_ext = tgt_vocab.encode(src_pieces)
    for j, (piece, i) in enumerate(zip(src_pieces, src_ext)):
        if i == Vocab.UNK and piece != Vocab.SPECIALS[Vocab.UNK]:
            src_ext[j] = index.setdefault(piece, V + len(index))
    tgt_ext = None
    if tgt_pieces is not None:
        tgt_ext = tgt_vocab.encode(tgt_pieces)
        for j, (piece, i) in enumerate(zip(tgt_pieces, tgt_ext)):
            if i == Vocab.UNK:
                tgt_ext[j] = index.get(piece, Vocab.UNK)
    return CopyIds(src_ext, tgt_ext, list(index))


def encode_copy(
    corpus: Corpus, src: Codec, tgt: Codec, keep: list[int] | None = None
) -> list[CopyIds]:
    """:func:`copy_ids` of the pairs of ``corpus`` (only those at ``keep``, e.g. the indices
    :func:`encode_pairs` kept), aligned with what :func:`encode_pairs` returns for them."""
    rows = range(len(corpus)) if keep is None else keep
    return [copy_ids(src.pieces(corpus.src[i]), tgt.pieces(corpus.tgt[i]), tgt.vocab) for i in rows]


@dataclass(frozen=True)
class CorpusFiles:
    """One training corpus: a source file and its line-aligned target (None: a TSV file).
    ``entry`` is the position in ``data.train_src`` it came from (its weight's index)."""

    entry: int
    src: str
    tgt: str | None


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _expand(pattern: str, key: str) -> list[str]:
    if not _is_glob(pattern):
        return [pattern]
    found = sorted(glob.glob(pattern))
    if not found:
        raise CorpusError(pattern, None, f"{key}: no file matches this pattern")
    return found


def train_files(cfg: DataConfig) -> list[CorpusFiles]:
    """The training corpora of ``cfg``: each entry of ``data.train_src`` (a path or a shell
    glob, expanded in sorted order) paired with the same entry of ``data.train_tgt``."""
    srcs = cfg.train_src if isinstance(cfg.train_src, list) else [cfg.train_src]
    tgts = cfg.train_tgt if isinstance(cfg.train_tgt, list) else [cfg.train_tgt] * len(srcs)
    out: list[CorpusFiles] = []
    for entry, (s, t) in enumerate(zip(srcs, tgts)):
        ss = _expand(s, "data.train_src")
        ts = _expand(t, "data.train_tgt") if t else [None] * len(ss)
        if len(ss) != len(ts):
            raise CorpusError(
                s, None, f"data.train_src matches {len(ss)} files but data.train_tgt {t!r} "
                f"matches {len(ts)}; expected one target file per source file",
            )
        out.extend(CorpusFiles(entry, a, b) for a, b in zip(ss, ts))
    return out


def multi_corpus(cfg: DataConfig) -> bool:
    """Whether the training data is several files, a glob, or weighted."""
    return bool(
        isinstance(cfg.train_src, list) or _is_glob(cfg.train_src) or cfg.train_weights
    )


def _read(cfg: DataConfig, src: str, tgt: str | None, name: str) -> Corpus | None:
    if not src:
        return None
    s, t, report = read_parallel(
        src, tgt or None, skip_bad=cfg.skip_bad_lines, max_chars=cfg.max_chars
    )
    if not s:  # every line was skipped (an empty file is already a CorpusError)
        raise CorpusError(
            src, None,
            f"no usable {name} pairs: all {report.n_skipped} lines were skipped as bad "
            f"(data.skip_bad_lines); the first: {report.problems[0]}",
        )
    if report.n_skipped:
        log.warning("%s: skipped %d bad pairs: %s", name, report.n_skipped, report.summary())
    return Corpus(s, t)


def _read_images(cfg: DataConfig, path: str, name: str) -> Corpus | None:
    if not path:
        return None
    from .images import read_image_tsv

    images, texts, report = read_image_tsv(path, skip_bad=cfg.skip_bad_lines)
    if report.n_skipped:
        log.warning("%s: skipped %d bad lines: %s", name, report.n_skipped, report.summary())
    return Corpus(images, texts)


def load_eval_corpora(cfg: DataConfig) -> tuple[Corpus | None, Corpus | None]:
    """Read the valid and test pairs (files only, not the toy task) as raw text (image
    paths as sources, for ``data.src_type: image``)."""
    if cfg.src_type == "image":
        return _read_images(cfg, cfg.valid_src, "valid"), _read_images(cfg, cfg.test_src, "test")
    return _read(cfg, cfg.valid_src, cfg.valid_tgt, "valid"), _read(
        cfg, cfg.test_src, cfg.test_tgt, "test"
    )


def load_corpora(cfg: DataConfig, seed: int = 0) -> tuple[Corpus, Corpus | None, Corpus | None]:
    """Read (or generate) train, valid and test pairs as raw text.

    Several training corpora are concatenated once each (``data.train_weights`` apply to the
    batches of the prepared path, see :mod:`attendo.data.binarized`)."""
    if cfg.toy:
        n = cfg.toy_train_size + cfg.toy_valid_size + cfg.toy_test_size
        src, tgt = toy_task(cfg.toy, n, seed, max_len=cfg.toy_max_len)
        tr, va, te = split_toy(src, tgt, cfg.toy_valid_size, cfg.toy_test_size)
        return Corpus(*tr), Corpus(*va), (Corpus(*te) if te[0] else None)
    if cfg.src_type == "image":
        return _read_images(cfg, cfg.train_src, "train"), *load_eval_corpora(cfg)
    train = Corpus([], [])
    for files in train_files(cfg):
        part = _read(cfg, files.src, files.tgt, "train")
        assert part is not None
        train.src.extend(part.src)
        train.tgt.extend(part.tgt)
    return train, *load_eval_corpora(cfg)


def make_tokenizer(cfg: DataConfig, texts: list[str], seed: int = 0,
                   side: str = "src") -> Tokenizer:
    """The tokenizer of ``side`` ("src", "tgt"): the user's own (``data.tokenizer_model``,
    ``data.tgt_tokenizer_model``), else one of ``cfg.tokenizer``; sentencepiece kinds train on
    at most ``cfg.spm_sample`` of ``texts`` (drawn with ``random.Random(seed)``)."""
    own = (cfg.tgt_tokenizer_model or cfg.tokenizer_model) if side == "tgt" else \
        cfg.tokenizer_model
    if own:
        return read_tokenizer_file(own)
    if cfg.tokenizer in ("bpe", "unigram"):
        return SentencePieceTokenizer.train(
            texts, cfg.tokenizer, cfg.vocab_size, seed=seed, max_sentences=cfg.spm_sample
        )
    return train_tokenizer(cfg.tokenizer, texts, cfg.vocab_size, seed=seed)


def build_codecs(cfg: DataConfig, train: Corpus, seed: int = 0) -> tuple[Codec, Codec]:
    """Train tokenizers (joint or separate) and vocabularies on the training corpus."""

    def norm(texts: list[str]) -> list[str]:
        return [t.lower() for t in texts] if cfg.lowercase else texts

    src_texts, tgt_texts = norm(train.src), norm(train.tgt)
    if cfg.src_type == "image":
        tok = make_tokenizer(cfg, tgt_texts, seed, "tgt")
        vocab = build_vocab(tok, tgt_texts, cfg.vocab_size, cfg.min_freq)
        return ImageCodec.of(cfg), Codec(tok, vocab, cfg.lowercase)
    if cfg.joint_vocab:
        tok = make_tokenizer(cfg, src_texts + tgt_texts, seed)
        vocab = build_vocab(tok, src_texts + tgt_texts, cfg.vocab_size, cfg.min_freq)
        return Codec(tok, vocab, cfg.lowercase), Codec(tok, vocab, cfg.lowercase)
    codecs = []
    for side, texts in (("src", src_texts), ("tgt", tgt_texts)):
        tok = make_tokenizer(cfg, texts, seed, side)
        codecs.append(Codec(tok, build_vocab(tok, texts, cfg.vocab_size, cfg.min_freq), cfg.lowercase))
    return codecs[0], codecs[1]


def save_codecs(model_dir: str | Path, src: Codec, tgt: Codec) -> None:
    model_dir = Path(model_dir)
    for prefix, codec in (("src", src), ("tgt", tgt)):
        if isinstance(codec, ImageCodec):
            continue
        save_tokenizer(codec.tokenizer, model_dir, prefix)
        codec.vocab.save(model_dir / f"{prefix}.vocab.json")


def load_codecs(model_dir: str | Path, lowercase: bool = False) -> tuple[Codec, Codec]:
    model_dir = Path(model_dir)
    return tuple(  # type: ignore[return-value]
        Codec(
            load_tokenizer(model_dir, prefix),
            Vocab.load(model_dir / f"{prefix}.vocab.json", model_dir),
            lowercase,
        )
        for prefix in ("src", "tgt")
    )


def load_sources(model_dir: str | Path, cfg: DataConfig) -> tuple[Codec | ImageCodec, Codec]:
    """The source and target sides of a model directory: :func:`load_codecs`, or for an image
    model its :class:`ImageCodec` and the target's codec."""
    if cfg.src_type != "image":
        return load_codecs(model_dir, cfg.lowercase)
    model_dir = Path(model_dir)
    tgt = Codec(load_tokenizer(model_dir, "tgt"),
                Vocab.load(model_dir / "tgt.vocab.json", model_dir), cfg.lowercase)
    return ImageCodec.of(cfg), tgt


def encode_pairs(
    corpus: Corpus, src: Codec, tgt: Codec, max_len: int = 0, max_ratio: float = 0.0
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Encode pairs; with max_len > 0, drop pairs outside the length/ratio filters.

    Returns source ids (images, for an :class:`ImageCodec`), target ids and the corpus index
    of each kept pair. An image's length is its width in pixels, so for images only the
    target's length is filtered.
    """
    src_ids = [src.encode(s) for s in corpus.src]
    tgt_ids = [tgt.encode(t) for t in corpus.tgt]
    if isinstance(src, ImageCodec) and max_len > 0:
        keep = [i for i, t in enumerate(tgt_ids) if 0 < len(t) <= max_len]
    elif max_len <= 0:
        keep = [i for i in range(len(src_ids)) if src_ids[i] and tgt_ids[i]]
    else:
        keep = length_filter([len(s) for s in src_ids], [len(t) for t in tgt_ids], max_len, max_ratio)
    return [src_ids[i] for i in keep], [tgt_ids[i] for i in keep], keep
